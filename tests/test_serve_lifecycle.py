"""The serving program as a process: command line, worker start-up and GPU pinning, SIGTERM drain."""
from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import free_port, program_env
from serve.settings import Settings
from serve_helpers import SERVE, Server, encode, make_opt_ml


def run_serve(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SERVE), *args], env=program_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def test_help_lists_every_setting():
    out = run_serve("--help")
    assert out.returncode == 0
    for f in dataclasses.fields(Settings):
        for name in f.metadata["env"]:
            assert name in out.stdout


def test_rejects_unknown_arguments(tmp_path):
    out = run_serve("train", OPT_ML=str(tmp_path))
    assert out.returncode == 2
    assert "usage: serve" in out.stderr and "'train'" in out.stderr


def test_missing_model_says_where_it_looked(tmp_path):
    out = run_serve("serve", OPT_ML=str(tmp_path))
    assert out.returncode == 2
    assert str(tmp_path / "model") in out.stderr and "OPT_ML" in out.stderr


def test_bad_setting_is_named(tmp_path):
    out = run_serve("serve", OPT_ML=str(tmp_path), SERVE_MAX_BATCH_SIZE="many")
    assert out.returncode == 2
    assert "SERVE_MAX_BATCH_SIZE='many'" in out.stderr


def test_worker_that_cannot_load_the_model_stops_the_server(tmp_path, tiny_model_dir):
    opt_ml = make_opt_ml(tmp_path / "opt_ml", tiny_model_dir)
    (opt_ml / "model" / "model.safetensors").unlink()
    out = run_serve("serve", timeout=120, OPT_ML=str(opt_ml), SAGEMAKER_BIND_TO_PORT=str(free_port()),
                    MODEL_SERVER_WORKERS="1")
    assert out.returncode != 0
    assert "model.safetensors" in out.stdout + out.stderr


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, tiny_model_dir):
    """Two workers on a host that claims GPUs 7 and 9 (CPU torch: they fall back to the CPU), and a long
    batching window so a request stays in flight long enough to send SIGTERM during it."""
    root = tmp_path_factory.mktemp("lifecycle")
    opt_ml = make_opt_ml(root / "opt_ml", tiny_model_dir)
    srv = Server(opt_ml, root / "server.log", CUDA_VISIBLE_DEVICES="7,9", SERVE_MAX_BATCH_SIZE="8",
                 SERVE_MAX_BATCH_WAIT_MS="2500",
                 SERVE_THREADS="4").wait_ready()
    # Both workers must be up (the first one answers /ping before the second has loaded).
    deadline = time.monotonic() + 60
    while srv.log().count("model loaded") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    yield srv
    srv.stop()


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_one_worker_per_gpu_each_pinned_and_master_without_torch(two_workers):
    log = two_workers.log()
    assert "loading the model (GPU 7)" in log and "loading the model (GPU 9)" in log, log
    assert two_workers.get("/execution-parameters").json["MaxConcurrentTransforms"] == 2 * 4
    master = two_workers.proc.pid
    workers = _children(master)
    assert len(workers) == 2
    # torch (and so CUDA) is only ever loaded in the workers, after the fork.
    assert "libtorch" not in _maps(master)
    assert all("libtorch" in _maps(w) for w in workers)


def test_sigterm_drains_in_flight_requests(two_workers, synthetic_data):
    import soundfile as sf

    audio, rate = sf.read(sorted((synthetic_data / "test" / "audio").glob("*.wav"))[0], dtype="float32")
    body = encode(audio, rate)
    result = {}

    def in_flight():
        result["reply"] = two_workers.post(body, "audio/wav")

    t = threading.Thread(target=in_flight)
    started = time.monotonic()
    t.start()
    time.sleep(0.8)  # the request now waits in its worker's 2.5 s batching window
    assert t.is_alive()
    two_workers.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    t.join(30)
    reply = result["reply"]
    assert reply.status == 200, reply.body
    assert json.loads(reply.body)["text"]
    assert time.monotonic() - started >= 2.5
    assert two_workers.proc.wait(30) == 0
    assert time.monotonic() - signalled < 30
    with pytest.raises(OSError):
        two_workers.get("/ping", timeout=2)
