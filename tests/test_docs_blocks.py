"""Every code block of README.md and docs/ that a reader would run is checked, so a stale block fails.

Each shell or Python block carries a marker on the line before it, `<!-- check: KIND -->`:
- `run`: run here as written, from a folder that looks like the repository root and holds the audio files the
  blocks name (clip.wav, meeting.flac, ...). `localhost:8080` is the real serving program on a free port with a
  tiny model (`model=mms`: adapters for eng and fra; `model=lm`: a KenLM 3-gram beside it), and paths under
  /tmp/ move into a temporary folder. Each command must succeed; a curl answer must be JSON, an `{"error": ...}`
  exactly when the block's comment below the command shows one, and then that very answer.
- `aws`, `flags`: what needs AWS, Docker, a GPU or many minutes is not run; instead every command it names must
  exist and accept the flags it is given: launcher/launch's own argparse parser, botocore's service models for
  `aws` commands and boto3 calls (operations, parameters, response keys), the SageMaker SDK's signatures
  (tests/test_launcher_sdk_docs.py, in .venv-launch), curl's own option list, and the repository's scripts (present, executable, and the flag in their source).
  `aws run=endpoint` blocks (boto3's InvokeEndpoint) are also run as written against a
  local stand-in of the endpoint in front of the real serving program.
JSON blocks must parse. Text blocks (trees, log lines, diagrams) are not commands.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, program_env
from docs_helpers import Block, all_blocks, check_python, commands, imports_sdk

CODE_LANGS = {"bash", "sh", "shell", "console", "python"}
KINDS = {"run", "aws", "flags"}
BLOCKS = all_blocks()


def _ids(blocks):
    return [b.where for b in blocks]


# ---- every block is marked ---------------------------------------------------------------------------------------

def test_every_command_block_says_how_it_is_checked():
    unmarked = [b.where for b in BLOCKS if b.lang in CODE_LANGS and b.kind not in KINDS]
    assert not unmarked, f"add <!-- check: run|aws|flags --> before these blocks: {unmarked}"
    assert sum(b.kind == "run" for b in BLOCKS) >= 8


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "json"], ids=_ids([b for b in BLOCKS if b.lang == "json"]))
def test_json_blocks_parse(block):
    try:
        json.loads(block.code)
    except json.JSONDecodeError:
        json.loads("[" + block.code + "]")  # a fragment of statements to add to a policy


# ---- blocks that are not run: their commands and flags exist ----------------------------------------------------

SHELL_WORDS = {"export", "for", "do", "done", "mkdir", "ln", "echo", "cp", "cd", "printf", "arecord", "ffmpeg",
               "python3", "python3.12", "sudo"}
REPO_PATH = re.compile(r"^(?:\./)?((?:requirements|local_test|docker|tests|bench|reliability|launcher|train|serve|"
                       r"common|docs)/[^\s*]*)")
S3_COMMANDS = {"cp": set(), "mv": set(), "rm": set(), "sync": set(), "ls": set()}
S3_FLAGS = {"--recursive", "--exclude", "--include", "--delete", "--dryrun", "--quiet"}
GLOBAL_AWS_FLAGS = {"--region", "--profile", "--output", "--endpoint-url"}


def simple_commands(code: str) -> list[list[str]]:
    """Each simple command of a shell block as its words, without leading VAR=value assignments, redirections,
    comments, or the `for`/`do`/`done` of a loop."""
    out = []
    for command, _ in commands(code):
        lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words, current, skip = list(lexer), [], False
        for word in words + [";"]:
            if skip:
                skip = False
                continue
            if word in {">", ">>", "<", "2>"}:
                skip = True
                continue
            if word in {"|", "||", "&&", ";", "&"}:
                while current and re.match(r"^[A-Z_][A-Z0-9_]*=", current[0]):
                    current.pop(0)
                if current and current[0] == "do":
                    current.pop(0)
                if current and current[0] not in {"for", "done"}:
                    out.append(current)
                current = []
                continue
            current.append(word)
    return out


def _long_flags(words: list[str]) -> list[str]:
    return [w.strip("[]").split("=", 1)[0] for w in words if w.strip("[]").startswith("--")]


def check_launch(argv: list[str]) -> None:
    from launcher.cli import build_parser

    argv = ["x" if "$" in w else w for w in argv]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"launcher/launch {' '.join(argv)}: refused by its parser (exit {exc.code})") from None


def check_aws(argv: list[str]) -> None:
    import botocore.session
    from botocore import xform_name

    service, op, rest = argv[0], argv[1], argv[2:]
    flags = [f for f in _long_flags(rest) if f not in GLOBAL_AWS_FLAGS]
    if service == "s3":
        assert op in S3_COMMANDS, f"aws s3 {op}: not an aws s3 command"
        assert set(flags) <= S3_FLAGS, f"aws s3 {op}: unknown flags {set(flags) - S3_FLAGS}"
        return
    model = botocore.session.get_session().get_service_model(service)
    operations = {xform_name(name, "-"): name for name in model.operation_names}
    assert op in operations, f"aws {service} {op}: no such operation"
    shape = model.operation_model(operations[op]).input_shape
    members = {xform_name(m, "-") for m in (shape.members if shape else {})}
    for flag in flags:
        assert flag[2:] in members, f"aws {service} {op}: no parameter {flag}"


def _curl_options() -> set[str]:
    help_text = subprocess.run(["curl", "--help", "all"], capture_output=True, text=True).stdout
    return set(re.findall(r"(--[a-z0-9-]+)", help_text))


def check_script(argv: list[str]) -> None:
    program = argv[0]
    if program.endswith("/python") or program.endswith("/python3"):
        script = next((w for w in argv[1:] if not w.startswith("-")), None)
        assert script, f"{' '.join(argv)}: no script"
        path, flags = ROOT / script, _long_flags(argv[2:])
    elif program.endswith("/pip"):
        return
    else:
        path, flags = ROOT / program.removeprefix("./"), _long_flags(argv[1:])
        assert os.access(path, os.X_OK), f"{program} is not an executable of the repository"
    assert path.is_file(), f"{path.relative_to(ROOT)} does not exist"
    text = path.read_text(encoding="utf-8", errors="replace")
    for flag in flags:
        assert flag in text, f"{path.relative_to(ROOT)} has no option {flag}"


def check_shell(code: str) -> None:
    curl_options = None
    for words in simple_commands(code):
        for word in words:
            m = REPO_PATH.match(word)
            if m and "$" not in word and re.search(r"\.(py|sh|txt|json|md)$", m.group(1)):  # not what a command makes
                assert (ROOT / m.group(1)).exists() or list(ROOT.glob(m.group(1) + "*")), \
                    f"{word}: no such file in the repository"
        first = words[0]
        if first == "launcher/launch":
            check_launch(words[1:])
        elif first == "aws":
            check_aws(words[1:])
        elif first == "curl":
            curl_options = curl_options or _curl_options()
            unknown = set(_long_flags(words[1:])) - curl_options
            assert not unknown, f"curl has no option {unknown}"
        elif first == "docker":
            assert words[1] in {"run", "build", "history", "save", "image", "inspect", "stop"}, words
        elif "/" in first:
            check_script(words)
        else:
            assert first in SHELL_WORDS, f"{first}: a command this test does not know how to check; add a checker"


CHECKED = [b for b in BLOCKS if b.kind in {"aws", "flags"} and not imports_sdk(b.code)]
# Blocks that import the SageMaker SDK (v3, in the launcher's .venv-launch only) are checked there, by
# tests/test_launcher_sdk_docs.py with the same check_python.



@pytest.mark.parametrize("block", CHECKED, ids=_ids(CHECKED))
def test_commands_of_blocks_that_are_not_run_exist_with_their_flags(block: Block):
    if block.lang == "python":
        check_python(block.code)
    else:
        check_shell(block.code)


@pytest.mark.parametrize("code,says", [
    ("launcher/launch deploy --endpoint-name x --no-such-flag 1\n", "refused by its parser"),
    ("launcher/launch depoly --endpoint-name x\n", "refused by its parser"),
    ("aws sagemaker delete-endpoints --endpoint-name x\n", "no such operation"),
    ("aws ecr delete-repository --repository-name x --forced\n", "no parameter --forced"),
    ("curl --aws-sigv5 x https://example.com\n", "curl has no option"),
    ("./build_and_push.sh --no-such-option\n", "has no option --no-such-option"),
    ("bench/no_such_bench\n", "not an executable"),
    ("launcher/launch train --hyperparameters-file local_test/no_such.json\n", "no such file"),
    ("gcloud run deploy\n", "does not know how to check"),
])
def test_the_checks_fail_on_a_stale_command(code, says):
    with pytest.raises(AssertionError, match=says):
        check_shell(code)


def test_the_python_check_fails_on_a_stale_call():
    good = 'import boto3\nr = boto3.client("sagemaker-runtime")\nx = r.invoke_endpoint(EndpointName="e", Body=b"")\n' \
           'print(x["Body"])\n'
    check_python(good)
    for stale, says in ((good.replace("invoke_endpoint(", "invoke("), "no such operation"),
                        (good.replace("Body=b", "Payload=b"), "no parameter Payload"),
                        (good.replace('x["Body"]', 'x["Text"]'), "not in the response")):
        with pytest.raises(AssertionError, match=says):
            check_python(stale)


# ---- blocks that are run ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory, synthetic_data) -> Path:
    """A folder that looks like the repository root (links to its top-level entries) and holds the audio files
    the blocks name."""
    work = tmp_path_factory.mktemp("docs_run")
    for entry in ROOT.iterdir():
        if entry.name not in {".git"}:
            (work / entry.name).symlink_to(entry)
    clips = sorted((synthetic_data / "test" / "audio").glob("*.wav"))
    audio = [sf.read(str(c), dtype="float32") for c in clips[:3]]
    for name, (samples, rate) in zip(("clip", "a", "b"), audio):
        sf.write(str(work / f"{name}.wav"), samples, rate, subtype="PCM_16")
        sf.write(str(work / f"{name}.flac"), samples, rate)
    joined = np.concatenate([a for a, _ in audio])
    sf.write(str(work / "talk.wav"), joined, audio[0][1], subtype="PCM_16")
    sf.write(str(work / "meeting.flac"), joined, audio[0][1])
    return work


@pytest.fixture(scope="module")
def servers(tmp_path_factory, tiny_model_dir):
    """get(kind) -> a running serve/serve with that model: tiny, mms (adapters eng, fra) or lm (a 3-gram)."""
    import checkpoints
    from serve_helpers import Server, make_opt_ml

    running: dict[str, Server] = {}

    def model_dir(kind: str, root: Path) -> Path:
        if kind == "tiny":
            return tiny_model_dir
        if kind == "mms":
            return checkpoints.build("mms", root / "model_src")
        if kind == "lm":
            from test_serve_lm import add_lm

            return add_lm(checkpoints.build("xls-r", root / "model_src"), root / "lm_work")
        raise AssertionError(f"unknown model={kind}")

    def get(kind: str) -> Server:
        if kind not in running:
            root = tmp_path_factory.mktemp(f"docs_serve_{kind}")
            opt_ml = make_opt_ml(root / "opt_ml", model_dir(kind, root))
            running[kind] = Server(opt_ml, root / "serve.log", MODEL_SERVER_WORKERS="1").wait_ready()
        return running[kind]

    yield get
    for server in running.values():
        server.stop()


def _env(work: Path) -> dict[str, str]:
    env = program_env(PYTHONPATH=str(work))
    env["PATH"] = f"{work / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    return env


def _localize(code: str, port: int | None, tmp: Path) -> str:
    if port is not None:
        code = code.replace("localhost:8080", f"127.0.0.1:{port}").replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    return code.replace("/tmp/", f"{tmp}/")


def _check_answer(command: str, out: str, expected: list[str], where: str) -> None:
    shown = f"{where}: `{command[:100]}` answered {out[:300]!r}"
    if "Accept: text/plain" in command:
        assert out.strip() is not None and not out.lstrip().startswith("{"), shown
        return
    if "invocations-response-stream" in command:
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert lines and all("error" not in line for line in lines), shown
        return
    try:
        answer = json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"{shown}: not JSON") from None
    want = None
    if expected:
        try:
            want = json.loads(" ".join(expected))
        except json.JSONDecodeError:
            pass
    if isinstance(want, dict) and "error" in want:
        assert answer == want, f"{shown}; the docs say {want}"
        return
    items = answer if isinstance(answer, list) else [answer]
    assert all(isinstance(i, dict) and "error" not in i and "text" in i for i in items), shown
    if isinstance(want, dict):
        assert set(answer) == set(want), f"{shown}; the docs show the keys {sorted(want)}"


RUN = [b for b in BLOCKS if b.kind == "run"]


@pytest.mark.parametrize("block", RUN, ids=_ids(RUN))
def test_blocks_run_as_written(block: Block, workdir, servers, tmp_path):
    needs_server = ":8080" in block.code
    port = servers(block.args.get("model", "tiny")).port if needs_server else None
    code = _localize(block.code, port, tmp_path)
    env = _env(workdir)
    if block.lang == "python":
        run = subprocess.run([sys.executable, "-"], input=code, cwd=workdir, env=env, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, f"{block.where} failed:\n{run.stdout}\n{run.stderr}"
        assert run.stdout.strip(), f"{block.where} printed nothing"
        return
    if not needs_server:
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=workdir, env=env, capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, f"{block.where} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        return
    for command, expected in commands(code):
        run = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=workdir, env=env, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, f"{block.where}: `{command}` failed:\n{run.stdout}\n{run.stderr}"
        if command.lstrip().startswith("curl"):
            _check_answer(command, run.stdout, expected, block.where)


# ---- AWS blocks that also run against a local stand-in of the endpoint ------------------------------------------

@pytest.fixture(scope="module")
def endpoint(servers):
    """An HTTP stand-in for SageMaker's InvokeEndpoint in front of the real serving program (tiny model): POST
    /endpoints/NAME/invocations is passed on to /invocations with the headers InvokeEndpoint forwards
    (Content-Type, Accept, X-Amzn-SageMaker-Custom-Attributes), as SageMaker passes it to the container. The
    blocks' boto3 (and the SDK's) reach it through AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME, unchanged."""
    import http.server
    import threading

    from conftest import free_port

    server = servers("tiny")
    seen: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            m = re.fullmatch(r"/endpoints/([^/]+)/invocations", self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if not m:
                self.send_response(404)
                self.end_headers()
                return
            forwarded = {k: self.headers[k] for k in ("Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes")
                         if self.headers.get(k)}
            seen.append({"endpoint": m.group(1), **forwarded})
            reply = server.post(body, forwarded.pop("Content-Type", None), **forwarded)
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.headers.get("content-type", "application/json"))
            self.send_header("Content-Length", str(len(reply.body)))
            self.send_header("x-Amzn-Invoked-Production-Variant", "AllTraffic")
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, *args):
            pass

    port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}", seen
    httpd.shutdown()


ENDPOINT_RUN = [b for b in BLOCKS if b.args.get("run") == "endpoint"]


@pytest.mark.parametrize("block", ENDPOINT_RUN, ids=_ids(ENDPOINT_RUN))
def test_aws_blocks_run_against_a_stand_in_endpoint(block: Block, workdir, endpoint):
    """The README's boto3 and SDK calls, run as written: they reach the serving program with the options they
    set, and parse what it answers (a key the docs read that the server does not write fails here)."""
    url, seen = endpoint
    env = _env(workdir)
    env.update(AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="eu-west-1", AWS_EC2_METADATA_DISABLED="true", SAGEMAKER_SUPPRESS_V2_WARNING="1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        env.pop(name, None)
    before = len(seen)
    run = subprocess.run([sys.executable, "-"], input=block.code, cwd=workdir, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, f"{block.where} failed:\n{run.stdout}\n{run.stderr[-3000:]}"
    calls = seen[before:]
    assert calls and all(c["endpoint"] == "asr-demo" for c in calls), calls
    for attributes in re.findall(r'ustom_?[aA]ttributes="([^"]+)"', block.code):
        assert any(c.get("X-Amzn-SageMaker-Custom-Attributes") == attributes for c in calls), (attributes, calls)
