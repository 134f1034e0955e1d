"""A training run's resumable state on disk: weights, optimizer, schedule, loop position and RNGs.

Why one module: fine-tuning (``model.train``) and masked-LM pre-training (``model.pretrain``) are both long CPU runs
that must survive a stopped session; restoring the RNGs too is what makes a resumed run draw exactly what the
uninterrupted one would have (their tests compare the weights).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from finsent.errors import ConfigError


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # dropout on a GPU draws from the devices' generators
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(rng: dict) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save(path: Path, model: nn.Module, optimizer, scheduler, state: Mapping[str, Any]) -> None:
    """Written whole or not at all (a temporary file, then an atomic rename)."""
    tmp = path.with_suffix(".tmp")
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": state,
        "rng": rng_state(),
    }
    torch.save(payload, tmp)
    os.replace(tmp, path)


def restore(
    path: Path, model: nn.Module, optimizer, scheduler, fingerprint: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """Load ``path`` into the model, optimizer and schedule and restore the RNGs; returns the loop state, or None
    when there is no checkpoint (a fresh run).

    ``fingerprint``: the settings the run must share with the one that wrote the checkpoint (the state's
    ``fingerprint``); another run's checkpoint is refused before anything is loaded, so a changed setting is one
    ``ConfigError``, not a run that silently keeps the old one or a shape error from the optimizer. A checkpoint
    written before fingerprints were recorded resumes as it did."""
    if not path.exists():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=False)
    recorded = saved["state"].get("fingerprint")
    if fingerprint is not None and recorded is not None and recorded != fingerprint:
        changed = sorted(k for k in set(recorded) | set(fingerprint) if recorded.get(k) != fingerprint.get(k))
        raise ConfigError(
            f"{path} was written by another run configuration (changed: {', '.join(changed)}): "
            "use another --version, or the settings it was started with"
        )
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    return saved["state"]
