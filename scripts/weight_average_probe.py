"""Does averaging the weights of several runs of one recipe (a "model soup") make a better single model?

Why: #15 lists "an ensemble of several seeds distilled into one student"; a uniform average of fine-tuned weights
that share their pre-trained start is the zero-cost version of that (one model, no distillation run, no extra
inference). This writes the averaged model as a model directory (temperatures refitted on the Twitter dev slice,
as training does), prints its dev figures beside the members', and leaves the held-out figures to
``finsent eval --model OUT``.

    .venv/bin/python scripts/weight_average_probe.py OUT MODEL_DIR MODEL_DIR [...]

Needs ``../shared/data`` (the dev slice); ~30 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("members", nargs="+", type=Path)
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    args = ap.parse_args(argv)
    if len(args.members) < 2:
        ap.error("give two or more model directories")

    import torch
    from safetensors.torch import load_file, save_file

    from finsent.errors import MissingData
    from finsent.model import artifact
    from finsent.model.data import check_data_dir, load_twitter
    from finsent.model.quality import fit_temperature
    from finsent.model.train import encode, evaluate

    try:
        check_data_dir(args.data_dir)
    except MissingData as err:
        print(f"weight_average_probe: {err}", file=sys.stderr)
        return 2
    states = [load_file(str(m / "weights.safetensors")) for m in args.members]
    if any(s.keys() != states[0].keys() for s in states):
        print("weight_average_probe: the members' weights differ in shape (not one recipe)", file=sys.stderr)
        return 2
    average = {k: (sum(s[k].float() for s in states) / len(states)).to(states[0][k].dtype) for k in states[0]}
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(args.members[0], args.out)
    save_file(average, str(args.out / "weights.safetensors"))

    cfg = json.loads((args.members[0] / "train_config.json").read_text())
    model, tokenizer, meta = artifact.load(args.out)
    dev = load_twitter(args.data_dir, cfg["dev_fraction"]).dev
    result = evaluate(
        model,
        encode(dev, tokenizer, cfg["max_length"], cfg.get("domain_prefixes")),
        tokenizer.pad_token_id or 0,
        torch.device("cpu"),
        256,
    )
    meta.temperature_topic = fit_temperature(result["_topic_logits"], result["_topic_labels"])
    meta.temperature_sentiment = fit_temperature(result["_sentiment_logits"], result["_sentiment_labels"])
    meta.version = args.out.name
    meta.metrics = {
        "dev": {k: v for k, v in result.items() if not k.startswith("_")},
        "weight_average_of": [str(m) for m in args.members],
    }
    artifact.save(args.out, model, tokenizer, meta)
    print(f"| model | dev selection |\n|---|---|\n| **average** ({args.out.name}) | {result['selection']:.4f} |")
    for m in args.members:
        print(f"| {m.name} | {json.loads((m / 'meta.json').read_text())['metrics']['dev']['selection']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
