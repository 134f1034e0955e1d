"""The HTTP API command."""

from __future__ import annotations

from finsent.cli.common import ConfigOption, ModelDirOption, app, load_settings


@app.command()
def serve(config: ConfigOption = None, model: ModelDirOption = None) -> None:
    """The HTTP API on 127.0.0.1: /classify, /items, /windows, /alerts, /feedback, /healthz, /readyz, /openapi.json."""
    from finsent.model.artifact import model_dir
    from finsent.web.api import serve as serve_api

    settings = load_settings(config)
    serve_api(settings, model_dir(settings, model))
