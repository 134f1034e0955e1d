"""What the benchmarks record beside their figures reproduces the run: the whole command (every option, defaults
included), the commit and the CPU; and the API benchmark's rates and backend check say what was measured."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import bench_api  # noqa: E402
import benchkit  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    """The option kinds the benchmarks use (bench_stream's and bench_latency's among them)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--latency-rate", type=float, default=0.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--set", dest="extra", action="append", default=[])
    ap.add_argument("--no-aggregate", action="store_true")
    ap.add_argument("--confirm", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", type=Path, default=benchkit.ROOT / "bench" / "results" / "x.json")
    return ap


def test_the_recorded_command_names_every_option_and_replays_to_the_same_arguments():
    ap = _parser()
    argv = ["--latency-rate", "120", "--workers", "2", "--set", "stream.a=1", "--set", "b.c=2", "--no-confirm"]
    args = ap.parse_args(argv)
    command = benchkit.command_of("bench/bench_stream.py", ap, args)
    words = shlex.split(command)
    assert words[:2] == ["python", "bench/bench_stream.py"]
    assert "--latency-rate=120.0" in words and "--workers=2" in words and "--items=3000" in words  # defaults too
    assert "--out=bench/results/x.json" in words and "--no-confirm" in words and "--no-aggregate" not in words
    replayed = vars(ap.parse_args(words[2:]))  # the command re-runs exactly this run, from the repository's root
    assert replayed == {**vars(args), "out": Path("bench/results/x.json")}
    flagged = ap.parse_args(["--no-aggregate"])
    assert "--no-aggregate" in shlex.split(benchkit.command_of("b.py", ap, flagged))


def test_results_carry_the_commit_and_the_cpu_model(tmp_path, monkeypatch):
    monkeypatch.setattr(benchkit, "git_commit", lambda: ("a" * 40, False))
    monkeypatch.setattr(benchkit, "cpu_model", lambda: "Some CPU @ 2.0GHz")
    out = tmp_path / "r.json"
    benchkit.write_results({"figure": 1}, "python bench/x.py", out)
    written = json.loads(out.read_text())
    assert written["git_commit"] == "a" * 40 and written["git_dirty"] is False
    assert written["machine"]["cpu_model"] == "Some CPU @ 2.0GHz" and written["command"] == "python bench/x.py"


def test_the_commit_and_cpu_are_read_and_their_absence_tolerated(monkeypatch):
    commit, _ = benchkit.git_commit()  # this checkout
    assert commit is None or len(commit) == 40
    assert benchkit.cpu_model() is None or benchkit.cpu_model()
    monkeypatch.setattr(benchkit.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError("git")))
    assert benchkit.git_commit() == (None, None)  # no git here: the figures are still written


class _Counting:
    def __init__(self):
        self.texts = 0

    def predict(self, texts):
        self.texts += len(texts)
        return texts


def test_the_batch1_rate_times_as_many_texts_as_it_divides_by():
    clf = _Counting()
    singles = bench_api.texts(700)  # more than the 640 chunked texts
    chunks = [["x"] * 32 for _ in range(20)]
    one, batch = bench_api.bare_rates(clf, singles, chunks)
    assert clf.texts == 32 + 700 + 640  # warm-up, every single text, every chunk
    assert one > 0 and batch > 0


def test_the_api_benchmark_stops_when_the_server_serves_another_backend():
    page = (
        "# HELP finsent_api_model_info ...\n"
        'finsent_api_model_info{accepted="true",backend="onnx-int8",model="m@1",recipe="int8-static"} 1.0\n'
    )
    served = bench_api.model_info(page)
    assert served == {"accepted": "true", "backend": "onnx-int8", "model": "m@1", "recipe": "int8-static"}
    bench_api.check_same_model({"model": "m@1", "backend": "onnx-int8", "recipe": "int8-static"}, served)
    with pytest.raises(SystemExit, match="the server serves"):
        bench_api.check_same_model({"model": "m@1", "backend": "onnx", "recipe": "fp32"}, served)
    with pytest.raises(SystemExit):
        bench_api.check_same_model({"model": "m@1", "backend": "onnx-int8", "recipe": "int8-static"}, {})


def test_the_benchmarks_read_what_a_service_serves_from_its_info_gauge():
    page = (
        "# HELP finsent_worker_model_info ...\n"
        'finsent_worker_items_scored_total{backend="not-this"} 3.0\n'
        'finsent_worker_model_info{accepted="false",backend="onnx-int8",model="m@1",recipe="int8-dynamic-pc"} 1.0\n'
    )
    labels = benchkit.info_labels(page, "finsent_worker_model_info")
    assert labels == {"accepted": "false", "backend": "onnx-int8", "model": "m@1", "recipe": "int8-dynamic-pc"}
    assert benchkit.info_labels(page, "finsent_api_model_info") == {}
