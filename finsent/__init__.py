"""finsent: financial-news sentiment monitoring stream processor."""

__version__ = "0.1.0"
