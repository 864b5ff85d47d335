"""Corrections for names a user typed: the closest valid names (difflib), in one short line."""
from __future__ import annotations

import difflib
from typing import Iterable

MAX_LISTED = 8  # names listed in full when there is no close match; more go to the docs / --help


def closest(name: str, valid: Iterable[str], n: int = 3) -> list[str]:
    """Up to n valid names close to `name` (difflib's ratio >= 0.6), best first; case is ignored."""
    valid = list(valid)
    by_lower = {v.lower(): v for v in valid}
    return [by_lower[m] for m in difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.6)]


def did_you_mean(name: str, valid: Iterable[str], *, where: str = "") -> str:
    """'did you mean max_steps?' or, with no close name, a short list of the valid ones (or where they are)."""
    valid = sorted(set(valid))
    near = closest(name, valid)
    if near:
        return "did you mean " + " or ".join(near) + "?"
    if len(valid) <= MAX_LISTED:
        return "valid: " + ", ".join(valid)
    return f"{len(valid)} valid names" + (f" ({where})" if where else "")
