"""Commands of alerting: the compliance receiver and its audit log, and Grafana dashboards as code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from finsent.cli.common import ConfigOption, app, load_settings
from finsent.errors import ConfigError, FinsentError, MissingResource

receiver_app = typer.Typer(
    help="The compliance receiver: Alertmanager webhooks into an append-only audit log.", no_args_is_help=False
)
app.add_typer(receiver_app, name="receiver")
grafana_app = typer.Typer(help="Dashboards as code: build the JSON, publish to a Grafana with grafana-client.")
app.add_typer(grafana_app, name="grafana")


def _existing_audit_log(path: Path) -> Path:
    if not path.exists():
        raise FinsentError(f"no audit log at {path}")
    return path


@receiver_app.callback(invoke_without_command=True)
def receiver(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Serve the webhook endpoint (POST /alertmanager), GET /alerts, /healthz and /metrics on 127.0.0.1."""
    if ctx.invoked_subcommand:
        return
    from finsent.alerts.receiver import serve

    serve(load_settings(config))


@receiver_app.command("alertmanager-config")
def receiver_alertmanager_config(
    out_dir: Annotated[
        Path, typer.Argument(help="Directory for alertmanager.yml and the token file (shared with Alertmanager).")
    ],
    receiver_address: Annotated[
        str | None, typer.Option(help="host:port of the receiver as Alertmanager reaches it.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Render alerts/alertmanager.yml for a deployment: the receiver's address, the bearer token from FINSENT_RECEIVER__TOKEN."""
    from finsent.alerts.config import render_alertmanager_config

    settings = load_settings(config)
    path = render_alertmanager_config(settings, out_dir, receiver_address=receiver_address)
    typer.echo(f"wrote {path} (token: {'yes' if settings.receiver.token else 'none set'})", err=True)


@receiver_app.command("export")
def receiver_export(
    since: Annotated[str | None, typer.Option("--from", help="ISO time with zone, e.g. 2024-05-02T00:00:00Z.")] = None,
    until: Annotated[str | None, typer.Option("--to", help="ISO time with zone (exclusive).")] = None,
    format: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    out: Annotated[Path | None, typer.Option(help="File to write; default: standard output.")] = None,
    config: ConfigOption = None,
) -> None:
    """Export every recorded notification (firing and resolved, with evidence) for a time range, streamed."""
    from contextlib import nullcontext

    from finsent.alerts.audit import AuditLog
    from finsent.alerts.receiver import export, parse_time

    settings = load_settings(config)
    if format not in ("csv", "json"):
        raise ConfigError("--format must be csv or json")
    try:
        start, end = parse_time(since), parse_time(until)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _existing_audit_log(settings.audit_db)
    audit = AuditLog(settings.audit_db)
    try:
        with out.open("w", newline="") if out else nullcontext(sys.stdout) as fh:
            n = export(audit.iter_rows(start, end), fh, format)
    except OSError as err:
        raise FinsentError(f"export to {out or 'standard output'} failed: {err}") from None
    finally:
        audit.close()
    if out:
        typer.echo(f"{n} notifications written to {out}", err=True)


@receiver_app.command("verify")
def receiver_verify(config: ConfigOption = None) -> None:
    """Check the audit log's hash chain: prints OK and the head hash, or the first row that does not fit (exit 1)."""
    import sqlite3

    from finsent.alerts.audit import verify_chain

    settings = load_settings(config)
    _existing_audit_log(settings.audit_db)
    try:
        report = verify_chain(settings.audit_db)
    except (ValueError, sqlite3.Error) as err:
        raise FinsentError(f"{settings.audit_db}: {err}") from None
    if report.bad_seq is not None:
        typer.echo(f"FAILED: row seq={report.bad_seq}: {report.reason} ({report.rows} rows before it verified)")
        raise typer.Exit(1)
    typer.echo(f"OK: {report.rows} rows, head {report.head}")


@grafana_app.command("build")
def grafana_build() -> None:
    """Regenerate alerts/grafana/dashboards/*.json from alerts/grafana/build.py."""
    from finsent.alerts.grafana.build import render

    for path in render():
        typer.echo(str(path))


@grafana_app.command("publish")
def grafana_publish(
    url: Annotated[str | None, typer.Option(help="Grafana base URL (default: settings grafana.url).")] = None,
    annotations: Annotated[
        bool, typer.Option("--annotations/--no-annotations", help="Also post surges from the audit log.")
    ] = True,
    config: ConfigOption = None,
) -> None:
    """Upload the dashboards (overwrite) and annotate surges; the API token comes from FINSENT_GRAFANA__TOKEN."""
    from finsent.alerts.audit import AuditLog
    from finsent.alerts.grafana import publish

    settings = load_settings(config)
    if settings.grafana.token is None:
        raise MissingResource("set FINSENT_GRAFANA__TOKEN to a Grafana API (service account) token")
    api = publish.client(url or settings.grafana.url, settings.grafana.token.get_secret_value())
    try:
        uids = publish.publish_dashboards(api, settings.grafana.folder_uid)
        posted = 0
        if annotations and settings.audit_db.exists():
            audit = AuditLog(settings.audit_db)
            try:
                posted = publish.publish_annotations(api, audit.iter_rows(alertname=publish.SURGE_ALERT))
            finally:
                audit.close()
    except Exception as err:  # noqa: BLE001 - grafana-client raises its own and niquests' errors: report, do not trace
        raise FinsentError(f"publishing to {url or settings.grafana.url} failed: {type(err).__name__}: {err}") from None
    typer.echo(f"published dashboards {uids}; {posted} surge annotations", err=True)
