"""The launcher against the real images in the SageMaker SDK's local mode (local_test/sdk_local_mode.py):
2-instance distributed training -> one model.tar.gz -> local endpoint (/ping, invoke) -> batch transform
-> no container left running. Needs Docker, docker compose and both images; skipped, saying why, without them.
About 3 minutes on 2 CPU cores."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, program_env

IMAGES = ("wav2vec2-train:latest", "wav2vec2-serve:latest")


def _missing() -> str | None:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        return "no running Docker engine"
    compose = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if "v2" not in compose.stdout and shutil.which("docker-compose") is None:
        return "docker compose missing: run local_test/ensure_compose.sh"
    for image in IMAGES:
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
            return f"image {image} not built"
    return None


@pytest.mark.slow
def test_sdk_local_mode_train_two_hosts_deploy_invoke_transform(tmp_path):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    r = subprocess.run([sys.executable, str(ROOT / "local_test" / "sdk_local_mode.py"), "--work", str(tmp_path)],
                       capture_output=True, text=True, env=program_env(), timeout=1500)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "torchrun node ranks started: ['0', '1']" in out
    assert "one model artifact" in out
    assert "transform: 4 transcripts for 4 clips" in out
    assert "no local-mode container left running" in out
