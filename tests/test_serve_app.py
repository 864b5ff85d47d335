"""The HTTP layer from its factory, in-process, around a fake model (tests/fake_models.py): routes, request
shapes, options, and how the contract's errors (timeouts, model failures, unknown languages) become HTTP
answers."""
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
from fake_models import FakeModel
from serve import contract, options
from serve.app import create_app
from serve.settings import Settings

RATE = 16_000


def app_for(model, **env):
    return create_app(model, Settings.from_env(env)).test_client()


def wav(samples: np.ndarray, rate: int = RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


TONE = (0.1 * np.sin(np.arange(RATE) / 8)).astype(np.float32)


def test_importing_the_app_does_not_import_torch():
    code = ("import sys, serve.app, serve.options, serve.contract, serve.stream_route, serve.errors; "
            "assert 'torch' not in sys.modules, 'torch'; print('ok')")
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
    # The same app, while its transcription is still in flight: a /ping that waited for it would fail here.
    assert client.get("/ping").status_code == 200
    assert time.monotonic() - ping_started < 0.5
    assert thread.is_alive(), "the slow transcription ended before /ping was measured"
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
    ("", "beam=4", "unknown option beam: "),
    ("?speed=2", "", "unknown option speed: "),
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



# Content types, Accept, JSON lines, execution parameters (issue 28 items 4, 10, 13; issue 24 item 8) ---------
from common import mediatypes  # noqa: E402
from serve import bodies  # noqa: E402

_REPR = __import__("re").compile(r"object at 0x[0-9a-fA-F]+|<[\w.]+ object")


def _encoded(fmt: str, subtype: str | None = None, rate: int = RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, TONE, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize("ctype,fmt,subtype", [
    ("audio/opus", "OGG", "OPUS"), ("audio/aiff", "AIFF", "PCM_16"), ("audio/x-aiff", "AIFF", "PCM_16"),
    ("audio/basic", "AU", "PCM_16"),
])
def test_opus_aiff_and_au_are_accepted_under_their_own_types(ctype, fmt, subtype):
    rate = 48_000 if subtype == "OPUS" else RATE
    reply = app_for(FakeModel()).post("/invocations", data=_encoded(fmt, subtype, rate), content_type=ctype)
    assert reply.status_code == 200, reply.get_json()


def test_the_launcher_sends_only_types_the_server_accepts():
    import mimetypes

    from launcher import hosting

    assert hosting.CONTENT_TYPES is mediatypes.BY_SUFFIX
    assert set(mediatypes.BY_SUFFIX.values()) <= set(bodies.DECODERS)
    assert set(bodies.DECODERS) == set(mediatypes.ACCEPTED)
    for name in ("a.aiff", "a.aif", "a.au", "a.opus", "a.wav", "a.flac", "a.mp3", "a.ogg"):
        assert mediatypes.BY_SUFFIX[name[name.index("."):]] in bodies.DECODERS, name
        guessed = mimetypes.guess_type(name)[0]  # what the launcher sent before it had the table
        assert guessed is None or guessed in bodies.DECODERS, (name, guessed)


def test_the_media_type_table_imports_nothing_heavy():
    code = "import sys, common.mediatypes; bad = {'numpy', 'torch', 'soundfile'} & set(sys.modules); print(bad or 'ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stdout + out.stderr


@pytest.mark.parametrize("ctype", ["audio/wav", "audio/flac", "application/octet-stream", "audio/opus"])
def test_undecodable_audio_error_names_no_python_object(ctype):
    reply = app_for(FakeModel()).post("/invocations", data=b"this is not audio at all " * 40, content_type=ctype)
    assert reply.status_code == 400
    message = reply.get_json()["error"]
    assert "cannot decode" in message and not _REPR.search(message), message


@pytest.mark.parametrize("accept,want", [
    ("text/plain; charset=utf-8", "text/plain"), ("text/plain;charset=UTF-8;q=0.9", "text/plain"),
    ("application/json;q=0.5, text/plain", "text/plain"), ("text/plain;q=0.2, application/json", "application/json"),
    ("text/*", "text/plain"), ("*/*", "application/json"), (None, "application/json"),
    ("application/json; charset=utf-8", "application/json"),  # image/png: 406 (tests/test_serve_openai.py)
    ("text/plain;q=0, */*", "application/json"),
])
def test_accept_parameters_do_not_change_the_match_and_q_values_count(accept, want):
    headers = {"Accept": accept} if accept else {}
    reply = app_for(FakeModel()).post("/invocations", data=wav(TONE), content_type="audio/wav", headers=headers)
    assert reply.status_code == 200
    assert reply.mimetype == want, (accept, reply.mimetype)
    if want == "text/plain":
        assert reply.get_data(as_text=True) == "16000 samples eng"


def _line(n: int, **extra) -> str:
    return json.dumps({"speech_array": [0.1] * n, "sampling_rate": RATE, **extra})


def test_json_lines_get_one_answer_line_per_input_line_in_order():
    body = "\n".join([_line(1600), _line(3200, language="fra"), "", _line(800)]) + "\n"
    reply = app_for(FakeModel()).post("/invocations", data=body, content_type="application/jsonlines")
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert reply.mimetype == "application/jsonlines"
    lines = reply.get_data(as_text=True).splitlines()
    assert [json.loads(x)["text"] for x in lines] == ["1600 samples eng", "3200 samples fra", "800 samples eng"]


@pytest.mark.parametrize("bad,says", [
    ('{"speech_array": [0.1], ', "line 3: not valid JSON"),
    ('[1, 2]', "line 3: expected an object"),
    ('{"speech_array": [0.1, 0.2]}', 'line 3: missing "sampling_rate"'),
])
def test_a_bad_json_line_fails_the_request_naming_its_line(bad, says):
    body = "\n".join([_line(1600), _line(800), bad, _line(800)])
    reply = app_for(FakeModel()).post("/invocations", data=body, content_type="application/jsonlines")
    assert reply.status_code == 400
    assert reply.get_json()["error"].startswith(says), reply.get_json()


@pytest.mark.parametrize("mb,reported", [("6", 6), ("6.5", 6), ("1024", 100), ("100", 100), ("0.5", 1)])
def test_execution_parameters_report_what_create_transform_job_takes(mb, reported):
    got = app_for(FakeModel(), SAGEMAKER_MAX_PAYLOAD_IN_MB=mb).get("/execution-parameters").get_json()
    assert got["MaxPayloadInMB"] == reported and isinstance(got["MaxPayloadInMB"], int)


def test_a_sub_megabyte_payload_cap_is_refused_in_batch_transform():
    from serve.settings import SettingsError

    with pytest.raises(SettingsError, match="SAGEMAKER_MAX_PAYLOAD_IN_MB must be at least 1"):
        Settings.from_env({"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "0.5"})


def test_a_decompression_bomb_is_a_413_naming_the_setting(bomb_flac):
    reply = app_for(FakeModel()).post("/invocations", data=bomb_flac, content_type="audio/flac")
    assert reply.status_code == 413
    message = reply.get_json()["error"]
    assert "declares 60.0 s of 8 channels at 384000 Hz" in message and "SERVE_MAX_DECODED_MB" in message, message
    # Raised, it is accepted (and decoded channel block by channel block).
    ok = app_for(FakeModel(), SERVE_MAX_DECODED_MB="800").post("/invocations", data=bomb_flac,
                                                             content_type="audio/flac")
    assert ok.status_code == 200 and ok.get_json()["audio_seconds"] == 60.0


# One Clip, one error hierarchy, the response stream (issue 24 items 1 and 4) -------------------------------------
def test_bodies_give_the_contract_s_clips_with_each_item_s_options_over_the_request_s():
    doc = [{"speech_array": [0.1] * 400, "sampling_rate": RATE, "language": "fra"},
           {"speech_array": [0.1] * 800, "sampling_rate": RATE}]
    clips, is_batch = bodies.decode("application/json", json.dumps(doc).encode(),
                                    request_options={"timestamps": True, "language": "eng"})
    assert is_batch and all(type(c) is contract.Clip for c in clips)
    assert [c.options for c in clips] == [options.Options(timestamps=True, language="fra"),
                                          options.Options(timestamps=True, language="eng")]
    assert [len(c.audio) for c in clips] == [400, 800]
    (clip,), is_batch = bodies.decode("audio/wav", wav(TONE))
    assert not is_batch and clip.options == options.Options() and len(clip.audio) == RATE


@pytest.mark.parametrize("ctype,body,status", [
    ("text/plain", b"hello", 415), ("audio/wav", b"", 400), ("application/json", b"{", 400),
])
def test_body_refusals_are_the_contract_s_errors(ctype, body, status):
    with pytest.raises(contract.ServingError) as caught:
        bodies.decode(ctype, body)
    assert caught.value.status == status


def test_a_refused_json_option_field_counts_as_a_decode_failure():
    from serve import metrics

    def count():
        return metrics.REGISTRY.get_sample_value("serve_decode_failures_total", {"reason": "invalid_json_body"}) or 0
    before = count()
    item = {"speech_array": [0.1] * 100, "sampling_rate": RATE, "timestamps": "yes"}
    reply = app_for(FakeModel()).post("/invocations", data=json.dumps(item), content_type="application/json")
    assert reply.status_code == 400 and count() == before + 1


def test_another_error_shape_is_one_handler_over_the_same_classes():
    """What an OpenAI-style route does: errors.register on its blueprint with its own shape; statuses and
    messages are the hierarchy's, the timeout message the route's own."""
    from flask import Blueprint, Flask

    from serve import errors

    def openai(message, status, exc):
        return {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                          "param": getattr(exc, "param", None), "code": None}}

    raised = {"language": contract.UnknownLanguage("deu", ["eng"]), "slow": contract.Timeout("late"),
              "big": contract.PayloadTooLarge("audio is 2000 s long"), "bug": RuntimeError("CUDA error")}
    app = Flask("t")
    v1 = Blueprint("v1", "t", url_prefix="/v1")

    @v1.post("/<name>")
    def fail(name):
        raise raised[name]

    errors.register(v1, timeout_message="not done within 3 s (MODEL_SERVER_TIMEOUT)", shape=openai)
    app.register_blueprint(v1)

    @app.post("/<name>")
    def plain(name):
        raise raised[name]

    errors.register(app)
    client = app.test_client()
    got = {name: client.post(f"/v1/{name}") for name in raised}
    assert {n: r.status_code for n, r in got.items()} == {"language": 400, "slow": 503, "big": 413, "bug": 500}
    assert got["language"].get_json() == {"error": {
        "message": "unknown language 'deu'; this model has adapters for: eng", "type": "invalid_request_error",
        "param": None, "code": None}}
    assert got["slow"].get_json()["error"]["message"] == "not done within 3 s (MODEL_SERVER_TIMEOUT)"
    assert got["bug"].get_json()["error"]["message"] == "internal server error (see the server log)"
    assert client.post("/language").get_json() == {"error": "unknown language 'deu'; this model has adapters for: eng"}
    assert client.post("/slow").get_json() == {"error": "late"}


def test_the_response_stream_writes_the_model_s_segments_as_json_lines():
    audio = np.zeros(int(2.5 * RATE), np.float32)
    reply = app_for(FakeModel()).post("/invocations-response-stream?timestamps=true", data=wav(audio),
                                      content_type="audio/wav")
    assert reply.status_code == 200 and reply.mimetype == "application/jsonlines"
    lines = [json.loads(line) for line in reply.get_data(as_text=True).splitlines()]
    assert lines == [
        {"index": 0, "start": 0.0, "end": 1.0, "text": "16000 samples",
         "words": [{"word": "x", "start": 0.0, "end": 1.0}], "last": False},
        {"index": 1, "start": 1.0, "end": 2.0, "text": "16000 samples",
         "words": [{"word": "x", "start": 1.0, "end": 2.0}], "last": False},
        {"index": 2, "start": 2.0, "end": 2.5, "text": "8000 samples",
         "words": [{"word": "x", "start": 2.0, "end": 2.5}], "last": True},
    ]
    failed = app_for(FakeModel(fail=contract.ModelFailure("the model failed on this audio"))).post(
        "/invocations-response-stream", data=wav(audio), content_type="audio/wav")
    assert failed.status_code == 500 and failed.get_json() == {"error": "the model failed on this audio"}
