"""The asynchronous path for real: local_test/async_local.py runs the serving image as an async endpoint that
`launcher/launch deploy --async --autoscale 0:2` created (moto standing in for AWS, AsyncRuntime for SageMaker's
queue), sends a four-minute recording (over real-time's 6 MB) through `invoke --async` with the one-hour
invocation timeout, compares the transcript with the container's direct answer, checks that a file that is not
audio comes back as the failure object, and that `delete` (twice) leaves nothing. Uses the images
test_images.py builds (image_fixtures.images) and the session's synthetic speech and tiny model; 4.6 minutes
once they exist on this project's shared 2-core machine at load 12 (most of it transcribing the 4 minutes twice:
through the queue and directly, for the comparison)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import LAUNCH_PYTHON, ROOT, program_env
from image_fixtures import Images, images  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def test_async_endpoint_transcribes_minutes_of_audio_through_s3(images: Images, tiny_model_dir, synthetic_data,
                                                               tmp_path):
    r = subprocess.run([LAUNCH_PYTHON, str(ROOT / "local_test" / "async_local.py"), "--serve-image", images.serve,
                        "--model-dir", str(tiny_model_dir), "--work", str(tmp_path), "--minutes", "4",
                        "--clips", str(synthetic_data / "train" / "audio"), "--docker", images.docker],
                       capture_output=True, text=True, env=program_env(), timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    seconds, mb = map(float, re.search(r"recording \S+: (\d+) s, ([\d.]+) MB", out).groups())
    assert seconds >= 240 and mb > 6  # more than a real-time endpoint takes
    assert "transcript equals the container's direct answer" in out
    assert "InvocationTimeoutSeconds 3600" in out
    assert "came back as the failure object" in out
    assert "delete removed everything deploy created" in out
