"""The Markdown of README.md and docs/: pages, sections under a heading, fenced code blocks and their markers."""
from __future__ import annotations

import ast
import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

from conftest import ROOT

DOCS = ROOT / "docs"
MARKER = re.compile(r"<!--\s*check:\s*(\S+)((?:\s+\w+=\S+)*)\s*-->")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


def pages() -> list[Path]:
    """README.md and every docs/*.md page."""
    return [ROOT / "README.md"] + sorted(DOCS.glob("*.md"))


def section(path: Path, heading: str) -> str:
    """The text under `heading` (a whole heading line, e.g. "## Serving settings") up to the next heading of the
    same or a higher level. AssertionError when the page has no such heading: a renamed heading fails the test
    that reads its section instead of letting it pass on nothing."""
    text = path.read_text(encoding="utf-8")
    level = len(heading.split(" ", 1)[0])
    lines = text.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        raise AssertionError(f"{_shown(path)} has no heading {heading!r}") from None
    out = []
    for line in lines[start + 1:]:
        m = re.match(r"(#+) ", line)
        if m and len(m.group(1)) <= level:
            break
        out.append(line)
    return "\n".join(out) + "\n"


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def table_lines(text: str) -> str:
    """The Markdown table rows of `text`, one per line, with a final newline."""
    return "\n".join(line for line in text.splitlines() if line.startswith("|")) + "\n"


@dataclass
class Block:
    path: Path
    line: int            # 1-based line of the opening fence
    lang: str            # the fence's info string ("" for none)
    kind: str | None     # the marker's kind: run, aws, flags, diagram; None without a marker
    args: dict[str, str]
    code: str            # dedented to the fence's indentation

    @property
    def where(self) -> str:
        return f"{_shown(self.path)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced code block of a page, with the `<!-- check: KIND [key=value ...] -->` marker on the line
    before its opening fence, if any."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        assert j < len(lines), f"{path}:{i + 1}: code block never closed"
        code = "\n".join(l[len(indent):] if l.startswith(indent) else l for l in lines[i + 1:j]) + "\n"
        marker = MARKER.search(lines[i - 1]) if i else None
        kind = marker.group(1) if marker else None
        args = dict(a.split("=", 1) for a in marker.group(2).split()) if marker else {}
        out.append(Block(path, i + 1, lang, kind, args, code))
        i = j + 1
    return out


def all_blocks() -> list[Block]:
    return [b for p in pages() for b in blocks(p)]


def commands(code: str) -> list[tuple[str, list[str]]]:
    """A shell block as (command, expected) pairs: each command with its backslash continuations joined, and
    the comment lines right after it (what the docs say it prints). Comment-only lines elsewhere are dropped."""
    out: list[tuple[str, list[str]]] = []
    current: list[str] = []
    for raw in code.splitlines():
        line = raw.rstrip()
        if current:
            current.append(line)
            if not line.endswith("\\"):
                out.append((_join(current), []))
                current = []
            continue
        if not line.strip():
            if out:
                out[-1] = (out[-1][0], out[-1][1] + ["<blank>"])
            continue
        if line.lstrip().startswith("#"):
            if out and (not out[-1][1] or out[-1][1][-1] != "<blank>"):
                out[-1][1].append(line.lstrip()[1:].strip())
            continue
        if line.endswith("\\"):
            current = [line]
        else:
            out.append((_join([line]), []))
    return [(c, [e for e in exp if e != "<blank>"]) if "<blank>" not in exp else
            (c, exp[:exp.index("<blank>")]) for c, exp in out]


def _join(lines: list[str]) -> str:
    return " ".join(l[:-1].strip() if l.endswith("\\") else l.strip() for l in lines)


def imports_sdk(code: str) -> bool:
    """Whether a Python block imports the SageMaker SDK (installed in .venv-launch only, not in .venv)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return any(isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "sagemaker"
               or isinstance(n, ast.Import) and any(a.name.split(".")[0] == "sagemaker" for a in n.names)
               for n in ast.walk(tree))


def check_python(code: str) -> None:
    """boto3 clients' operations, parameters and response keys against botocore's models; the SageMaker SDK's
    classes and methods against their signatures."""
    import boto3
    from botocore import xform_name

    tree = ast.parse(code)
    names: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sagemaker":
            module = importlib.import_module(node.module)
            for alias in node.names:
                names[alias.asname or alias.name] = getattr(module, alias.name)
    clients: dict[str, object] = {}    # variable -> botocore service model
    objects: dict[str, type] = {}      # variable -> SDK class
    outputs: dict[str, object] = {}    # variable -> output shape of the boto3 call that made it
    calls_checked = 0

    def check_kwargs(fn, call: ast.Call, what: str) -> None:
        params = inspect.signature(fn).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return
        for kw in call.keywords:
            assert kw.arg in params, f"{what}: no parameter {kw.arg}"

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            target, call = node.targets[0].id, node.value
            if ast.unparse(call.func) == "boto3.client":
                service = call.args[0].value
                clients[target] = boto3.session.Session(region_name="eu-west-1")._session.get_service_model(service)
            elif isinstance(call.func, ast.Name) and call.func.id in names:
                objects[target] = names[call.func.id]
            elif isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name) \
                    and call.func.value.id in clients:
                model = clients[call.func.value.id]
                ops = {xform_name(o): o for o in model.operation_names}
                if call.func.attr in ops:
                    outputs[target] = model.operation_model(ops[call.func.attr]).output_shape
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in names:
                check_kwargs(names[func.id], node, func.id)
                calls_checked += 1
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                var = func.value.id
                if var in clients:
                    model = clients[var]
                    ops = {xform_name(o): o for o in model.operation_names}
                    assert func.attr in ops, f"{var}.{func.attr}: {model.service_name} has no such operation"
                    members = model.operation_model(ops[func.attr]).input_shape.members
                    assert not node.args, f"{var}.{func.attr}: boto3 takes keyword arguments only"
                    for kw in node.keywords:
                        assert kw.arg in members, f"{var}.{func.attr}: no parameter {kw.arg}"
                    required = model.operation_model(ops[func.attr]).input_shape.required_members
                    assert set(required) <= {kw.arg for kw in node.keywords}, f"{var}.{func.attr}: needs {required}"
                    calls_checked += 1
                elif var in objects:
                    method = getattr(objects[var], func.attr, None)
                    assert method is not None, f"{var}.{func.attr}: {objects[var].__name__} has no such method"
                    check_kwargs(method, node, f"{objects[var].__name__}.{func.attr}")
                    calls_checked += 1
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in outputs \
                and isinstance(node.slice, ast.Constant):
            assert node.slice.value in outputs[node.value.id].members, \
                f"{node.value.id}[{node.slice.value!r}]: not in the response"
    assert calls_checked, "an AWS Python block with no AWS call this test could check"
