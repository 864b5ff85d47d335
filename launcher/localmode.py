"""Local mode of `deploy`, `invoke` and `transform`: the serving image run here with docker, as SageMaker runs it.

The SDK v3's local endpoint (ModelBuilder's Mode.LOCAL_CONTAINER, sagemaker.serve.mode.local_container_mode)
starts only its own model servers (Triton, DJL, TorchServe, TGI, MMS, TF Serving, TEI), not a bring-your-own
container, and v3 has no local batch transform; so these commands run the image themselves with SageMaker's
container contract (docs/sagemaker.md): `serve` as the argument, the model extracted at
/opt/ml/model, port 8080 inside, GET /ping before any request, POST /invocations per request. No AWS call.
Local training goes through the SDK's own local container mode (launcher/training.py).
"""
from __future__ import annotations

import signal
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import JobFailed, LaunchError

CONTAINER_PREFIX = "wav2vec2-local-"
PING_TIMEOUT_S = 600


class _Stop(Exception):
    """SIGTERM while a local endpoint runs: unwind so that its container is removed."""


def _raise_stop(*_):
    raise _Stop()


def model_dir(model_data: str, work: Path) -> Path:
    """A model folder as given, or model.tar.gz extracted (as SageMaker does) into a private folder."""
    path = Path(model_data[len("file://"):] if model_data.startswith("file://") else model_data)
    if path.is_dir():
        return path
    out = work / "model"
    out.mkdir(mode=0o755)
    work.chmod(0o755)  # the serving image runs as a non-root user; temporary folders are 0700
    with tarfile.open(path) as tar:
        tar.extractall(out, filter="data")
    for p in [out, *out.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return out


def docker_run(image: str, name: str, model: Path, env: dict[str, str], port: int, gpu: bool) -> None:
    cmd = ["docker", "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8080",
           "-v", f"{model}:/opt/ml/model:ro"]
    for k, v in env.items():
        cmd += ["-e", f"{k}={v}"]
    if gpu:
        cmd += ["--gpus", "all"]
    r = subprocess.run(cmd + [image, "serve"], capture_output=True, text=True)
    if r.returncode != 0:
        raise LaunchError(f"docker could not start {image}: {r.stderr.strip()[-500:]}")


def alive(name: str) -> bool:
    r = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", name], capture_output=True, text=True)
    return r.stdout.strip() == "true"


def stop(name: str) -> None:
    subprocess.run(["docker", "logs", "--tail", "40", name], check=False)
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def wait_ping(port: int, name: str, timeout_s: float = PING_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(name):
            raise JobFailed(f"the local serving container {name} exited before /ping answered; its log is above")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise JobFailed(f"the local serving container {name} did not pass /ping within {timeout_s:.0f} s")


def serving(opts_image: str, model_data: str, env: dict[str, str], port: int, gpu: bool, name: str):
    """Context: the serving container up and healthy on 127.0.0.1:port, removed on exit (SIGTERM too)."""
    import contextlib

    @contextlib.contextmanager
    def run():
        previous = signal.signal(signal.SIGTERM, _raise_stop)
        with tempfile.TemporaryDirectory(prefix="wav2vec2-model-") as work:
            try:
                docker_run(opts_image, name, model_dir(model_data, Path(work)), env, port, gpu)
                wait_ping(port, name)
                yield
            finally:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # clean-up must not be interrupted in turn
                stop(name)
                signal.signal(signal.SIGTERM, previous)
    return run()


def deploy(opts) -> int:
    """opts: hosting.DeployOptions in local mode."""
    from .hosting import SERVE_REPOSITORY

    image = opts.image or f"{SERVE_REPOSITORY}:latest"
    name = CONTAINER_PREFIX + opts.endpoint_name
    print(f"[launch] deploying {opts.endpoint_name}: 1 x {opts.instance_type}, image {image}", flush=True)
    try:
        with serving(image, opts.model_data, opts.server_env, opts.serving_port, opts.aws.local_gpu, name):
            print(f"[launch] local endpoint {opts.endpoint_name} on http://localhost:{opts.serving_port} "
                  f"({'for %.0f s' % opts.local_seconds if opts.local_seconds else 'until Ctrl-C or SIGTERM'})",
                  flush=True)
            deadline = None if opts.local_seconds is None else time.monotonic() + opts.local_seconds
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5)
                if not alive(name):
                    raise JobFailed(f"the local serving container of {opts.endpoint_name} exited; its log is above")
    except (_Stop, KeyboardInterrupt):
        print("[launch] stopping the local endpoint", flush=True)
    print(f"[launch] local endpoint {opts.endpoint_name} removed", flush=True)
    return 0


def invoke(port: int, body: bytes, content_type: str, accept: str, attributes: str | None) -> tuple[int, bytes]:
    """POST /invocations as SageMaker forwards it (CustomAttributes as its header)."""
    headers = {"Content-Type": content_type, "Accept": accept}
    if attributes:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = attributes
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body, headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=600) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise LaunchError(f"no local endpoint answers on port {port} ({exc}): start one with "
                          "`launch deploy --local`") from None


def transform(opts, output_dir: Path) -> int:
    """Batch transform here: every file under --input, one request each (SingleRecord), FILE.out beside."""
    from .hosting import SERVE_REPOSITORY

    image = opts.image or f"{SERVE_REPOSITORY}:latest"
    name = CONTAINER_PREFIX + (opts.job_name or "transform")
    source = Path(opts.input[len("file://"):])
    files = sorted(p for p in source.rglob("*") if p.is_file())
    failed = []
    with serving(image, opts.model_data, opts.env, opts.serving_port, opts.aws.local_gpu, name):
        for path in files:
            status, answer = invoke(opts.serving_port, path.read_bytes(), opts.content_type, opts.accept, None)
            if status >= 400:
                failed.append(f"{path.relative_to(source)}: {status} {answer.decode(errors='replace')[:200]}")
                continue
            out = output_dir / (str(path.relative_to(source)) + ".out")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(answer)
    if failed:
        raise JobFailed(f"{len(failed)} of {len(files)} files failed: " + "; ".join(failed[:3]))
    return 0
