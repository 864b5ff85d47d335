"""The HTTP layer from its factory, in-process, around a fake model: routes, request shapes, options, and
how the contract's errors (timeouts, model failures, unknown languages) become HTTP answers."""
from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT
from serve import contract, options
from serve.app import create_app
from serve.settings import Settings

RATE = 16_000


class FakeModel:
    """The contract in a few lines: transcribes a clip as its length, records what it was given."""
    info = contract.ModelInfo("FakeForCTC", languages=("eng", "fra"), default_language="eng")

    def __init__(self, delay_s: float = 0.0, fail: Exception | None = None):
        self.delay_s, self.fail, self.healthy, self.seen = delay_s, fail, True, []

    def health(self):
        return contract.Health(self.healthy, "fake model is down")

    def transcribe(self, clips, *, deadline):
        self.seen.append(clips)
        if self.fail is not None:
            raise self.fail
        time.sleep(min(self.delay_s, max(0.0, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            raise contract.Timeout("not ready by the deadline")
        for c in clips:
            if c.options.language not in (None, *self.info.languages):
                raise contract.UnknownLanguage(c.options.language, self.info.languages)
        return [contract.Transcript(f"{len(c.audio)} samples {c.options.language or 'eng'}",
                                    round(len(c.audio) / RATE, 3),
                                    [contract.Word("x", 0.0, 0.02)] if c.options.timestamps else None, batch_size=2)
                for c in clips]

    def transcribe_iter(self, clip, *, deadline):
        yield from ()


def app_for(model, **env):
    return create_app(model, Settings.from_env(env)).test_client()


def wav(samples: np.ndarray, rate: int = RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


TONE = (0.1 * np.sin(np.arange(RATE) / 8)).astype(np.float32)


def test_importing_the_app_does_not_import_torch():
    code = "import sys, serve.app, serve.options, serve.contract; assert 'torch' not in sys.modules, 'torch'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_routes_answer_from_the_model():
    fake = FakeModel()
    client = app_for(fake)
    assert client.get("/ping").status_code == 200
    reply = client.post("/invocations?timestamps=true", data=wav(TONE), content_type="audio/wav")
    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json() == {"text": "16000 samples eng", "audio_seconds": 1.0,
                                "words": [{"word": "x", "start": 0.0, "end": 0.02}]}
    assert reply.headers["X-Batch-Size"] == "2"
    fake.healthy = False
    down = client.get("/ping")
    assert down.status_code == 503 and down.get_json() == {"error": "fake model is down"}


def test_a_slow_model_is_a_503_naming_the_timeout_and_ping_stays_fast():
    fake = FakeModel(delay_s=5)
    client = app_for(fake, MODEL_SERVER_TIMEOUT="1")
    got = {}
    thread = threading.Thread(target=lambda: got.update(r=client.post("/invocations", data=wav(TONE),
                                                                     content_type="audio/wav")))
    started = time.monotonic()
    thread.start()
    time.sleep(0.2)
    ping_started = time.monotonic()
    assert app_for(fake).get("/ping").status_code == 200
    assert time.monotonic() - ping_started < 0.5
    thread.join(10)
    assert got["r"].status_code == 503
    assert "MODEL_SERVER_TIMEOUT" in got["r"].get_json()["error"]
    assert 0.9 < time.monotonic() - started < 3


@pytest.mark.parametrize("error,status,says", [
    (contract.ModelFailure("the model failed on this audio"), 500, "the model failed"),
    (contract.Unavailable("forward-pass thread stopped"), 503, "thread stopped"),
    (contract.BadRequest("option beam_width=0 is out of range"), 400, "beam_width"),
    (RuntimeError("CUDA error: an illegal memory access"), 500, "internal server error"),
])
def test_model_errors_become_statuses_at_the_edge(error, status, says):
    reply = app_for(FakeModel(fail=error)).post("/invocations", data=wav(TONE), content_type="audio/wav")
    assert reply.status_code == status
    assert says in reply.get_json()["error"]
    assert "CUDA" not in reply.get_json()["error"]  # internals stay in the log


def test_unknown_language_is_a_400_listing_the_model_s_languages():
    reply = app_for(FakeModel()).post("/invocations?language=deu", data=wav(TONE), content_type="audio/wav")
    assert reply.status_code == 400
    assert "deu" in reply.get_json()["error"] and "eng, fra" in reply.get_json()["error"]


# Options: one table, three channels ---------------------------------------------------------------
HEADER = options.HEADER


def _options_seen(fake, **kw):
    client = app_for(fake)
    reply = client.post("/invocations" + kw.pop("query", ""), data=kw.pop("data", wav(TONE)),
                        content_type=kw.pop("content_type", "audio/wav"), headers=kw.pop("headers", {}))
    return reply, [c.options for c in fake.seen[-1]] if fake.seen else None


@pytest.mark.parametrize("query,header,want", [
    ("", "", options.Options()),
    ("?timestamps=true", "", options.Options(timestamps=True)),
    ("", "timestamps=true", options.Options(timestamps=True)),
    ("", "timestamps=1; language=fra", options.Options(timestamps=True, language="fra")),
    ("", "language=fra&timestamps=yes", options.Options(timestamps=True, language="fra")),
    ("?language=fra", "timestamps=true", options.Options(timestamps=True, language="fra")),
    ("?timestamps=true", "timestamps=true", options.Options(timestamps=True)),
    ("", "language=%66ra", options.Options(language="fra")),  # percent-encoded
])
def test_custom_attributes_and_query_string_carry_the_same_options(query, header, want):
    reply, seen = _options_seen(FakeModel(), query=query, headers={HEADER: header} if header else {})
    assert reply.status_code == 200, reply.get_json()
    assert seen == [want]


@pytest.mark.parametrize("query,header,says", [
    ("?timestamps=maybe", "", "timestamps='maybe'"),
    ("", "timestamps=maybe", f"{HEADER}: option timestamps='maybe'"),
    ("", "timestamps", "'timestamps' is not name=value"),
    ("", "timestamps=true,language=fra", "separate pairs with ';'"),
    ("", "beam=4", "unknown option 'beam'"),
    ("?speed=2", "", "unknown option 'speed'"),
    ("", "language=fr a", "language='fr a' is malformed"),
    ("?timestamps=true", "timestamps=false", "given twice"),
    ("?language=eng&language=fra", "", "given twice"),
    ("", "language=%ff", "percent-encoded"),
])
def test_malformed_or_unknown_options_are_a_400_naming_them(query, header, says):
    fake = FakeModel()
    reply, _ = _options_seen(fake, query=query, headers={HEADER: header} if header else {})
    assert reply.status_code == 400
    assert says in reply.get_json()["error"], reply.get_json()
    assert not fake.seen  # refused before the model saw anything


def test_json_item_fields_override_request_options():
    doc = [{"speech_array": TONE.tolist(), "sampling_rate": RATE, "language": "fra"},
           {"speech_array": TONE.tolist(), "sampling_rate": RATE, "timestamps": False}]
    fake = FakeModel()
    reply, seen = _options_seen(fake, data=json.dumps(doc), content_type="application/json",
                                headers={HEADER: "timestamps=true"})
    assert reply.status_code == 200
    assert seen == [options.Options(timestamps=True, language="fra"), options.Options(timestamps=False)]
    assert [r["text"] for r in reply.get_json()] == ["16000 samples fra", "16000 samples eng"]


@pytest.mark.parametrize("item,says", [
    ({"speech_array": [0.1] * 100, "sampling_rate": RATE, "lang": "fra"}, "unknown field 'lang'"),
    ({"speech_array": [0.1] * 100, "sampling_rate": RATE, "language": 3}, '"language" must be a string'),
    ({"speech_array": [0.1] * 100, "sampling_rate": RATE, "timestamps": "yes"}, '"timestamps" must be true or false'),
    ({"audio": base64.b64encode(wav(TONE)).decode(), "sampling_rate": RATE}, '"sampling_rate" goes with'),
])
def test_bad_json_item_fields_are_a_400(item, says):
    reply = app_for(FakeModel()).post("/invocations", data=json.dumps(item), content_type="application/json")
    assert reply.status_code == 400
    assert says in reply.get_json()["error"]


# speech_array shapes ------------------------------------------------------------------------------
def _samples_seen(doc):
    fake = FakeModel()
    reply = app_for(fake).post("/invocations", data=json.dumps(doc), content_type="application/json")
    return reply, (fake.seen[-1][0].audio if fake.seen else None)


def test_speech_array_frames_and_channels_first_mean_the_same_stereo():
    left, right = TONE, np.roll(TONE, 50) * 0.5
    mono = (left + right) / 2
    frames, _ = None, None
    for shape in (np.stack([left, right], axis=1), np.stack([left, right], axis=0)):
        reply, got = _samples_seen({"speech_array": shape.tolist(), "sampling_rate": RATE})
        assert reply.status_code == 200, reply.get_json()
        assert reply.get_json()["audio_seconds"] == 1.0
        np.testing.assert_allclose(got, mono, atol=1e-6)
    reply, got = _samples_seen({"speech_array": [left.tolist()], "sampling_rate": RATE})  # one channel, first
    assert reply.status_code == 200 and len(got) == RATE


@pytest.mark.parametrize("array", [
    [[0.1, 0.2], [0.3, 0.4]],  # square: frames or channels?
    np.zeros((9, 12)).tolist(),  # more than 8 on both sides
    [[[0.1]]],  # 3-D
])
def test_ambiguous_speech_array_shapes_are_a_400_saying_what_is_accepted(array):
    reply, _ = _samples_seen({"speech_array": array, "sampling_rate": RATE})
    assert reply.status_code == 400
    error = reply.get_json()["error"]
    assert "frames x channels" in error and "channels x frames" in error, error
