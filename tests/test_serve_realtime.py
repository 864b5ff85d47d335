"""OpenAI Realtime transcription events (serve/realtime.py), G.711 stream audio (serve/streamaudio.py), the
streaming VAD (serve/streamvad.py): the adapter against a fake LiveStream, then a real WebSocket client (and
the `openai` package's own realtime client) against the live server with the tiny model. One server for the
module (the SIGTERM test, last, stops it)."""
from __future__ import annotations

import base64
import json
import queue
import shutil
import signal
import subprocess
import threading
import time
import types

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from common.audio import load_file
from serve import contract, realtime, streamaudio, streamvad
from serve_helpers import Server, encode, make_opt_ml

RATE = 16_000


# The adapter against a fake LiveStream ---------------------------------------------------------------------------
class FakeStream:
    """A LiveStream whose advance returns what the test queued; it records what the adapter asked."""

    def __init__(self):
        self.pushed = 0
        self.turns = []
        self.queued: list[list] = []
        self.calls = []
        self.behind_s = 0.0
        self.audio_seconds = self.utterances = self.windows = self.max_batch = 0

    def push(self, samples):
        self.pushed += len(samples)

    def advance(self, deadline):
        return self.queued.pop(0) if self.queued else []

    def set_turn_detection(self, mode, **kw):
        self.turns.append((mode, kw))

    def commit(self, deadline):
        self.calls.append("commit")
        return [final(len(self.calls) - 1, "committed words")]

    def clear(self, deadline):
        self.calls.append("clear")
        return []

    def finish(self, deadline):
        self.calls.append("finish")
        return [final(9, "the last words", last=True)]


def final(utterance, text, last=False):
    words = tuple(contract.Word(w, round(0.1 * i, 3), round(0.1 * i + 0.05, 3)) for i, w in enumerate(text.split()))
    return contract.Final(utterance=utterance, text=text, start=0.0, end=1.0, last=last, words=words,
                          audio_start=0.0, audio_end=1.0, confidences=tuple(0.9 for _ in words))


def partial(utterance, stable, text=None):
    return contract.Partial(utterance=utterance, text=text or stable, stable=stable, start=0.0, end=1.0)


class FakeConnection:
    """The websockets server connection as the adapter uses it: recv(timeout), send, close, request."""

    def __init__(self, messages, path="/v1/realtime", on_empty=None):
        self.incoming = list(messages)
        self.sent: list[dict] = []
        self.closed: tuple | None = None
        self.on_empty = on_empty
        self.request = types.SimpleNamespace(path=path, headers={})

    def recv(self, timeout=None):
        if self.closed:
            raise ConnectionClosed(None, None)
        if timeout == 0:
            raise TimeoutError  # messages arrive one at a time: none is waiting
        if self.incoming:
            m = self.incoming.pop(0)
            return json.dumps(m) if isinstance(m, dict) else m
        if self.on_empty is not None:
            action, self.on_empty = self.on_empty, None
            action()
            raise TimeoutError
        raise ConnectionClosed(None, None)  # the client went away

    def send(self, text):
        self.sent.append(json.loads(text))

    def close(self, code=1000, reason=""):
        self.closed = (code, reason)


def settings(**over):
    base = dict(stream_max_session_s=3600.0, stream_idle_timeout_s=60.0, stream_max_frame_bytes=1 << 20,
                stream_silence_s=0.5, stream_vad_threshold=0.5, stream_vad_prefix_padding_s=0.3,
                stream_max_behind_s=30.0, timeout_s=60)
    return types.SimpleNamespace(**{**base, **over})


def session(messages, stream=None, on_empty=None, path="/v1/realtime", **over):
    stream = stream or FakeStream()
    model = types.SimpleNamespace(opened=[], open_stream=lambda options: model.opened.append(options) or stream)
    hub = types.SimpleNamespace(model=model, settings=settings(**over), draining=threading.Event(),
                                streamaudio=streamaudio, timeout_message="too slow")
    conn = FakeConnection(messages, path, on_empty and (lambda: on_empty(hub)))
    realtime.RealtimeSession(hub, conn).run()
    return conn, stream, model


def append(pcm: bytes) -> dict:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}


def ga_update(**input_):
    return {"type": "session.update", "session": {"type": "transcription", "audio": {"input": input_}}}


def types_of(conn):
    return [e["type"] for e in conn.sent]


def errors(conn):
    return [e["error"] for e in conn.sent if e["type"] == "error"]


def test_session_created_then_updated_in_the_shape_the_client_used():
    conn, _, _ = session([ga_update(format={"type": "audio/pcmu"}, turn_detection=None,
                                    transcription={"model": "any", "language": None})])
    assert types_of(conn) == ["session.created", "session.updated"]
    s = conn.sent[1]["session"]
    assert s["type"] == "transcription" and s["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert s["audio"]["input"]["turn_detection"] is None
    assert all(e["event_id"].startswith("event_") for e in conn.sent)
    conn, _, _ = session([{"type": "transcription_session.update",
                           "session": {"input_audio_format": "g711_alaw",
                                       "turn_detection": {"type": "server_vad", "silence_duration_ms": 700}}}])
    assert types_of(conn) == ["session.created", "transcription_session.updated"]
    s = conn.sent[1]["session"]
    assert s["input_audio_format"] == "g711_alaw" and s["turn_detection"]["silence_duration_ms"] == 700


def test_audio_formats_reach_the_stream_at_16_khz_and_turn_detection_is_passed_on():
    tone = (np.sin(np.arange(24_000) / 7) * 8000).astype("<i2").tobytes()  # 1 s at 24 kHz
    conn, stream, model = session([ga_update(turn_detection={"type": "server_vad", "threshold": 0.6,
                                                             "silence_duration_ms": 800}), append(tone)])
    assert RATE - 1000 < stream.pushed <= RATE  # resampled 24 -> 16 kHz (the resampler holds back its last samples)
    assert stream.turns == [("vad", {"threshold": 0.6, "prefix_padding_s": 0.3, "silence_s": 0.8})]
    conn, stream, _ = session([ga_update(format={"type": "audio/pcmu"}, turn_detection=None),
                               append(bytes(range(256)) * 32)])  # 8192 mu-law samples at 8 kHz
    assert 2 * 8192 - 2000 < stream.pushed <= 2 * 8192 and stream.turns == [("manual", {})]
    _, stream, _ = session([ga_update(format={"type": "audio/pcm", "rate": 16000}), append(b"\0\0" * 1600)])
    assert stream.pushed == 1600  # 16 kHz: no resampling


def test_vad_events_deltas_and_completed_share_item_ids():
    stream = FakeStream()
    stream.queued = [[contract.SpeechStarted(0, 0.7), partial(0, "the"), partial(0, "the", "the re"),
                      partial(0, "the red"), contract.SpeechStopped(0, 1.9)],
                     [partial(0, "the red cat"), final(0, "the red cat"), contract.SpeechStarted(1, 3.0)],
                     [partial(1, "a"), final(1, "a dog")]]
    conn, _, _ = session([append(b"\0\0" * 2400)] * 3, stream)
    events = conn.sent[1:]
    assert [e["type"] for e in events] == [
        "input_audio_buffer.speech_started", "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.delta", "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed", "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed", "input_audio_buffer.speech_started",
        "conversation.item.input_audio_transcription.delta", "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed"]
    first, second = events[0]["item_id"], events[7]["item_id"]
    assert first != second and all(e["item_id"] == first for e in events[:7])
    assert [e["delta"] for e in events if e["type"].endswith(".delta")] == ["the", " red", " cat", "a"]
    assert events[0]["audio_start_ms"] == 700 and events[3]["audio_end_ms"] == 1900
    assert events[4]["previous_item_id"] is None and events[9]["previous_item_id"] == first
    done = events[6]
    assert done["transcript"] == "the red cat" and done["content_index"] == 0
    assert done["words"][1] == {"word": "red", "start": 0.1, "end": 0.15, "confidence": 0.9}
    assert done["usage"] == {"type": "duration", "seconds": 1.0}


def test_client_commits_and_clears():
    pcm = b"\1\0" * 4800
    conn, stream, _ = session([ga_update(turn_detection=None), {"type": "input_audio_buffer.commit"},
                               append(pcm), {"type": "input_audio_buffer.commit", "event_id": "c1"},
                               append(pcm), {"type": "input_audio_buffer.clear"},
                               {"type": "input_audio_buffer.commit"}])
    assert stream.calls == ["commit", "clear"]
    kinds = types_of(conn)[2:]
    assert kinds == ["error", "input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed",
                     "input_audio_buffer.cleared", "error"]
    assert [e["code"] for e in errors(conn)] == ["input_audio_buffer_commit_empty"] * 2
    assert conn.sent[3]["item_id"] == conn.sent[4]["item_id"]


def test_bad_events_get_error_events_and_the_session_goes_on():
    conn, stream, model = session([
        "not json", {"type": 3}, {"type": "no.such.event", "event_id": "e7"}, {"type": "response.create"},
        {"type": "session.update", "session": {"type": "realtime"}},
        ga_update(format={"type": "audio/opus"}), ga_update(format={"type": "audio/pcm", "rate": 44100}),
        ga_update(transcription={"prompt": "expect medical words"}), ga_update(colour="red"),
        ga_update(turn_detection={"type": "semantic_vad"}), ga_update(turn_detection={"threshold": 2}),
        {"type": "input_audio_buffer.append", "audio": "!!!"}, b"\0\1binary",
        append(b"\0\0" * 100), ga_update(format={"type": "audio/pcmu"}),
        ga_update(transcription={"language": "fra"}),
        {"type": "input_audio_buffer.commit"}])
    errs = errors(conn)
    assert [e["code"] for e in errs] == [
        "invalid_json", "invalid_event", "invalid_event_type", "unsupported_event", "invalid_value",
        "invalid_value", "invalid_value", "invalid_value", "unknown_parameter", "invalid_value", "invalid_value",
        "invalid_value", "invalid_event", "invalid_value", "invalid_value"]
    assert all(e["type"] == "invalid_request_error" and e["message"] for e in errs)
    assert errs[2]["event_id"] == "e7" and errs[2]["param"] == "type"
    assert errs[5]["param"] == "session.audio.input.format.type"
    assert errs[7]["param"] == "session.audio.input.transcription.prompt"
    assert errs[8]["param"] == "session.audio.input.colour"
    assert "cannot change after audio" in errs[13]["message"]
    assert stream.calls == ["commit"] and conn.sent[-1]["type"].endswith(".completed")  # still serving
    assert conn.closed is None and len(model.opened) == 1


def test_back_pressure_is_told_then_the_stream_is_closed():
    stream = FakeStream()
    stream.behind_s = 2.5
    conn, _, _ = session([append(b"\0\0" * 160)], stream)
    assert {"type": "input_audio_buffer.behind", "behind_s": 2.5, "limit_s": 30.0}.items() <= conn.sent[1].items()
    stream = FakeStream()
    stream.behind_s = 31.0
    conn, _, _ = session([append(b"\0\0" * 160), append(b"\0\0" * 160)], stream)
    assert errors(conn)[0]["code"] == "stream_behind" and "SERVE_STREAM_MAX_BEHIND_S" in errors(conn)[0]["message"]
    assert conn.closed[0] == 1013 and len(errors(conn)) == 1


def test_shutdown_and_time_limit_deliver_the_pending_transcript_first():
    conn, stream, _ = session([append(b"\0\0" * 1600)], on_empty=lambda hub: hub.draining.set())
    assert stream.calls == ["finish"] and conn.closed[0] == 1001
    assert types_of(conn)[-2:] == ["input_audio_buffer.committed",
                                   "conversation.item.input_audio_transcription.completed"]
    conn, stream, _ = session([append(b"\0\0" * 1600)], stream_max_session_s=0.3,
                              on_empty=lambda hub: time.sleep(0.4))
    assert stream.calls == ["finish"] and conn.closed[0] == 1008
    assert types_of(conn)[-2:] == ["conversation.item.input_audio_transcription.completed", "error"]
    assert errors(conn)[0]["code"] == "session_limit_reached"


def test_the_first_message_chooses_the_protocol():
    assert realtime.is_client_event(json.dumps({"type": "session.update", "session": {}}))
    assert realtime.is_client_event(json.dumps({"type": "input_audio_buffer.append", "audio": ""}))
    assert not realtime.is_client_event(json.dumps({"type": "settings", "encoding": "pcm_s16le"}))
    assert not realtime.is_client_event(json.dumps({"encoding": "pcm_s16le"}))
    assert not realtime.is_client_event(b"\0\0\0\0")
    assert not realtime.is_client_event('{"type": "end"}')


# G.711 and the VAD ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed")
@pytest.mark.parametrize("encoding,sox", [("pcm_mulaw", "u-law"), ("pcm_alaw", "a-law")])
def test_g711_decodes_as_sox_encodes(tmp_path, encoding, sox):
    """sox's own G.711 bytes and its own expansion back to 16-bit PCM: ours (FFmpeg's tables, through PyAV)
    must give the same samples; then resampled to 16 kHz in one soxr stream however the bytes are cut."""
    x = (np.sin(np.arange(8000) / 3) * 0.5 * np.linspace(0, 1, 8000)).astype(np.float32)
    raw = tmp_path / "x.raw"
    raw.write_bytes((x * 32767).astype("<i2").tobytes())
    law = tmp_path / "x.law"
    subprocess.run(["sox", "-t", "raw", "-r", "8000", "-e", "signed", "-b", "16", "-c", "1", str(raw),
                    "-t", "raw", "-e", sox, str(law)], check=True)
    back = subprocess.run(["sox", "-t", "raw", "-r", "8000", "-e", sox, "-c", "1", str(law), "-t", "raw", "-e",
                           "signed", "-b", "16", "-"], check=True, capture_output=True).stdout
    expected = np.frombuffer(back, "<i2").astype(np.float32) / 32768
    data = law.read_bytes()
    d = streamaudio.make_decoder(encoding, 8000 * 2)  # no resampling at 16 kHz: the expansion alone
    assert np.array_equal(np.concatenate([d.decode(data[:333]), d.decode(data[333:])]), expected)
    d = streamaudio.make_decoder(encoding)
    out = np.concatenate([d.decode(data[i: i + 160]) for i in range(0, len(data), 160)] + [d.flush()])
    import soxr
    assert len(out) == 2 * len(data) and np.allclose(out, soxr.resample(expected, 8000, RATE, "HQ"), atol=1e-4)
    with pytest.raises(streamaudio.StreamAudioError):
        streamaudio.make_decoder(encoding, channels=2)


@pytest.fixture(scope="module")
def clips(synthetic_data):
    return [load_file(p) for p in sorted((synthetic_data / "test" / "audio").glob("*.wav"))]


def test_stream_vad_finds_each_utterance_with_the_packaged_models_probabilities(clips):
    import torch

    gap = np.zeros(int(1.5 * RATE), np.float32)
    audio = np.concatenate([gap, clips[0], gap, clips[1], gap])
    vad = streamvad.StreamVad(0.5, 0.5)
    vad.keep = True
    changes = []
    for i in range(0, len(audio), 1234):  # any cut
        changes += vad.feed(audio[i: i + 1234])
    assert [c[0] for c in changes] == ["start", "stop", "start", "stop"]
    ends = [len(gap) + len(clips[0]), 2 * len(gap) + len(clips[0]) + len(clips[1])]
    for (_, end, cut), true_end in zip(changes[1::2], ends):
        assert true_end - 0.4 * RATE < end < true_end + 0.3 * RATE and cut == end + RATE // 2
    assert abs(changes[0][1] - len(gap)) < 0.4 * RATE
    jit = torch.jit.load(str(streamvad.model_file().with_name("silero_vad.jit")), map_location="cpu").eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # window by window, torch's threads only wait on each other (serve/streamvad.py)
    try:
        with torch.inference_mode():
            n = len(audio) // streamvad.WINDOW * streamvad.WINDOW
            theirs = jit.audio_forward(torch.from_numpy(audio[:n])[None], RATE)[0].numpy()
    finally:
        torch.set_num_threads(threads)
    assert np.abs(theirs - np.array(vad.probabilities)).max() < 1e-3


def test_streams_and_invocations_vad_share_one_loaded_model():
    from serve import vad

    assert streamvad.StreamVad().net is vad.load_session()  # one loader, one session per process
    streamvad.load()
    assert streamvad.StreamVad(0.3, 1.0).net is vad.load_session()


# Live: a real WebSocket client against the server ----------------------------------------------------------------
MAX_SESSIONS = 3
MAX_SESSION_S = 10.0


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("realtime")
    srv = Server(
        make_opt_ml(root / "opt_ml", tiny_model_dir), root / "server.log",
        MODEL_SERVER_WORKERS="1", SERVE_THREADS="4", SERVE_MAX_BATCH_WAIT_MS="20",
        SERVE_STREAM_MAX_SESSIONS=str(MAX_SESSIONS), SERVE_STREAM_MAX_SESSION_S=str(MAX_SESSION_S),
        SERVE_STREAM_IDLE_TIMEOUT_S="30",
    ).wait_ready()
    yield srv
    srv.stop()


def ws(server, path="/v1/realtime"):
    return connect(f"ws://127.0.0.1:{server.port}{path}", open_timeout=30, close_timeout=10, max_size=None)


def int16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1, 1) * 32767).astype("<i2")


def send_audio(conn, pcm: np.ndarray, frame: int = 3200) -> None:
    data = pcm.tobytes()
    for i in range(0, len(data), frame):
        conn.send(json.dumps(append(data[i: i + frame])))


def until(conn, kind: str, n: int = 1, timeout: float = 60) -> list[dict]:
    """Events up to the n-th of `kind`."""
    out, deadline = [], time.monotonic() + timeout
    while sum(e["type"] == kind for e in out) < n:
        out.append(json.loads(conn.recv(timeout=max(0.1, deadline - time.monotonic()))))
    return out


def offline(server, pcm: np.ndarray, start: float, end: float) -> str:
    """/invocations' transcript of the stream's samples [start, end) (seconds, as a completed event gives them)."""
    piece = pcm[round(start * RATE): round(end * RATE)]
    reply = server.post(encode(piece, RATE, subtype="PCM_16"), "audio/wav")
    assert reply.status == 200, reply.body
    return reply.json["text"]


def test_server_vad_over_three_utterances(server, clips):
    gap = np.zeros(int(2.0 * RATE), np.float32)
    pcm = int16(np.concatenate([gap, clips[0], gap, clips[1], gap, clips[2], gap]))
    with ws(server, "/invocations-bidirectional-stream") as conn:  # chosen by the first message
        conn.send(json.dumps(ga_update(format={"type": "audio/pcm", "rate": 16000},
                                       turn_detection={"type": "server_vad", "silence_duration_ms": 500})))
        send_audio(conn, pcm)
        events = until(conn, "conversation.item.input_audio_transcription.completed", 3)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["session.created", "session.updated"] and "error" not in kinds
    done = [e for e in events if e["type"].endswith(".completed")]
    started = [e for e in events if e["type"] == "input_audio_buffer.speech_started"]
    stopped = [e for e in events if e["type"] == "input_audio_buffer.speech_stopped"]
    committed = [e for e in events if e["type"] == "input_audio_buffer.committed"]
    assert len(started) == len(stopped) == len(committed) == 3
    assert [e["item_id"] for e in done] == [e["item_id"] for e in started] == [e["item_id"] for e in committed]
    ends = np.cumsum([len(gap) + len(c) for c in clips[:3]]) / RATE
    for d, stop, end in zip(done, stopped, ends):
        assert end - 0.4 < stop["audio_end_ms"] / 1000 < end + 0.3
        assert d["audio_start"] < end - 0.5 < d["audio_end"] < end + 1.0
        assert d["transcript"] == offline(server, pcm, d["audio_start"], d["audio_end"])
        assert all(0 <= w["confidence"] <= 1 for w in d["words"])


def test_client_committed_turns_and_clear(server, clips):
    a, b, c = (int16(x) for x in clips[3:6])
    with ws(server) as conn:
        conn.send(json.dumps(ga_update(format={"type": "audio/pcm", "rate": 16000}, turn_detection=None)))
        send_audio(conn, a)
        conn.send(json.dumps({"type": "input_audio_buffer.commit"}))
        first = until(conn, "conversation.item.input_audio_transcription.completed")
        send_audio(conn, b)
        conn.send(json.dumps({"type": "input_audio_buffer.clear"}))
        send_audio(conn, c)
        conn.send(json.dumps({"type": "input_audio_buffer.commit"}))
        second = until(conn, "conversation.item.input_audio_transcription.completed")
    kinds = [e["type"] for e in first + second]
    assert "input_audio_buffer.speech_started" not in kinds and "error" not in kinds
    assert "input_audio_buffer.cleared" in kinds
    stream = np.concatenate([a, b, c])
    one, two = first[-1], second[-1]
    assert one["audio_start"] == 0 and abs(one["audio_end"] - len(a) / RATE) < 0.001
    assert one["transcript"] == offline(server, stream, one["audio_start"], one["audio_end"])
    assert two["audio_start"] >= (len(a) + len(b)) / RATE - 0.03  # the cleared audio is not in it (to a frame)
    assert two["transcript"] == offline(server, stream, two["audio_start"], two["audio_end"])


@pytest.mark.skipif(shutil.which("sox") is None or shutil.which("espeak-ng") is None, reason="needs sox, espeak-ng")
def test_g711_call_audio(server, tmp_path):
    """An 8 kHz call-like clip: espeak-ng speech band-limited to 300-3400 Hz and mu-law encoded by sox."""
    speech = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), "please hold the line while I check your account"], check=True)
    call = tmp_path / "call.wav"
    subprocess.run(["sox", str(speech), "-r", "8000", "-c", "1", "-e", "u-law", str(call), "sinc", "300-3400"],
                   check=True)
    raw = subprocess.run(["sox", str(call), "-t", "raw", "-"], check=True, capture_output=True).stdout
    assert len(raw) > 8000  # a second of mu-law bytes at least
    expected = server.post(call.read_bytes(), "audio/wav").json["text"]
    with ws(server) as conn:
        conn.send(json.dumps(ga_update(format={"type": "audio/pcmu"}, turn_detection=None)))
        for i in range(0, len(raw), 160):  # 20 ms packets, as telephony sends
            conn.send(json.dumps(append(raw[i: i + 160])))
        conn.send(json.dumps({"type": "input_audio_buffer.commit"}))
        done = until(conn, "conversation.item.input_audio_transcription.completed")[-1]
    assert abs(done["audio_end"] - len(raw) / 8000) < 0.01
    assert done["transcript"] == expected


def test_bad_and_unknown_events_keep_the_session(server, clips):
    pcm = int16(clips[6])
    with ws(server) as conn:
        assert json.loads(conn.recv(timeout=30))["type"] == "session.created"
        conn.send("{not json")
        conn.send(json.dumps({"type": "conversation.item.wave", "event_id": "x1"}))
        conn.send(json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"}))
        conn.send(json.dumps(ga_update(format={"type": "audio/pcm", "rate": 16000}, turn_detection=None)))
        send_audio(conn, pcm)
        conn.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events = until(conn, "conversation.item.input_audio_transcription.completed")
    errs = [e["error"] for e in events if e["type"] == "error"]
    assert [e["code"] for e in errs] == ["invalid_json", "invalid_event_type", "invalid_value"]
    assert errs[1]["event_id"] == "x1" and errs[2]["param"] == "audio"
    assert events[-1]["transcript"] == offline(server, pcm, 0, events[-1]["audio_end"])


def test_session_limits(server, clips):
    """Over SERVE_STREAM_MAX_SESSIONS: an error event in the API's shape and close 1013; at
    SERVE_STREAM_MAX_SESSION_S: the pending transcript, then an error event and close 1008."""
    held = [ws(server) for _ in range(MAX_SESSIONS)]
    try:
        for h in held:
            assert json.loads(h.recv(timeout=30))["type"] == "session.created"
        with ws(server) as extra:
            refused = json.loads(extra.recv(timeout=30))
            with pytest.raises(ConnectionClosed):
                extra.recv(timeout=30)
            assert extra.close_code == 1013
        assert refused["type"] == "error" and refused["error"]["type"] == "server_error"
        assert "SERVE_STREAM_MAX_SESSIONS" in refused["error"]["message"]
    finally:
        for h in held:
            h.close()
    time.sleep(0.5)
    with ws(server) as conn:
        conn.send(json.dumps(ga_update(format={"type": "audio/pcm", "rate": 16000}, turn_detection=None)))
        send_audio(conn, int16(clips[7]))
        events = []
        with pytest.raises(ConnectionClosed):
            while True:
                events.append(json.loads(conn.recv(timeout=MAX_SESSION_S + 20)))
        assert conn.close_code == 1008
    assert events[-2]["type"].endswith(".completed") and events[-2]["transcript"]
    assert events[-1]["error"]["code"] == "session_limit_reached"


def test_the_openai_client_connects_with_websocket_base_url(server, clips):
    """The `openai` package's own realtime client, pointed at the server (websocket_base_url), as a user would."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(api_key="unused", websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
    pcm = int16(clips[8])
    with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        assert conn.recv().type == "session.created"
        conn.session.update(session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None}}})
        assert conn.recv().type == "session.updated"
        import soxr
        x24 = int16(soxr.resample(pcm.astype(np.float32) / 32768, RATE, 24_000, "HQ"))
        data = x24.tobytes()
        for i in range(0, len(data), 4800):
            conn.input_audio_buffer.append(audio=base64.b64encode(data[i: i + 4800]).decode())
        conn.input_audio_buffer.commit()
        for event in conn:
            if event.type == "conversation.item.input_audio_transcription.completed":
                break
            assert event.type != "error", event
    assert isinstance(event.transcript, str) and event.item_id.startswith("item_")


def test_our_protocol_is_unchanged_on_the_same_route(server, clips):
    with ws(server, "/invocations-bidirectional-stream") as conn:
        conn.send(json.dumps({"type": "settings", "encoding": "pcm_s16le"}))
        conn.send(int16(clips[9]).tobytes())
        conn.send(json.dumps({"type": "end"}))
        events = []
        with pytest.raises(ConnectionClosed):
            while True:
                events.append(json.loads(conn.recv(timeout=60)))
        assert conn.close_code == 1000
    assert events[-1]["type"] == "final" and events[-1]["last"] is True
    assert {e["type"] for e in events} <= {"partial", "final"}


def test_launch_stream_protocol_openai(server, clips, tmp_path):
    """launcher/launch stream --protocol openai against the live server: server VAD, a commit at the end; the
    completed transcripts printed one a line (--json: the server's events as they are)."""
    import soundfile as sf

    from conftest import ROOT, program_env

    audio = np.concatenate([clips[11], np.zeros(RATE, np.float32), clips[0]])
    path = tmp_path / "talk.flac"
    sf.write(path, audio, RATE)
    url = f"ws://127.0.0.1:{server.port}/v1/realtime"
    run = subprocess.run([str(ROOT / "launcher" / "launch"), "stream", str(path), "--local", "--url", url,
                          "--protocol", "openai", "--speed", "0", "--json"], capture_output=True, text=True,
                         env=program_env(), timeout=120)
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    done = [e["transcript"] for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert done and any(done) and [e["type"] for e in events].count("session.updated") == 2
    plain = subprocess.run([str(ROOT / "launcher" / "launch"), "stream", str(path), "--local", "--url", url,
                            "--protocol", "openai", "--speed", "0"], capture_output=True, text=True,
                           env=program_env(), timeout=120)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines() == [t for t in done if t]  # the same audio, the same utterances
    for extra in ([], ["--json"]):  # an error event is a failure, printed or not
        bad = subprocess.run([str(ROOT / "launcher" / "launch"), "stream", str(path), "--local", "--url", url,
                              "--protocol", "openai", "--speed", "0", "--option", "language=fra", *extra],
                             capture_output=True, text=True, env=program_env(), timeout=120)
        assert bad.returncode == 1 and "no language adapters" in bad.stdout + bad.stderr, (bad.stdout, bad.stderr)


def test_vad_finals_equal_invocations_of_their_audio_greedy_and_with_the_lm(tmp_path, clips):
    """Silero VAD cuts a stream at its pauses; each utterance's transcript is /invocations' transcript of exactly
    its audio, with greedy and with beam search + LM finals, sent at real-time pace and as fast as possible.
    The model: a group-norm checkpoint with random weights and an LM (as tests/test_serve_stream_pace.py), whose
    transcripts change with any difference of context or normalisation."""
    import checkpoints
    from test_lm import SENTENCES
    from test_serve_lm import _lm_over

    model = _lm_over(checkpoints.build("wav2vec2-base", tmp_path / "model"), [x.upper() for x in SENTENCES],
                     tmp_path / "lm_work")
    srv = Server(make_opt_ml(tmp_path / "opt_ml", model), tmp_path / "server.log", MODEL_SERVER_WORKERS="1",
                 SERVE_THREADS="4", SERVE_BEAM_PROCESSES="1").wait_ready()
    try:
        gap = np.zeros(int(1.2 * RATE), np.float32)
        pcm = int16(np.concatenate([gap, clips[1], gap, clips[2], gap]))
        for query, pace in (("?decoder=greedy", 0.0), ("", 0.0), ("", 1.0)):
            with connect(f"ws://127.0.0.1:{srv.port}/v1/realtime{query}", open_timeout=30, max_size=None) as conn:
                conn.send(json.dumps(ga_update(format={"type": "audio/pcm", "rate": 16000})))
                data = pcm.tobytes()
                for k, i in enumerate(range(0, len(data), 3200)):
                    if pace:
                        time.sleep(0.1 / pace)
                    conn.send(json.dumps(append(data[i: i + 3200])))
                done = [e for e in until(conn, "conversation.item.input_audio_transcription.completed", 2)
                        if e["type"].endswith(".completed")]
            for d in done:
                piece = pcm[round(d["audio_start"] * RATE): round(d["audio_end"] * RATE)]
                reply = srv.post(encode(piece, RATE, subtype="PCM_16"), "audio/wav", f"/invocations{query}")
                assert d["transcript"] == reply.json["text"], (query, pace, d)
            assert any(d["transcript"] for d in done)
        assert "decoder: beam search + LM by default" in srv.log()
    finally:
        srv.stop()


def test_sigterm_mid_utterance_delivers_the_pending_transcript(server, clips):
    """Last: it stops the module's server."""
    with ws(server) as conn:
        conn.send(json.dumps(ga_update(format={"type": "audio/pcm", "rate": 16000}, turn_detection=None)))
        send_audio(conn, int16(clips[10]))
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        events = []
        with pytest.raises(ConnectionClosed):
            while True:
                events.append(json.loads(conn.recv(timeout=30)))
        assert conn.close_code == 1001
    assert events[-1]["type"] == "conversation.item.input_audio_transcription.completed"
    assert events[-1]["transcript"]
    assert server.proc.wait(30) == 0


def test_vad_ends_utterances_in_audio_that_reaches_finish_unheard(tiny_model_dir, clips):
    """Audio sent faster than the stream steps (launch stream --speed 0) can arrive whole before the end of the
    stream: finish must still run the VAD over it, so its pauses end utterances as they do at real-time pace."""
    import torch

    from common import modeldir
    from serve import model as sm
    from serve.options import Options
    from serve.streaming import StreamConfig, Transcriber

    model = sm.ServingModel(modeldir.load_checkpoint(tiny_model_dir), device=torch.device("cpu"),
                            dtype=torch.float32).start()
    try:
        gap = np.zeros(int(1.2 * RATE), np.float32)
        audio = np.concatenate([clips[3], gap, clips[4]])
        spans = {}
        for name, piece in (("paced", 1600), ("at once", len(audio))):
            t = Transcriber(model, Options(), StreamConfig(endpointing="vad"))
            events = []
            for i in range(0, len(audio), piece):
                t.push(audio[i: i + piece])
                if piece < len(audio):
                    events += t.advance(time.monotonic() + 60)
            events += t.finish(time.monotonic() + 60)
            spans[name] = [(e.utterance, e.last) for e in events if isinstance(e, contract.Final)]
        assert spans["at once"] == spans["paced"] == [(0, False), (1, True)]
    finally:
        model.close()
