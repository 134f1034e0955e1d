"""Ingest: feeds and imports into NewsItems, the archive and ``finsent.news.raw``."""
