"""Commands of the one-machine stack: the embedded broker and the demo."""

from __future__ import annotations

import typer

from finsent.cli.common import ConfigOption, app, load_settings


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

    raise typer.Exit(demo_stack.run(load_settings(config)))
