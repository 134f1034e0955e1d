"""Commands of the stream: topics and the worker."""

from __future__ import annotations

from typing import Annotated

import typer

from finsent.cli.common import ConfigOption, ModelDirOption, app, load_settings


@app.command()
def topics(config: ConfigOption = None) -> None:
    """Create finsent's topics on the configured Kafka (partition counts from settings, kafka.replication_factor); check existing ones."""
    from finsent.kafka import ensure_topics

    settings = load_settings(config)
    report = ensure_topics(
        settings.kafka,
        settings.topics.all(),
        timeout_s=settings.kafka.connect_timeout_s,
        replication_factor=settings.kafka.replication_factor,
    )
    typer.echo(
        f"topics ready on {settings.kafka.bootstrap}: created {report.created or 'none'}, "
        f"existing {report.existing or 'none'}",
        err=True,
    )


@app.command()
def worker(
    config: ConfigOption = None,
    model: ModelDirOption = None,
    aggregate: Annotated[
        bool,
        typer.Option(
            "--aggregate/--no-aggregate",
            help="Also run the aggregator (windows, surges). Run exactly one aggregating worker per deployment; "
            "extra scoring workers use --no-aggregate.",
        ),
    ] = True,
) -> None:
    """Score finsent.news.raw into finsent.news.scored; window, detect surges, export /metrics."""
    from finsent.model.artifact import model_dir
    from finsent.stream import worker as worker_mod

    settings = load_settings(config)
    raise typer.Exit(worker_mod.run(settings, model_dir(settings, model), aggregate=aggregate))
