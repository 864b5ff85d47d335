"""docs/module-map.md lists every Python file of the program folders, one line each, and nothing that is gone."""
from __future__ import annotations

import re

from conftest import ROOT
from docs_helpers import DOCS, section

FOLDERS = ("common", "serve", "train", "launcher")


def listed() -> list[str]:
    table = section(DOCS / "module-map.md", "## The Python modules")
    return re.findall(r"^\| `([^`]+\.py)` \| \S", table, re.M)


def test_every_python_file_is_listed_once_and_nothing_stale():
    on_disk = sorted(str(p.relative_to(ROOT)) for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")
                     if "__pycache__" not in p.parts)
    rows = listed()
    assert len(rows) == len(set(rows)), f"listed twice: {sorted({r for r in rows if rows.count(r) > 1})}"
    missing = sorted(set(on_disk) - set(rows))
    stale = sorted(set(rows) - set(on_disk))
    assert not missing, f"add a line to docs/module-map.md for: {missing}"
    assert not stale, f"docs/module-map.md lists files that are gone: {stale}"


def test_the_map_fits_one_line_per_file():
    table = section(DOCS / "module-map.md", "## The Python modules")
    long = [line.split("|")[1].strip() for line in table.splitlines()
            if line.startswith("| `") and len(line) > 160]
    assert not long, f"keep each module's line short (one screen for the map): {long}"
