"""The documentation site: `mkdocs build --strict` passes (no broken link, anchor or page outside the nav),
README stays a front door (short, links that resolve), and every page says which version it describes."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from docs_helpers import DOCS, section, table_lines

MKDOCS = Path(sys.executable).parent / "mkdocs"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                         capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    return out


def test_the_site_builds_strict_and_has_every_page(site):
    for page in DOCS.glob("*.md"):
        built = site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), f"{page.name} was not built"


def test_strict_build_fails_on_a_broken_anchor(tmp_path):
    """The build this suite relies on does reject a link to a missing anchor (the validation settings in
    mkdocs.yml), so the passing build above means something."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[elsewhere](other.md#no-such-heading)\n")
    (docs / "other.md").write_text("# Other\n\n## A heading\n")
    config = (ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[0]
    (tmp_path / "mkdocs.yml").write_text(config + "\nnav:\n  - index.md\n  - other.md\n")
    run = subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=tmp_path,
                         capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode != 0 and "no-such-heading" in run.stdout + run.stderr


def _ids(built_html: Path) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', built_html.read_text(encoding="utf-8")))


def _github_slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_is_short_and_its_links_resolve(site):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250, "README.md is a front door: move detail into docs/"
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert links, "README links into the docs"
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = ROOT / target
        assert path.exists(), f"README links to {target}, which does not exist"
        if not anchor:
            continue
        if target.startswith("docs/") and target.endswith(".md"):
            stem = Path(target).stem
            built = site / ("index.html" if stem == "index" else f"{stem}/index.html")
            assert anchor in _ids(built), f"README links to {link}: no such anchor in the built page"
        else:  # rendered by GitHub: its heading slugs
            slugs = {_github_slug(h) for h in re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)}
            assert anchor in slugs, f"README links to {link}: no such heading"


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    assert [line.split()[0] for line in first.splitlines()] == ["./quickstart.sh", "./test.sh"]


def test_readme_holds_no_measurement_history():
    """Figures live in bench/README.md with their dates; README links to its current table."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b", readme), "dated measurements belong in bench/README.md"
    assert not re.findall(r"\bCER [0-9]|\bRTFx [0-9]|\b[0-9.]+ ?ms\b", readme)
    section(ROOT / "bench" / "README.md", "## Current figures against the targets")


def _pins() -> dict[str, str]:
    def pin(file: str, name: str) -> str:
        return re.search(rf"^{name}==(\S+)", (ROOT / "requirements" / file).read_text(), re.M).group(1)
    torch = re.search(r"^ARG TORCH_REQUIREMENT=torch==(\S+)", (ROOT / "docker" / "Dockerfile").read_text(), re.M)
    return {"transformers": pin("serve.txt", "transformers"), "torch": torch.group(1),
            "SageMaker Python SDK": pin("launch.txt", "sagemaker")}


def test_every_page_says_which_version_it_describes():
    pins = _pins()
    want = (f"This page describes wav2vec2-sagemaker at ")
    for page in sorted(DOCS.glob("*.md")):
        head = "\n".join(page.read_text(encoding="utf-8").splitlines()[:6])
        assert want in head, f"{page.name}: no version line near the top"
        line = next(l for l in head.splitlines() if want in l)
        assert f"transformers {pins['transformers']}" in line, f"{page.name}: transformers is {pins['transformers']}"
        assert f"torch {pins['torch']} in the images" in line, f"{page.name}: the images' torch is {pins['torch']}"
        assert f"SageMaker Python SDK {pins['SageMaker Python SDK']}" in line, f"{page.name}: the SDK pin changed"


def test_the_content_type_table_lists_every_type_the_server_accepts():
    from common import mediatypes
    from serve import bodies

    rows = table_lines(section(DOCS / "requests.md", "## Requests")).splitlines()
    listed = set()
    for row in rows[2:]:
        listed |= set(re.findall(r"`([a-z]+/[a-z0-9.+-]+)`", row.split("|")[1]))
    assert listed == set(mediatypes.ACCEPTED)  # the one table (launcher and server)
    assert set(mediatypes.ACCEPTED) == set(bodies.DECODERS)  # and the server decodes exactly those


def _messages(path: Path) -> list[str]:
    """The string constants of a module that are not docstrings: its messages and help texts."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings]


def test_the_launchers_messages_point_at_pages_that_exist():
    """Errors and --help texts send readers to docs/ pages (README no longer holds those sections)."""
    for path in sorted((ROOT / "launcher").glob("*.py")):
        for message in _messages(path):
            assert "README" not in message, f"{path.name}: {message[:80]!r} points at README; name the docs page"
            for page in re.findall(r"docs/([\w-]+\.md)", message):
                assert (DOCS / page).is_file(), f"{path.name} points at docs/{page}, which does not exist"
