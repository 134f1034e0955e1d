"""Training speed, full fine-tuning vs LoRA, on the real Twitter data, in one run.

    .venv/bin/python bench/bench_training.py [--steps 60]

Times ``--steps`` optimiser steps of each mode (same batches, batch 32, length-bucketed) after a few
warm-up steps and extrapolates to minutes per epoch over both Twitter training sets. Trainable
parameter counts are printed beside the times.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from finsent.model import artifact
from finsent.model.batching import bucketed_batches, pad
from finsent.model.data import IGNORE, load_twitter
from finsent.model.train import TrainConfig, _apply_lora, _param_groups, count_parameters, encode

ROOT = Path(__file__).resolve().parents[1]


def time_mode(lora: bool, data, batches, steps: int, warmup: int = 3) -> dict:
    cfg = TrainConfig(lora=lora)
    model, _tok = artifact.from_base(cfg.base, cfg.dropout)
    if lora:
        _apply_lora(model, cfg)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, cfg), eps=cfg.adam_eps)
    ce = nn.CrossEntropyLoss(ignore_index=IGNORE, reduction="sum")
    trainable, total = count_parameters(model)
    started = None
    for i, batch in enumerate(batches[: warmup + steps]):
        if i == warmup:
            started = time.perf_counter()
        ids, mask = pad([data.ids[j] for j in batch], 0)
        t, s = model(ids, mask)
        yt, ys = torch.from_numpy(data.topic[batch]), torch.from_numpy(data.sentiment[batch])
        loss = ce(t, yt) / max(int((yt != IGNORE).sum()), 1) + ce(s, ys) / max(int((ys != IGNORE).sum()), 1)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    per_step = (time.perf_counter() - started) / steps
    return {
        "mode": "lora" if lora else "full",
        "trainable_params": trainable,
        "total_params": total,
        "seconds_per_step": per_step,
        "minutes_per_epoch": per_step * len(batches) / 60,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "training-cpu.json")
    args = ap.parse_args()
    cfg = TrainConfig()
    splits = load_twitter(ROOT.parent / "shared" / "data")
    _, tok = artifact.from_base(cfg.base)
    data = encode(splits.train, tok, cfg.max_length)
    batches = bucketed_batches(data.lengths, cfg.batch_size, cfg.seed, 0)
    rows = [time_mode(False, data, batches, args.steps), time_mode(True, data, batches, args.steps)]
    for r in rows:
        print(
            f"{r['mode']:<5} trainable {r['trainable_params']:>10,} / {r['total_params']:,}  "
            f"{r['seconds_per_step']:.3f} s/step  {r['minutes_per_epoch']:.1f} min/epoch ({len(batches)} steps)"
        )
    print(f"LoRA time per epoch / full: {rows[1]['minutes_per_epoch'] / rows[0]['minutes_per_epoch']:.2f}")
    args.out.write_text(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "steps_timed": args.steps,
                "steps_per_epoch": len(batches),
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
