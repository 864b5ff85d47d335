"""Both images built from a local Debian base and run the way SageMaker runs them: the training container on
a tiny synthetic set writes a model directory, the serving container loads it and transcribes, SIGTERM stops
it in time, and no layer keeps the build's CA secret."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, free_port
from image_fixtures import Images, docker_run, image_size_mb, images, torch_in  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

HYPERPARAMETERS = {  # a handful of steps: this checks the container contract, not learning
    "max_steps": "3", "train_batch_size": "4", "eval_batch_size": "4", "learning_rate": "5e-4",
    "logging_steps": "1", "save_steps": "100", "warmup_steps": "1",
    "lm_tuning_seconds": "10",  # the LM step (lm_order's default) runs with the image's KenLM tools, bounded
}


def report(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n[images] {line}", end="")


def http(url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30):
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for_ping(images: Images, container: str, port: int, limit_s: float = 180) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        try:
            if http(f"http://127.0.0.1:{port}/ping", timeout=2)[0] == 200:
                return time.monotonic() - start
        except OSError:
            pass
        state = docker_run(images, "inspect", "-f", "{{.State.Running}}", container, check=False).stdout.strip()
        if state != "true":
            logs = docker_run(images, "logs", container, check=False)
            pytest.fail(f"serving container exited before /ping answered:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"/ping did not answer 200 within {limit_s} s")


def start_server(images: Images, model_dir: Path, *args: str, env: dict | None = None,
                 container_port: int = 8080, run_args: tuple[str, ...] = ()) -> tuple[str, int]:
    port = free_port()
    env_args = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
    cid = docker_run(images, "run", "-d", "--rm", *run_args, *env_args, "-p", f"127.0.0.1:{port}:{container_port}",
                     "-v", f"{model_dir}:/opt/ml/model:ro", images.serve, *args).stdout.strip()
    return cid, port


@pytest.fixture(scope="module")
def trained(images, synthetic_data, tmp_path_factory) -> Path:
    """/opt/ml after `docker run -v OPT_ML:/opt/ml TRAIN_IMAGE train`, with the tiny config as the model channel."""
    opt_ml = tmp_path_factory.mktemp("opt_ml")
    data = opt_ml / "input" / "data"
    shutil.copytree(synthetic_data / "train", data / "train")
    shutil.copytree(synthetic_data / "test", data / "test")
    (data / "model").mkdir()
    shutil.copy(ROOT / "local_test" / "tiny_model" / "config.json", data / "model" / "config.json")
    (opt_ml / "input" / "config").mkdir(parents=True)
    (opt_ml / "input" / "config" / "hyperparameters.json").write_text(json.dumps(HYPERPARAMETERS))
    start = time.monotonic()
    proc = docker_run(images, "run", "--rm", "-v", f"{opt_ml}:/opt/ml", images.train, "train", check=False)
    seconds = time.monotonic() - start
    failure = opt_ml / "output" / "failure"
    assert proc.returncode == 0, (f"training container failed ({proc.returncode}): "
                                  f"{failure.read_text() if failure.exists() else ''}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    (opt_ml / "seconds").write_text(f"{seconds:.0f}")
    return opt_ml


def test_image_contract(images):
    """Entrypoints in exec form (so `docker run IMAGE` and `docker run IMAGE train|serve` both work and signals
    reach the program), the bind-to-port label, nothing under /opt/ml."""
    for image, program in ((images.train, "train"), (images.serve, "serve")):
        cfg = json.loads(docker_run(images, "image", "inspect", "-f", "{{json .Config}}", image).stdout)
        assert cfg["Entrypoint"] == [program] and not cfg["Cmd"], cfg
        where = docker_run(images, "run", "--rm", "--entrypoint", "sh", image, "-c",
                           f"command -v {program}; ls -A /opt/ml 2>/dev/null | wc -l").stdout.split()
        assert where[0].endswith(f"/{program}") and where[1] == "0", where
    serve_cfg = json.loads(docker_run(images, "image", "inspect", "-f", "{{json .Config}}", images.serve).stdout)
    assert serve_cfg["Labels"]["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    # SageMaker opens the WebSocket of InvokeEndpointWithBidirectionalStream only to images that declare it.
    assert serve_cfg["Labels"]["com.amazonaws.sagemaker.capabilities.bidirectional-streaming"] == "true"
    probe = "from serve.streamaudio import opus_available; print(opus_available())"  # libopus0 for Ogg/Opus streams
    assert docker_run(images, "run", "--rm", "--entrypoint", "python3", images.serve, "-c", probe).stdout.strip() == "True"
    # The serving image carries no training-only dependency.
    probe = "import importlib.util as u; print([m for m in ('datasets', 'accelerate', 'jiwer', 'matplotlib') if u.find_spec(m)])"
    assert docker_run(images, "run", "--rm", "--entrypoint", "python3", images.serve, "-c", probe).stdout.strip() == "[]"


def test_train_then_serve(images, trained, synthetic_data, capsys):
    model = trained / "model"
    assert (model / "config.json").is_file() and list(model.glob("*.safetensors")), sorted(p.name for p in model.iterdir())
    assert (trained / "output" / "data" / "metrics.json").is_file()
    assert (model / "language_model" / "attrs.json").is_file() and (model / "alphabet.json").is_file()

    cid, port = start_server(images, model, "serve")
    try:
        ping_s = wait_for_ping(images, cid, port)
        clip = sorted((synthetic_data / "test" / "audio").glob("*.wav"))[0]
        status, body = http(f"http://127.0.0.1:{port}/invocations", clip.read_bytes(), {"Content-Type": "audio/wav"})
        assert status == 200, body
        answer = json.loads(body)
        assert isinstance(answer["text"], str), answer
        status, body = http(f"http://127.0.0.1:{port}/invocations", b"not audio", {"Content-Type": "audio/wav"})
        assert 400 <= status < 500, (status, body)
        report(capsys, f"training container: {HYPERPARAMETERS['max_steps']} steps in {(trained / 'seconds').read_text()} s; "
                       f"serving container: /ping after {ping_s:.1f} s, /invocations -> {answer!r}")

        # SageMaker stops an endpoint container with SIGTERM and kills it 30 s later.
        start = time.monotonic()
        docker_run(images, "kill", "--signal", "TERM", cid)
        code = docker_run(images, "wait", cid, timeout=60).stdout.strip()
        elapsed = time.monotonic() - start
        assert elapsed < 30, f"serving container took {elapsed:.1f} s to stop after SIGTERM"
        report(capsys, f"serving container stopped {elapsed:.1f} s after SIGTERM (exit {code})")
    finally:
        docker_run(images, "rm", "-f", cid, check=False)


def test_serve_without_command_on_bind_to_port_as_non_root(images, trained, tmp_path):
    """`docker run IMAGE` (no command) serves, on SAGEMAKER_BIND_TO_PORT when it is set; the image's unprivileged
    user serves a world-readable model."""
    model = shutil.copytree(trained / "model", tmp_path / "model")
    for p in [model, *model.rglob("*")]:  # language_model/ is a folder: it needs its x bit
        p.chmod(0o755 if p.is_dir() else 0o644)
    cid, port = start_server(images, model, env={"SAGEMAKER_BIND_TO_PORT": "9090"}, container_port=9090,
                             run_args=("--user", "model-server"))
    try:
        wait_for_ping(images, cid, port)
        assert docker_run(images, "exec", cid, "id", "-un").stdout.strip() == "model-server"
    finally:
        docker_run(images, "rm", "-f", cid, check=False)


def test_no_ca_secret_in_images(images):
    """The CA bundle given as a BuildKit secret is in no layer and in no history entry."""
    assert images.marker_line
    for image in (images.train, images.serve):
        history = docker_run(images, "history", "--no-trunc", image).stdout
        assert "BEGIN CERTIFICATE" not in history and str(images.ca_bundle) not in history
        save = subprocess.Popen([images.docker, "save", image], stdout=subprocess.PIPE)
        hits = subprocess.run(["grep", "-c", "-F", images.marker_line], stdin=save.stdout, capture_output=True,
                              text=True)
        save.stdout.close()
        assert save.wait() == 0
        assert hits.stdout.strip() == "0", f"{image} contains the CA secret"


def test_report_sizes(images, capsys):
    report(capsys, f"both built in {images.build_seconds:.0f} s (with whatever layers were cached) for {images.torch_requirement}")
    for image in (images.train, images.serve):
        report(capsys, f"{image}: {image_size_mb(images.docker, image)} MB uncompressed, {torch_in(images.docker, image)}")
