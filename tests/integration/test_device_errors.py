"""``model.device=cuda`` on a machine without CUDA stops ``finsent serve`` and ``finsent worker`` at once with the
ConfigError's one line and exit code 2: not a multi-KB traceback out of uvicorn's lifespan, and not after the
worker waited for a broker (``kafka.connect_timeout_s``) and loaded its model."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from conftest import environ_without_finsent

from finsent.net import free_port

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: cuda is a valid device")


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_cuda_asked_for_without_cuda_is_one_line_and_exit_2_before_anything_starts(command, tmp_path):
    env = {
        **environ_without_finsent(),
        "FINSENT_MODEL__DEVICE": "cuda",
        "FINSENT_PATHS__STATE_DIR": str(tmp_path / "state"),
        "FINSENT_LOG_JSON": "1",
        # no broker there, and a long wait for one: the device must be refused before the worker waits
        "FINSENT_KAFKA__BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "FINSENT_KAFKA__CONNECT_TIMEOUT_S": "60",
    }
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "finsent.cli", command], env=env, capture_output=True, text=True, timeout=120
    )
    seconds = time.monotonic() - started
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-1000:])
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert "device 'cuda' asked for but CUDA is not available" in line and "model.device" in line
    assert seconds < 50, seconds  # not after the broker wait
