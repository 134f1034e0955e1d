"""Commands of alerting: the compliance receiver and its audit log, and Grafana dashboards as code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from finsent.cli.common import ConfigOption, app, load_settings
from finsent.errors import ConfigError, FinsentError, MissingResource

receiver_app = typer.Typer(
    help="The compliance receiver: Alertmanager webhooks into an append-only audit log.", no_args_is_help=False
)
app.add_typer(receiver_app, name="receiver")
grafana_app = typer.Typer(help="Dashboards as code: build the JSON, publish to a Grafana with grafana-client.")
app.add_typer(grafana_app, name="grafana")


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
    web_auth: Annotated[
        bool,
        typer.Option(
            "--web-auth/--no-web-auth",
            help="Also write OUT_DIR/web.yml (basic auth for user finsent, a bcrypt hash of "
            "FINSENT_SERVICES__ALERTMANAGER_PASSWORD) for Alertmanager's --web.config.file, and the password in a "
            "0600 file for Prometheus. --no-web-auth: only for an Alertmanager protected some other way.",
        ),
    ] = True,
    password_file: Annotated[
        Path | None,
        typer.Option(help="Where to write the password Prometheus reads; default OUT_DIR/alertmanager-password."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Render alerts/alertmanager.yml for a deployment: the receiver's address, the bearer token from
    FINSENT_RECEIVER__TOKEN, and Alertmanager's basic auth from FINSENT_SERVICES__ALERTMANAGER_PASSWORD."""
    from finsent.alerts.config import render_alertmanager_config, render_alertmanager_web_auth

    settings = load_settings(config)
    auth = render_alertmanager_web_auth(settings, out_dir, password_file) if web_auth else None  # refuses first
    path = render_alertmanager_config(settings, out_dir, receiver_address=receiver_address)
    typer.echo(f"wrote {path} (token: {'yes' if settings.receiver.token else 'none set'})", err=True)
    if auth is not None:
        typer.echo(f"wrote {auth[0]} (basic auth, user finsent) and the password for Prometheus to {auth[1]}", err=True)


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
    from finsent.alerts.export import export, parse_time

    settings = load_settings(config)
    if format not in ("csv", "json"):
        raise ConfigError("--format must be csv or json")
    fmt: Literal["csv", "json"] = "csv" if format == "csv" else "json"
    try:
        start, end = parse_time(since), parse_time(until)
    except ValueError as err:  # parse_time (alerts.export) says what is wrong with the time in a ValueError
        raise ConfigError(str(err)) from None
    audit = AuditLog(settings.audit_db, create=False)  # StateStoreError: missing, or not an audit log
    try:
        with out.open("w", newline="") if out else nullcontext(sys.stdout) as fh:
            n = export(audit.iter_rows(start, end, actions=True), fh, fmt)
    except OSError as err:  # the output file this command opened (and writes): a bad path, a full disk
        raise FinsentError(f"export to {out or 'standard output'} failed: {err}") from None
    finally:
        audit.close()
    if out:
        typer.echo(f"{n} rows (notifications and case actions) written to {out}", err=True)


@receiver_app.command("verify")
def receiver_verify(config: ConfigOption = None) -> None:
    """Check the audit log's hash chain: prints OK and the head hash, or the first row that does not fit (exit 1)."""
    from finsent.alerts.audit import verify_chain

    report = verify_chain(load_settings(config).audit_db)  # StateStoreError: missing, unreadable or not chained
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
    from grafana_client.client import GrafanaException

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
    except (GrafanaException, OSError) as err:  # Grafana's answer, or niquests' (an OSError): one line
        raise FinsentError(f"publishing to {url or settings.grafana.url} failed: {type(err).__name__}: {err}") from None
    typer.echo(f"published dashboards {uids}; {posted} surge annotations", err=True)
