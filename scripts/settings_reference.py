"""Write ``docs/settings.md``: every setting with its variable and default (``finsent.settings.reference``).

Run it after adding or changing a setting; ``tests/unit/test_settings_reference.py`` fails while the file is stale.
"""

from __future__ import annotations

from pathlib import Path

from finsent.settings import reference

OUT = Path(__file__).resolve().parent.parent / "docs" / "settings.md"

if __name__ == "__main__":
    OUT.write_text(reference() + "\n")
    print(OUT)
