"""The WebSocket route (serve/stream_route.py) in-process around a fake model (tests/fake_models.py), as
/invocations is tested in tests/test_serve_app.py: a real WebSocket client on one end of a socket pair, the
route's Hub on the other. Partials, finals, the end, model errors and their close codes, limits, drain."""
from __future__ import annotations

import json
import logging
import socket
import threading
import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from fake_models import FakeModel, FakeStream
from serve import contract, options
from serve.settings import Settings
from serve.stream_route import PATH, Hub

RATE = 16_000
SPEECH = (np.full(RATE // 5, 0.25, np.float32) * 32767).astype("<i2").tobytes()  # 0.2 s, every sample non-zero
PAUSE = bytes(2 * FakeStream.SILENCE)  # silence long enough to end an utterance


class Route:
    """One Hub; `open()` connects a client to it through a socket pair (the worker hands Hub.handle the
    accepted socket the same way)."""

    def __init__(self, model, **env):
        self.model = model
        self.hub = Hub(model, Settings.from_env(env))
        self.threads: list[threading.Thread] = []

    def open(self, query: str = "", headers: dict | None = None):
        ours, theirs = socket.socketpair()
        thread = threading.Thread(target=self.hub.handle, args=(theirs, ("fake-client", 0)), daemon=True)
        thread.start()
        self.threads.append(thread)
        return connect(f"ws://localhost{PATH}{query}", sock=ours, open_timeout=10, close_timeout=5,
                       ping_interval=None, additional_headers=headers)

    def join(self) -> None:
        for t in self.threads:
            t.join(10)
            assert not t.is_alive(), "a session did not end"


def until_close(conn, timeout: float = 20) -> list[dict]:
    events = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            events.append(json.loads(conn.recv(timeout=max(0.1, deadline - time.monotonic()))))
    except ConnectionClosed:
        return events
    raise AssertionError(f"the route did not close the stream; events: {events}")


def test_partials_and_finals_come_from_the_stream_and_end_closes_normally():
    route = Route(FakeModel())
    with route.open("?timestamps=true") as conn:
        got = []
        for frame in (SPEECH, PAUSE, SPEECH[:1600]):  # one frame at a time: one advance, one event each
            conn.send(frame)
            got.append(json.loads(conn.recv(timeout=10)))
        conn.send(json.dumps({"type": "end"}))
        got += until_close(conn)
        assert conn.close_code == 1000
    route.join()
    # The JSON is the wire protocol's (README, Live transcription), keys in its order.
    assert [list(e.items()) for e in got] == [list(e.items()) for e in [
        {"type": "partial", "utterance": 0, "text": "3200 samples", "stable": "", "start": 0.0, "end": 0.2,
         "behind_s": 0.0},
        {"type": "final", "utterance": 0, "text": "3200 samples", "start": 0.0, "end": 0.7,
         "words": [{"word": "x", "start": 0.0, "end": 0.7}], "last": False},
        {"type": "partial", "utterance": 1, "text": "800 samples", "stable": "", "start": 0.7, "end": 0.75,
         "behind_s": 0.0},
        {"type": "final", "utterance": 1, "text": "800 samples", "start": 0.7, "end": 0.75,
         "words": [{"word": "x", "start": 0.7, "end": 0.75}], "last": True},
    ]]
    assert route.model.streams == [options.Options(timestamps=True)]


def test_settings_and_header_options_reach_open_stream():
    route = Route(FakeModel())
    with route.open("?timestamps=true", headers={options.HEADER: "language=fra"}) as conn:
        conn.send(json.dumps({"type": "settings", "sample_rate": 16000, "language": "eng"}))
        conn.send(json.dumps({"type": "end"}))
        assert until_close(conn)[-1]["last"] is True
    route.join()
    assert route.model.streams == [options.Options(timestamps=True, language="eng")]  # settings win


def test_a_stream_with_no_audio_gets_an_empty_last_final():
    route = Route(FakeModel())
    with route.open() as conn:
        conn.send(json.dumps({"type": "end"}))
        assert until_close(conn) == [{"type": "final", "utterance": 0, "text": "", "start": 0.0, "end": 0.0,
                                      "words": [], "last": True}]
        assert conn.close_code == 1000


@pytest.mark.parametrize("error,code,says", [
    (contract.BadRequest("hotwords: 'zz' holds a character the model cannot write"), 1007, "hotwords"),
    (contract.Timeout("a stream window was not transcribed by its deadline"), 1013, "MODEL_SERVER_TIMEOUT"),
    (contract.Unavailable("the model's forward-pass thread is not running"), 1013, "forward-pass thread"),
    (contract.ModelFailure("the model failed on this stream (details in the server log)"), 1011, "model failed"),
    (RuntimeError("CUDA error: an illegal memory access"), 1011, "internal server error"),
])
def test_model_errors_become_an_error_event_and_their_close_code(error, code, says, caplog):
    route = Route(FakeModel(stream_fail=error, stream_fail_after=1600), MODEL_SERVER_TIMEOUT="7")
    with caplog.at_level(logging.INFO, logger="serve"):
        with route.open() as conn:
            conn.send(SPEECH)
            events = until_close(conn)
            assert conn.close_code == code
        route.join()
    assert events[-1]["type"] == "error" and events[-1]["code"] == code, events
    assert says in events[-1]["error"] and "CUDA" not in events[-1]["error"]
    if isinstance(error, contract.Timeout):
        assert "within 7 s" in events[-1]["error"]
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert bool(logged) == (code == 1011), [r.getMessage() for r in logged]  # only server-side failures
    assert any(f"close={code}" in r.getMessage() for r in caplog.records if r.getMessage().startswith("stream id="))


def test_an_unknown_language_is_refused_when_the_stream_opens():
    route = Route(FakeModel())
    with route.open("?language=deu") as conn:
        conn.send(SPEECH)
        events = until_close(conn)
        assert conn.close_code == 1007
    assert events == [{"type": "error", "code": 1007,
                       "error": "unknown language 'deu'; this model has adapters for: eng, fra"}]
    assert route.model.streams == []


@pytest.mark.parametrize("frame,code,says", [
    ("not json", 1007, "not JSON"),
    (json.dumps({"type": "settings", "gain": 2}), 1007, "unknown settings field 'gain'"),
    (json.dumps({"type": "settings", "encoding": "mp3"}), 1007, "unknown encoding"),
    (json.dumps({"type": "end", "now": True}), 1007, "takes no other field"),
    (bytes(1500), 1009, "SERVE_STREAM_MAX_FRAME_BYTES"),
])
def test_bad_frames_are_refused_before_the_model_sees_them(frame, code, says):
    route = Route(FakeModel(), SERVE_STREAM_MAX_FRAME_BYTES="1024")
    with route.open() as conn:
        conn.send(frame)
        events = until_close(conn)
        assert conn.close_code == code
    assert events[-1]["type"] == "error" and events[-1]["code"] == code and says in events[-1]["error"], events


def test_an_idle_stream_gets_its_last_final_then_a_policy_close():
    route = Route(FakeModel(), SERVE_STREAM_IDLE_TIMEOUT_S="0.5")
    with route.open() as conn:
        conn.send(SPEECH)
        events = until_close(conn)
        assert conn.close_code == 1008
    assert [e["type"] for e in events[-2:]] == ["final", "error"]
    assert events[-2]["last"] is True and events[-2]["text"] == "3200 samples"
    assert "SERVE_STREAM_IDLE_TIMEOUT_S" in events[-1]["error"] and events[-1]["code"] == 1008


def test_the_session_limit_ends_a_stream_after_its_last_final():
    route = Route(FakeModel(), SERVE_STREAM_MAX_SESSION_S="1")
    with route.open() as conn:
        started = time.monotonic()
        try:
            while time.monotonic() - started < 5:
                conn.send(SPEECH[:3200])
                time.sleep(0.1)
        except ConnectionClosed:
            pass
        events = until_close(conn)
        assert conn.close_code == 1008
    assert events[-2]["type"] == "final" and events[-2]["last"] is True
    assert "SERVE_STREAM_MAX_SESSION_S" in events[-1]["error"]


def test_streams_over_the_limit_are_told_to_try_again_later():
    route = Route(FakeModel(), SERVE_STREAM_MAX_SESSIONS="1")
    with route.open() as first:
        first.send(SPEECH)
        assert first.recv(timeout=10)  # admitted: a partial
        with route.open() as extra:
            assert until_close(extra) == [{"type": "error", "code": 1013, "error": (
                "this worker already serves 1 streams (SERVE_STREAM_MAX_SESSIONS); try again later")}]
            assert extra.close_code == 1013
        first.send(json.dumps({"type": "end"}))
        assert until_close(first)[-1]["last"] is True
    route.join()


def test_drain_sends_the_last_final_and_going_away():
    route = Route(FakeModel())
    with route.open() as conn:
        conn.send(SPEECH)
        assert json.loads(conn.recv(timeout=10))["type"] == "partial"
        route.hub.drain()
        events = until_close(conn)
        assert conn.close_code == 1001
    assert events[-1] == {"type": "final", "utterance": 0, "text": "3200 samples", "start": 0.0, "end": 0.2,
                          "words": [{"word": "x", "start": 0.0, "end": 0.2}], "last": True}
    route.join()
    with pytest.raises(Exception, match="503"):  # no new stream once draining
        route.open()
