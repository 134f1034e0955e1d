"""Commands of the one-machine stack: the embedded broker, the demo and its feed server (``ingest demo-feeds``)."""

from __future__ import annotations

from typing import Annotated

import typer

from finsent.cli.common import ConfigOption, app, load_settings
from finsent.cli.ingest import ingest_app


@app.command()
def broker(config: ConfigOption = None) -> None:
    """Run the embedded Kafka-protocol broker (Tansu) on 127.0.0.1 with every finsent topic created."""
    from finsent.local.broker import start_broker
    from finsent.local.procs import Supervisor
    from finsent.local.runtime import wait_for_signal

    settings = load_settings(config)
    supervisor = Supervisor()
    child, report = start_broker(settings, settings.paths.state_dir / "logs")
    supervisor.children.append(child)
    ready = f"broker ready at {settings.broker.host}:{settings.broker.port}; created {report.created}"
    raise typer.Exit(wait_for_signal(supervisor, announce=lambda: typer.echo(ready, err=True)))


@app.command()
def demo(config: ConfigOption = None) -> None:
    """Start the embedded stack on 127.0.0.1 (broker, Prometheus, Alertmanager, ...), print URLs, stop on Ctrl-C."""
    from finsent.local import demo as demo_stack

    raise typer.Exit(demo_stack.run(load_settings(config), config))


@ingest_app.command("demo-feeds")
def ingest_demo_feeds(
    port: Annotated[
        int | None, typer.Option(help="Port on 127.0.0.1 (default: settings ingest.demo_feeds_port).")
    ] = None,
    burst_at: Annotated[
        float | None,
        typer.Option(
            help="Seconds after start when the negative oil burst begins (default: settings ingest.demo_burst_at_s)."
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Serve the local demo feeds (and the hostile test cases) over HTTP on 127.0.0.1."""
    from finsent.local.feeds import DEMO_FEEDS, FeedServer
    from finsent.local.runtime import StopSignals

    settings = load_settings(config)
    with StopSignals() as stop:  # before the server thread starts, so that it inherits the block (local.runtime)
        server = FeedServer(
            settings.services.host,
            port if port is not None else settings.ingest.demo_feeds_port,
            burst_at=burst_at if burst_at is not None else settings.ingest.demo_burst_at_s,
        ).start()
        try:
            for name in DEMO_FEEDS:
                typer.echo(f"{server.url}/feeds/{name}", err=True)
            stop.wait()
        finally:
            server.stop()
