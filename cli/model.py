"""Commands of the model: pre-train, train, select, evaluate, export."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from finsent.cli.common import ConfigOption, ModelDirOption, app, load_settings


@app.command()
def train(
    run_config: Annotated[Path, typer.Option("--run-config", "-r", help="Training run TOML (see configs/).")] = Path(
        "configs/train-minilm.toml"
    ),
    version: Annotated[str, typer.Option(help="Model version; default: UTC timestamp.")] = "",
    epochs: Annotated[int | None, typer.Option(help="Override the run config's epochs.")] = None,
    lora: Annotated[
        bool | None, typer.Option("--lora/--full", help="LoRA adapters instead of full fine-tuning.")
    ] = None,
    limit_train: Annotated[int | None, typer.Option(help="Use only the first N training examples.")] = None,
    out_dir: Annotated[str | None, typer.Option(help="Where model versions are written.")] = None,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Skip experiment tracking.")] = False,
    feedback: Annotated[
        Path | None, typer.Option(help="Fine-tune the served model on this feedback store (JSON lines) instead.")
    ] = None,
    model: ModelDirOption = None,
    replay: Annotated[int, typer.Option(help="With --feedback: original training examples mixed in.")] = 2000,
    max_drop: Annotated[
        float, typer.Option(help="With --feedback: allowed drop of dev macro-F1 before a version is refused.")
    ] = 0.01,
    config: ConfigOption = None,
) -> None:
    """Fine-tune the topic + sentiment model (also under `torchrun --nproc_per_node N`), or continue it from feedback."""
    from finsent.model.train import TrainConfig
    from finsent.model.train import train as run_training

    cfg = TrainConfig.from_toml(
        run_config,
        version=version or None,
        epochs=epochs,
        lora=lora,
        limit_train=limit_train,
        out_dir=out_dir,
        mlflow=False if no_mlflow else None,
    )
    if feedback is None:
        out = run_training(cfg, progress=sys.stderr.isatty())
        if out is not None:
            typer.echo(str(out))
        return
    from dataclasses import replace

    from finsent.model.artifact import model_dir
    from finsent.model.feedback import fine_tune

    settings = load_settings(config)
    parent = model_dir(settings, model)
    if out_dir is None:
        cfg = replace(cfg, out_dir=str(parent.parent.parent))  # register beside the parent
    if epochs is None:
        cfg = replace(cfg, epochs=1)
    result = fine_tune(parent, feedback, cfg, replay=replay, max_drop=max_drop)
    typer.echo(result.table())
    result.check()  # a refused candidate: GateRefused, exit 3


@app.command()
def pretrain(
    run_config: Annotated[
        Path, typer.Option("--run-config", "-r", help="Pre-training run TOML (see configs/pretrain-*.toml).")
    ],
    version: Annotated[str, typer.Option(help="Encoder version; default: UTC timestamp.")] = "",
    limit: Annotated[int | None, typer.Option(help="Read only the first N texts (smoke runs).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop (checkpointed) after N steps; rerun to resume.")] = None,
    out_dir: Annotated[str | None, typer.Option(help="Where encoder versions are written.")] = None,
) -> None:
    """Continue the base encoder's masked-LM training on unlabelled headlines and tweets (research: see the config).

    Writes an encoder directory that a training run config names as its `base`."""
    from finsent.errors import ConfigError
    from finsent.model.pretrain import PretrainConfig
    from finsent.model.pretrain import pretrain as run_pretraining

    if max_steps and not version:
        raise ConfigError("--max-steps needs --version: the rerun that resumes must name the same version")

    cfg = PretrainConfig.from_toml(
        run_config, version=version or None, limit=limit, max_steps=max_steps, out_dir=out_dir
    )
    typer.echo(str(run_pretraining(cfg, progress=sys.stderr.isatty())))


@app.command()
def select(
    models: Annotated[
        list[Path],
        typer.Argument(metavar="MODEL_DIR", help="Finished runs with the same dev cuts (fractions, data directory)."),
    ],
    stored: Annotated[
        bool, typer.Option("--stored", help="Rank on the scores each run stored, without the data (no rescoring).")
    ] = False,
) -> None:
    """Choose among finished runs on their dev scores alone (never on held-out or test rows), each scored again
    now on the union of their dev slices less any row one of them, or weights they started from, read (needs the
    training data; run it from the directory they were trained in: their data paths are relative to it). The table,
    best first, also shows each run on the rows of the sets all of them trained on, and per set; the chosen directory
    is the last line."""
    from finsent.model.selection import choose, rescored_dev, stored_dev, table

    chosen, ranked = choose(models, stored_dev if stored else rescored_dev)
    typer.echo(table(ranked))
    typer.echo(str(chosen.path))


@app.command("eval")
def evaluate(
    model: ModelDirOption = None,
    out: Annotated[Path | None, typer.Option(help="Report directory; default: reports/<name>@<version>.")] = None,
    backend: Annotated[str, typer.Option(help="auto, torch, torch-int8, onnx, onnx-int8.")] = "torch",
    limit: Annotated[
        int,
        typer.Option(
            help="A quick, partial report: N evenly spread examples of each set (0 = all); not logged to MLflow."
        ),
    ] = 0,
    mlflow: Annotated[
        bool, typer.Option("--mlflow/--no-mlflow", help="Also log the report to MLflow (./mlruns.db).")
    ] = True,
    config: ConfigOption = None,
) -> None:
    """Evaluation report (Markdown + PNG): Twitter and news sets (news score), confusion, calibration, worst errors."""
    from finsent.errors import ConfigError
    from finsent.model.backends import BACKENDS
    from finsent.model.data import check_data_dir

    if backend not in ("auto", *BACKENDS):  # before the data and the model are loaded, not after
        raise ConfigError(f"--backend {backend!r}: choose from auto, {', '.join(BACKENDS)}")
    settings = load_settings(config)
    check_data_dir(settings.paths.data_dir)  # before loading anything: a clone has no ../shared/data
    from finsent.model import Classifier
    from finsent.model.artifact import model_dir
    from finsent.model.report import run, summary_lines

    clf = Classifier.load(model_dir(settings, model), backend=backend, device=settings.model.device)
    # a partial report never lands where the model's report is kept (and committed), nor in MLflow beside full ones
    out = out or (Path("runs") / "eval" / f"{clf.version}-limit{limit}" if limit else Path("reports") / clf.version)
    summary = run(clf, settings.paths.data_dir, out, limit)
    for line in summary_lines(summary):
        typer.echo(line)
    typer.echo(f"report: {out / 'report.md'}")
    if mlflow and limit:
        typer.echo(f"not logged to MLflow: a --limit {limit} report is partial")
    elif mlflow:
        from finsent.model.report import log_to_mlflow

        typer.echo(f"mlflow run: {log_to_mlflow(clf, out, summary)}")


@app.command()
def export(
    model: ModelDirOption = None,
    limit: Annotated[int, typer.Option(help="Parity-check on the first N texts of each validation set (0 = all).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Batch size for the speed measurement.")] = 32,
    plan_static: Annotated[
        bool,
        typer.Option(
            "--plan-static",
            help="First measure the static int8 plan (calibration + which MatMuls stay fp32, on training text; ~15 min).",
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Measure every CPU backend and int8 recipe against fp32 under the gate, and record the one that wins."""
    from finsent.model.artifact import model_dir
    from finsent.model.export import run

    settings = load_settings(config)
    report = run(model_dir(settings, model), settings.paths.data_dir, limit, batch_size, plan_static)
    for line in export_table(report):
        typer.echo(line)


def export_table(report: dict) -> list[str]:
    """``finsent export``'s table: every candidate with each figure the gate judges, the gate's criteria, and per
    refused row the criteria it failed. Agreement and invariance to 4 decimals: at 3, an agreement of 0.9795 (refused
    at 0.98) printed as 0.980, and batch invariance, the criterion that refuses dynamic int8, was not shown at all."""
    from finsent.model.export import MIN_BATCH_INVARIANCE, refusals

    base = report["backends"]["torch"]
    lines = [
        f"{'backend':<24} {'topic acc':>9} {'sent acc':>9} {'agree':>7} {'invariant':>9} {'texts/s':>8} "
        f"{'speed-up':>8}  accepted"
    ]
    for name, r in report["backends"].items():
        lines.append(
            f"{name:<24} {r['topic_accuracy']:>9.4f} {r['sentiment_accuracy']:>9.4f} {r['agreement_with_fp32']:>7.4f} "
            f"{r.get('batch_invariance', float('nan')):>9.4f} {r['texts_per_s']:>8.1f} {r['speedup_vs_fp32']:>7.2f}x  "
            f"{r['accepted']}"
        )
        if not r["accepted"]:
            failed = refusals(r, base, report["max_accuracy_drop"], report["min_agreement"])
            lines.append(f"{'':<24} refused: {'; '.join(failed) or 'by the gate'}")
    invariance = report.get("min_batch_invariance", MIN_BATCH_INVARIANCE)
    lines.append(
        f"gate: accuracy drop <= {report['max_accuracy_drop']} on each head, agreement >= {report['min_agreement']} (each head and both), "
        f"batch invariance >= {invariance}; int8 recipe: {report['int8_recipe'] or 'none passed'}; "
        f"recommended CPU backend: {report['recommended']}"
    )
    return lines
