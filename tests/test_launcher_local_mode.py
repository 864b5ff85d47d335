"""The launcher against the real images in the SageMaker SDK's local mode (local_test/sdk_local_mode.py):
2-instance distributed training -> one model.tar.gz -> local endpoint (/ping, invoke) -> batch transform
-> no container left running. Uses the images test_images.py builds (image_fixtures.images: skipped without a
Docker engine, failed under CI=true) and installs docker compose when missing. About 3 minutes on 2 CPU cores."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import LAUNCH_PYTHON, ROOT, program_env
from image_fixtures import Images, images  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def ensure_compose() -> None:
    compose = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if "v2" in compose.stdout or shutil.which("docker-compose"):
        return
    r = subprocess.run([str(ROOT / "local_test" / "ensure_compose.sh")], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"docker compose is missing and local_test/ensure_compose.sh failed: {r.stderr[-1000:]}",
                    pytrace=False)


def _containers() -> set[str]:
    out = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
    return set(out.split())


def test_sdk_local_mode_train_two_hosts_deploy_invoke_transform(images: Images, tmp_path):
    ensure_compose()
    r = subprocess.run([LAUNCH_PYTHON, str(ROOT / "local_test" / "sdk_local_mode.py"), "--work", str(tmp_path),
                        "--train-image", images.train, "--serve-image", images.serve],
                       capture_output=True, text=True, env=program_env(), timeout=1500)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-8000:]
    assert "torchrun node ranks started: ['0', '1']" in out
    assert "one model artifact" in out
    assert "transform: 4 transcripts for 4 clips" in out
    assert "no local-mode container left running" in out


def test_local_training_failure_reports_the_failure_reason(images: Images, tmp_path):
    ensure_compose()
    channel = tmp_path / "train"
    channel.mkdir()
    (channel / "notes.txt").write_text("no audio here")
    before = _containers()
    try:
        r = subprocess.run([str(ROOT / "launcher" / "launch"), "train", "--local", "--image", images.train,
                            "--channel", f"train={channel}", "--output-path", str(tmp_path / "out")],
                           capture_output=True, text=True, env=program_env(), timeout=600)
    finally:  # the SDK leaves the exited training container behind
        stale = _containers() - before
        if stale:
            subprocess.run(["docker", "rm", "-f", *sorted(stale)], capture_output=True)
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("launch train: error: training job") and "holds no recognised data" in last, last
