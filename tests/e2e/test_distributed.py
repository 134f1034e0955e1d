"""`finsent train` under torchrun (2 CPU processes, gloo) computes what one process computes.

Every rank builds the same global batches and takes its half; losses are normalised by the global
label counts, so the averaged DDP gradient equals the single-process gradient on the whole batch.
"""

import subprocess
import sys
from pathlib import Path

import torch

from finsent.model import artifact


def _run_config(path: Path, tiny_model_dir: Path, data_dir: Path, out: Path, batch_size: int) -> Path:
    path.write_text(
        "[train]\n"
        f'name = "tiny"\nversion = "ddp"\ninit_from = "{tiny_model_dir}"\ndata_dir = "{data_dir}"\n'
        f'out_dir = "{out / "models"}"\nrun_dir = "{out / "runs"}"\n'
        f"epochs = 2\nbatch_size = {batch_size}\nlr = 2e-3\nhead_lr = 2e-3\nmax_length = 32\n"
        "dropout = 0.0\npatience = 5\nmlflow = false\ncheckpoint_every = 0\nseed = 5\nthreads = 1\n"
    )
    return path


def test_two_process_ddp_matches_single_process(tmp_path, tiny_model_dir, tiny_data_dir):
    single_cfg = _run_config(tmp_path / "single.toml", tiny_model_dir, tiny_data_dir, tmp_path / "single", batch_size=8)
    ddp_cfg = _run_config(tmp_path / "ddp.toml", tiny_model_dir, tiny_data_dir, tmp_path / "ddp", batch_size=4)
    single = subprocess.run(
        [sys.executable, "-m", "finsent.cli", "train", "--run-config", str(single_cfg)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "finsent.cli",
            "train",
            "--run-config",
            str(ddp_cfg),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert '"world": 2' in ddp.stderr
    a, _, meta_a = artifact.load(tmp_path / "single" / "models" / "tiny" / "ddp")
    b, _, meta_b = artifact.load(tmp_path / "ddp" / "models" / "tiny" / "ddp")
    assert len(meta_a.metrics["history"]) == len(meta_b.metrics["history"]) == 2
    sa, sb = a.state_dict(), b.state_dict()
    moved = sum((sa[k] - artifact.load(tiny_model_dir)[0].state_dict()[k]).abs().sum().item() for k in sa)
    assert moved > 1.0  # training really changed the weights
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], atol=2e-3, rtol=1e-2)
    from finsent.model import Classifier

    texts = ["company 7 oil news today", "shares plunge after report 4", "shares soar after report 9"]
    for x, y in zip(
        Classifier.load(tmp_path / "single" / "models" / "tiny" / "ddp").predict(texts),
        Classifier.load(tmp_path / "ddp" / "models" / "tiny" / "ddp").predict(texts),
    ):
        assert x.topic == y.topic and x.sentiment == y.sentiment
        assert abs(x.sentiment_probs["negative"] - y.sentiment_probs["negative"]) < 1e-2
