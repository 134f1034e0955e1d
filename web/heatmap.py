"""The topic × time heatmap: negative share per key and window, with each cell's volume.

Why a grid made on the server: the page would otherwise fetch one series per topic every few seconds. The
columns are the newest distinct window ends across the chosen keys (event time, one rolling width), the rows the
keys busiest first; a key with no window at a column's end has no cell there (``None``), which the page draws
as empty, not as zero negative. A pure function of the views' series, so it is tested without a server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from finsent.records import WindowStat


def heatmap(
    windows: Mapping[tuple[str, int], Sequence[WindowStat]], prefix: str, width: int, columns: int = 60
) -> dict[str, Any]:
    """``{"width", "ends": [iso…], "rows": [{"key", "count", "cells": [[negative_share, count] | None…]}]}``."""
    series = {key: pts for (key, w), pts in windows.items() if w == width and key.startswith(prefix) and pts}
    ends = sorted({p.end for pts in series.values() for p in pts})[-columns:]
    column = {end: i for i, end in enumerate(ends)}
    rows: list[dict[str, Any]] = []
    for key, pts in series.items():
        cells: list[list[float | int] | None] = [None] * len(ends)
        for p in pts:
            i = column.get(p.end)
            if i is not None:
                cells[i] = [round(p.negative_share, 4), p.count]
        volume = int(sum(c[1] for c in cells if c is not None))
        if volume:
            rows.append({"key": key, "count": volume, "cells": cells})
    rows.sort(key=lambda r: (-int(r["count"]), str(r["key"])))
    return {"width": width, "ends": [e.isoformat() for e in ends], "rows": rows}
