"""The Flask app from its factory, in-process, for what is slow or awkward to provoke over a real server."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from serve.app import create_app
from serve.model import Transcriber
from serve.settings import Settings


@pytest.fixture(scope="module")
def transcriber(tiny_model_dir):
    return Transcriber(tiny_model_dir, device=torch.device("cpu"), dtype=torch.float32)


def _wav(seconds: float = 1.0) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    sf.write(buf, (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


def test_transcript_that_misses_the_timeout_is_503(transcriber):
    # The batching window (3 s) outlasts the request timeout (1 s): the request gives up and says why.
    settings = Settings.from_env({"MODEL_SERVER_TIMEOUT": "1", "SERVE_MAX_BATCH_SIZE": "8",
                                  "SERVE_MAX_BATCH_WAIT_MS": "3000"})
    client = create_app(settings, model=transcriber).test_client()
    reply = client.post("/invocations", data=_wav(), content_type="audio/wav")
    assert reply.status_code == 503
    assert "MODEL_SERVER_TIMEOUT" in reply.get_json()["error"]


def test_factory_with_a_model_answers(transcriber):
    client = create_app(Settings.from_env({}), model=transcriber).test_client()
    assert client.get("/ping").status_code == 200
    reply = client.post("/invocations?timestamps=true", data=_wav(), content_type="audio/x-wav")
    assert reply.status_code == 200
    body = reply.get_json()
    assert list(body) == ["text", "audio_seconds", "words"]
    assert client.get("/execution-parameters").get_json()["MaxPayloadInMB"] == 6
