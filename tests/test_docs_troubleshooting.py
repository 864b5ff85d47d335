"""docs/troubleshooting.md quotes messages the programs really write: every fixed part of each quoted message
(the text between the `...` that stand for names and values) is in the source of common/, serve/, train/ or
launcher/, so a reworded message fails here until the page follows it."""
from __future__ import annotations

import re

from conftest import ROOT
from docs_helpers import DOCS

# Adjacent string literals ("a " f"b") and a literal continued on the next line are one message.
_JOINS = re.compile(r"""(["'])\s*\n\s*(?:f|rf|fr|r)?(["'])""")


def _source() -> str:
    text = "\n".join(p.read_text(encoding="utf-8") for folder in ("common", "serve", "train", "launcher")
                     for p in sorted((ROOT / folder).rglob("*.py")))
    return _JOINS.sub("", text)


def quoted_messages() -> list[str]:
    out = []
    for line in (DOCS / "troubleshooting.md").read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `") or "(from SageMaker)" in line.split("|")[1]:
            continue
        cell = line.split("|")[1].strip()
        m = re.match(r"(`+)(.+?)\1", cell)
        out.append(m.group(2).strip())
    return out


def test_every_quoted_message_is_one_the_programs_write():
    source = _source()
    messages = quoted_messages()
    assert len(messages) >= 20
    for message in messages:
        for part in (p.strip() for p in message.split("...")):
            if len(part) >= 4:
                assert part in source, f"troubleshooting quotes {message!r}, but no program writes {part!r}"
