"""The layout rule of the developers' guide: a .py file of the program folders over ~300 lines says why it is
one file, in a paragraph of its module docstring starting "One file because"."""
from __future__ import annotations

import ast
import re

from conftest import ROOT

FOLDERS = ("serve", "train", "common", "launcher")
MAX_LINES = 300
PARAGRAPH = re.compile(r"(?:\A|\n[ \t]*\n)One file because\b")


def python_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")
                  if "__pycache__" not in p.parts)


def says_why(source: str) -> bool:
    docstring = ast.get_docstring(ast.parse(source)) or ""
    return bool(PARAGRAPH.search(docstring))


def test_long_files_say_why_they_are_one_file():
    files = python_files()
    assert len(files) > 50 and "serve/model.py" in files  # the folders were found
    long = {f: len((ROOT / f).read_text().splitlines()) for f in files}
    long = {f: n for f, n in long.items() if n > MAX_LINES}
    unexplained = sorted(f"{f} ({n} lines)" for f, n in long.items()
                         if not says_why((ROOT / f).read_text()))
    assert not unexplained, ("over ~300 lines without a paragraph starting 'One file because' in the module "
                             f"docstring (split the file, or say why it is one): {unexplained}")


def test_the_rule_reads_a_paragraph_of_the_module_docstring():
    assert says_why('"""Title.\n\nOne file because it is one protocol.\n"""\nx = 1\n')
    assert says_why('"""One file because short."""')
    assert not says_why('"""Title.\n\nNot one file because of this.\n"""\n')  # not at a paragraph's start
    assert not says_why('"""Title: one file because."""')
    assert not says_why('x = 1\n"""One file because it is not the docstring."""\n')
    assert not says_why('# One file because a comment is not the docstring\nx = 1\n')

