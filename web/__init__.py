"""The HTTP API and analyst dashboard (``finsent serve``): a top-floor shell like the CLI."""
