"""Live transcription against the real serving program (serve/serve) with a real WebSocket client, and
response streaming over real HTTP: protocol, limits, bad input, ping/pong, many streams sharing forward passes,
SIGTERM mid-stream. One server for the module (the SIGTERM test, last, stops it)."""
from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import threading
import time

import jiwer
import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from common.audio import load_file
from conftest import ROOT, program_env
from serve.streamaudio import opus_available
from serve_helpers import Server, encode, make_opt_ml

RATE = 16_000
MAX_SESSIONS = 3
IDLE_S = 2.0
MAX_SESSION_S = 12.0
MAX_FRAME = 65536
PATH = "/invocations-bidirectional-stream"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("stream")
    srv = Server(
        make_opt_ml(root / "opt_ml", tiny_model_dir), root / "server.log",
        MODEL_SERVER_WORKERS="1", SERVE_THREADS="4",
        SERVE_CHUNK_LENGTH_S="8", SERVE_CHUNK_STRIDE_S="2", SERVE_MAX_BATCH_WAIT_MS="50",
        SERVE_STREAM_MAX_SESSIONS=str(MAX_SESSIONS), SERVE_STREAM_IDLE_TIMEOUT_S=str(IDLE_S),
        SERVE_STREAM_MAX_SESSION_S=str(MAX_SESSION_S), SERVE_STREAM_MAX_FRAME_BYTES=str(MAX_FRAME),
    ).wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def clips(synthetic_data):
    return [load_file(p) for p in sorted((synthetic_data / "test" / "audio").glob("*.wav"))]


def ws(server, query: str = "", **kw):
    return connect(f"ws://127.0.0.1:{server.port}{PATH}{query}", open_timeout=30, close_timeout=10, **kw)


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def stream(conn, data: bytes, frame: int = 6400, pause_s: float = 0.0) -> None:
    for i in range(0, len(data), frame):
        conn.send(data[i: i + frame])
        if pause_s:
            time.sleep(pause_s)


def events_until_close(conn, timeout: float = 60) -> list[dict]:
    out = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            out.append(json.loads(conn.recv(timeout=max(0.1, deadline - time.monotonic()))))
    except ConnectionClosed:
        return out
    raise AssertionError(f"the server did not close the stream; events: {out}")


def invocations(server, data: bytes, content_type: str = "audio/wav", query: str = "?timestamps=true") -> dict:
    reply = server.post(data, content_type, f"/invocations{query}")
    assert reply.status, reply.body
    return reply.json


def test_happy_path_final_equals_invocations(server, clips):
    """A clip shorter than one step plus the look-ahead is transcribed by the last window alone, which covers
    it whole: the final must equal /invocations' answer for the same audio, word times included. The audio is
    sent as 22.05 kHz PCM, so the stream's resampler is the one /invocations uses."""
    clip = clips[0][: int(0.7 * RATE)]  # under SERVE_STREAM_STEP_S + SERVE_STREAM_RIGHT_S (0.8 s)
    x22 = __import__("soxr").resample(clip, RATE, 22050, quality="HQ").astype(np.float32)
    data = pcm16(x22)
    expected = invocations(server, encode(np.frombuffer(data, "<i2"), 22050, subtype="PCM_16"))
    with ws(server, "?timestamps=true") as conn:
        conn.send(json.dumps({"type": "settings", "encoding": "pcm_s16le", "sample_rate": 22050}))
        stream(conn, data, frame=1001)  # frames cut mid-sample
        conn.send(json.dumps({"type": "end"}))
        events = events_until_close(conn)
        assert conn.close_code == 1000
    finals = [e for e in events if e["type"] == "final"]
    assert len(finals) == 1 and finals[0]["last"] is True
    assert finals[0]["text"] == expected["text"]
    assert finals[0]["words"] == expected["words"]


def test_a_long_stream_gives_stable_partials_and_finals(server, clips):
    audio = np.concatenate([clips[1], np.zeros(RATE, np.float32), clips[2]])
    with ws(server) as conn:  # no settings: 16 kHz mono s16le
        stream(conn, pcm16(audio), frame=3200, pause_s=0.005)
        conn.send(json.dumps({"type": "end"}))
        events = events_until_close(conn)
        assert conn.close_code == 1000
    partials = [e for e in events if e["type"] == "partial"]
    finals = [e for e in events if e["type"] == "final"]
    assert partials, events
    assert finals[-1]["last"] is True and all(not f["last"] for f in finals[:-1])
    stable = {}
    for p in partials:
        assert p["text"].startswith(p["stable"])
        assert p["stable"].startswith(stable.get(p["utterance"], ""))  # committed words never change
        stable[p["utterance"]] = p["stable"]
    for f in finals:
        assert f["text"].startswith(stable.get(f["utterance"], ""))
        assert all(f["start"] <= w["start"] <= w["end"] <= f["end"] for w in f["words"])
    assert finals[-1]["end"] <= len(audio) / RATE + 0.02


@pytest.mark.skipif(not opus_available(), reason="libopus (libopus0) is not installed")
def test_ogg_opus_pages_in_any_cut(server, clips):
    buf = io.BytesIO()
    sf.write(buf, clips[0][: int(0.7 * RATE)], RATE, format="OGG", subtype="OPUS")  # one window, as above
    data = buf.getvalue()
    expected = invocations(server, data, "audio/ogg", "")
    with ws(server) as conn:
        conn.send(json.dumps({"encoding": "ogg_opus"}))
        stream(conn, data, frame=333)
        conn.send(json.dumps({"type": "end"}))
        events = events_until_close(conn)
    assert events[-1]["type"] == "final" and events[-1]["text"] == expected["text"]


def test_ping_pong(server):
    with ws(server) as conn:
        assert conn.ping(b"sagemaker").wait(10)
        conn.send(json.dumps({"type": "end"}))
        assert events_until_close(conn)[-1] == {"type": "final", "utterance": 0, "text": "", "start": 0.0,
                                                 "end": 0.0, "words": [], "last": True}


@pytest.mark.parametrize("first,says", [
    ("not json", "not JSON"),
    (json.dumps({"type": "settings", "sample_rate": 16000, "gain": 2}), "unknown settings field 'gain'"),
    (json.dumps({"type": "settings", "sample_rate": 100}), "sample_rate"),
    (json.dumps({"type": "settings", "encoding": "mp3"}), "unknown encoding"),
    (json.dumps({"type": "settings", "language": "fra"}), "no language adapters"),
    (json.dumps({"type": "settings", "timestamps": "maybe"}), "must be true or false"),
    (json.dumps({"type": "pause"}), "unknown message type"),
    (json.dumps([1, 2]), "JSON object"),
])
def test_malformed_frames_get_an_error_and_the_server_carries_on(server, clips, first, says):
    with ws(server) as conn:
        conn.send(first)
        events = events_until_close(conn)
        assert conn.close_code == 1007
    assert events[-1]["type"] == "error" and events[-1]["code"] == 1007 and says in events[-1]["error"], events
    assert server.get("/ping").status == 200


def test_bad_audio_and_late_settings_are_refused(server):
    with ws(server) as conn:
        conn.send(json.dumps({"encoding": "ogg_opus"}) if opus_available() else b"\0\0")
        if opus_available():
            conn.send(b"RIFF" + bytes(200))
        else:
            conn.send(json.dumps({"type": "settings"}))
        events = events_until_close(conn)
        assert conn.close_code == 1007
    assert events[-1]["type"] == "error"
    with ws(server, "?language=xx!") as conn:  # options in the query string (ModelQueryString) are checked too
        events = events_until_close(conn)
        assert conn.close_code == 1007 and "language" in events[-1]["error"]


def test_frame_size_limit(server):
    with ws(server) as conn:
        conn.send(bytes(MAX_FRAME + 2))
        events = events_until_close(conn)
        assert conn.close_code == 1009
    assert events[-1]["code"] == 1009 and "SERVE_STREAM_MAX_FRAME_BYTES" in events[-1]["error"]
    with ws(server) as conn:  # far over: refused by the WebSocket layer itself, before it is read
        conn.send(bytes(3 * MAX_FRAME))
        events_until_close(conn)
        assert conn.close_code == 1009


def test_idle_streams_get_their_final_then_an_error(server, clips):
    with ws(server) as conn:
        conn.send(pcm16(clips[0][: int(0.5 * RATE)]))
        started = time.monotonic()
        events = events_until_close(conn)
        waited = time.monotonic() - started
        assert conn.close_code == 1008
    assert IDLE_S - 0.1 <= waited < IDLE_S + 5
    assert [e["type"] for e in events[-2:]] == ["final", "error"] and events[-2]["last"] is True
    assert "SERVE_STREAM_IDLE_TIMEOUT_S" in events[-1]["error"]


def test_session_limit_then_a_free_place(server, clips):
    open_conns = [ws(server) for _ in range(MAX_SESSIONS)]
    try:
        for c in open_conns:
            c.send(pcm16(np.zeros(1600, np.float32)))  # admitted and running
        with ws(server) as extra:
            events = events_until_close(extra)
            assert extra.close_code == 1013
        assert events == [{"type": "error", "code": 1013, "error": events[0]["error"]}]
        assert "SERVE_STREAM_MAX_SESSIONS" in events[0]["error"]
        # /invocations is still answered while every stream place is taken
        assert server.post(encode(clips[0], RATE), "audio/wav").status == 200
    finally:
        for c in open_conns:
            c.close()
    deadline = time.monotonic() + 10
    while True:  # the server notices the closes within its poll interval
        with ws(server) as conn:
            conn.send(json.dumps({"type": "end"}))
            events = events_until_close(conn)
        if events[-1]["type"] == "final" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert events[-1]["type"] == "final"


def test_longest_session(server):
    with ws(server) as conn:
        started = time.monotonic()
        try:
            while time.monotonic() - started < MAX_SESSION_S + 10:
                conn.send(bytes(3200))  # 0.1 s of silence, more often than the idle timeout
                time.sleep(0.5)
        except ConnectionClosed:
            pass
        events = events_until_close(conn)
        assert conn.close_code == 1008
    assert MAX_SESSION_S - 1 <= time.monotonic() - started <= MAX_SESSION_S + 6
    assert events[-1]["type"] == "error" and "SERVE_STREAM_MAX_SESSION_S" in events[-1]["error"]


def test_a_stream_sent_faster_than_real_time_is_caught_up_and_told_so(server, clips):
    """5 s of audio at once: the session takes every waiting frame, and one window commits all the steps they
    complete (not one window per step); its partial says how far behind the stream was."""
    audio = np.resize(np.concatenate(clips[5:8]), 5 * RATE)
    with ws(server) as conn:
        stream(conn, pcm16(audio), frame=3200)
        deadline, behind = time.monotonic() + 60, []
        while not behind and time.monotonic() < deadline:
            event = json.loads(conn.recv(timeout=60))
            behind += [event["behind_s"]] if event["type"] == "partial" and event["behind_s"] > 0 else []
        conn.send(json.dumps({"type": "end"}))
        events = events_until_close(conn)
    assert behind and behind[0] >= 0.5  # at least one step more than the usual one
    assert events[-1]["type"] == "final" and events[-1]["last"] is True
    for _ in range(50):  # the session's log line comes after its close
        found = re.findall(r"stream id=\S+ audio_s=5\.00 .* windows=(\d+)", server.log())
        if found:
            break
        time.sleep(0.1)
    assert int(found[-1]) < 5 / 0.5  # fewer windows than steps


def test_many_streams_share_forward_passes(server, clips):
    """Three streams send a window's worth of audio at the same moments: the batcher runs their windows in
    shared forward passes (each stream has at most one window ready at a time, so a pass of 2 or 3 windows
    holds windows of different streams)."""
    audio = pcm16(np.concatenate(clips[:3])[: int(4.0 * RATE)])
    first = 16080 * 2  # the audio the first window needs (1 s: step + look-ahead), in bytes
    barrier = threading.Barrier(MAX_SESSIONS)
    results = [None] * MAX_SESSIONS

    def one(i):
        with ws(server) as conn:
            pieces = [audio[:first]] + [audio[j: j + 16000] for j in range(first, len(audio), 16000)]
            for piece in pieces:
                barrier.wait(timeout=60)
                conn.send(piece)
                time.sleep(0.4)
            conn.send(json.dumps({"type": "end"}))
            results[i] = events_until_close(conn)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(MAX_SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r and r[-1]["type"] == "final" for r in results), results
    time.sleep(0.5)
    batches = [int(b) for b in re.findall(r"stream id=\S+ audio_s=4\.00 .* batch=(\d+)", server.log())]
    assert len(batches) >= MAX_SESSIONS and max(batches) >= 2, server.log()[-3000:]


def test_response_stream_sends_each_chunk_as_it_is_ready(server, clips):
    long = np.concatenate(clips)[: 20 * RATE]  # 8 s chunks with 2 s strides: 4 of them
    body = encode(long, RATE)
    whole = server.post(body, "audio/wav").json["text"]
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    c.request("POST", "/invocations-response-stream?timestamps=true", body=body,
              headers={"Content-Type": "audio/wav"})
    resp = c.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type") == "application/jsonlines"
    assert resp.getheader("Transfer-Encoding") == "chunked"  # written line by line, no length up front
    lines = [json.loads(line) for line in resp.read().decode().splitlines()]
    c.close()
    assert [line["index"] for line in lines] == [0, 1, 2, 3] and lines[-1]["last"] and not lines[0]["last"]
    assert " ".join(line["text"] for line in lines if line["text"]) == whole
    assert all("words" in line for line in lines)
    bad = server.post(body, "audio/wav", "/invocations-response-stream?language=fra")
    assert bad.status == 400 and "no language adapters" in bad.json["error"]


def test_launcher_streams_a_file_and_prints_the_finals(server, clips, tmp_path):
    audio = np.concatenate([clips[3], np.zeros(RATE, np.float32), clips[4]])
    path = tmp_path / "talk.flac"
    sf.write(path, audio, RATE)
    url = f"ws://127.0.0.1:{server.port}{PATH}"
    run = subprocess.run([str(ROOT / "launcher" / "launch"), "stream", str(path), "--local", "--url", url,
                          "--speed", "4", "--json"], capture_output=True, text=True, env=program_env(), timeout=120)
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    finals = [e for e in events if e["type"] == "final"]
    assert finals and finals[-1]["last"] is True and any(e["type"] == "partial" for e in events)
    plain = subprocess.run([str(ROOT / "launcher" / "launch"), "stream", str(path), "--local", "--url", url,
                            "--speed", "0"], capture_output=True, text=True, env=program_env(), timeout=120)
    assert plain.returncode == 0, plain.stderr
    # The same finals, one a line. Sent as fast as possible, the audio is transcribed in catch-up windows (more
    # context per frame than at speed 4), so a random model's characters may differ a little.
    lines, texts = plain.stdout.splitlines(), [f["text"] for f in finals if f["text"]]
    assert len(lines) == len(texts) and jiwer.cer(texts, lines) < 0.1
    bad = subprocess.run([str(ROOT / "launcher" / "launch"), "stream", str(path), "--local", "--url", url,
                          "--option", "language=fra"], capture_output=True, text=True, env=program_env(), timeout=120)
    assert bad.returncode == 1 and "no language adapters" in bad.stderr


def test_sigterm_mid_stream_sends_the_last_final_and_going_away(server, clips):
    """Last: it stops the module's server."""
    with ws(server) as conn:
        stream(conn, pcm16(clips[0]), frame=8000)
        time.sleep(0.5)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        events = events_until_close(conn, timeout=30)
        assert conn.close_code == 1001
    assert time.monotonic() - started < 25
    assert events[-1]["type"] == "final" and events[-1]["last"] is True
    assert server.proc.wait(30) == 0
