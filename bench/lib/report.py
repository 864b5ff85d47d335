"""Readable tables and the final JSON line every benchmark prints."""
from __future__ import annotations

import json
import math


def table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            if math.isnan(v):
                return "n/a"
            return f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
        return "n/a" if v is None else str(v)

    cells = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def rounded(value, digits: int = 4):
    """Floats to `digits` significant digits (NaN becomes null), through dicts and lists."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def final_line(figures: dict) -> None:
    """The last line of a benchmark's output: one JSON object."""
    print(json.dumps(rounded(figures), sort_keys=False), flush=True)
