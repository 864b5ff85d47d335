"""What every live-stream protocol shares on one WebSocket connection (serve/stream_route.py: ours;
serve/realtime.py: OpenAI Realtime events): the session's id and meter, the message loop with its session-length,
idle and shutdown checks, taking the messages already waiting at once (so that a stream behind real time catches
up in one window), and the log line when it ends.

A protocol subclasses `StreamSession` and supplies `_message(message) -> bool` (True: the stream is over),
`_step()` (what runs after the messages of a turn, e.g. LiveStream.advance), `_finish(code, reason)` and
`_fail(exc)`; its `_run` sets itself up and calls `_loop()`. This module does not import torch.
"""
from __future__ import annotations

import logging
import time
import uuid

from websockets.exceptions import ConnectionClosed

from . import contract, errors, metrics

log = logging.getLogger("serve")

NORMAL, GOING_AWAY = 1000, 1001  # the closes without an error; the others are the errors' close_code
POLL_S = 0.25  # how often a waiting session looks for a shutdown
DRAIN_MAX = 256  # messages taken at once before the windows run (websockets queues 16 per connection anyway)


class Handoff(Exception):
    """The first message belongs to another protocol: `run` returns with it in `handoff` (serve/stream_route.py
    gives the connection to serve/realtime.py)."""

    def __init__(self, message: str):
        super().__init__("handoff")
        self.message = message


class StreamSession:
    """One live stream on a WebSocket connection of the hub (model, settings, draining, streamaudio)."""

    protocol = ""  # the log line's protocol= field ("" for ours)
    noun = "stream"  # "the stream reached its limit", "the session ..."
    unit = "frame"  # what the idle timeout waits for
    idle_hint = ""  # what the idle timeout's message tells the client to do

    def __init__(self, hub, connection, started: float | None = None):
        self.hub, self.conn, self.s = hub, connection, hub.settings
        self.meter = metrics.StreamMeter()
        headers = connection.request.headers
        self.id = (headers.get("X-Amzn-RequestId") or headers.get("X-Request-Id") or uuid.uuid4().hex[:16])[:64]
        self.started = started or time.monotonic()
        self.stream: contract.LiveStream | None = None
        self.decoder = None
        self.bytes = 0
        self.close_code = NORMAL
        self.handoff: str | None = None

    def run(self) -> None:
        try:
            self._run()
        except Handoff as handoff:
            self.handoff = handoff.message
            return
        except ConnectionClosed:
            self.close_code = 1006  # the client went away; nothing to answer
        except contract.ServingError as exc:
            if exc.close_code == contract.ModelFailure.close_code:
                errors.log_failure(exc)
            self._fail(exc)
        except Exception:
            log.exception("stream id=%s failed", self.id)
            self._fail(contract.ServingError(errors.INTERNAL_MESSAGE))
        t = self.stream
        log.info("stream id=%s%s audio_s=%.2f bytes=%d utterances=%d windows=%d batch=%d duration_s=%.1f close=%d",
                 self.id, f" protocol={self.protocol}" if self.protocol else "", t.audio_seconds if t else 0.0,
                 self.bytes, t.utterances if t else 0, t.windows if t else 0, t.max_batch if t else 0,
                 time.monotonic() - self.started, self.close_code)
        self.meter.closed(t.audio_seconds if t else 0.0, time.monotonic() - self.started, self.close_code)

    def _run(self) -> None:
        self._loop()

    def _loop(self) -> None:
        """Messages until the stream is over, the server drains (GOING_AWAY after the last transcript), the
        session reaches SERVE_STREAM_MAX_SESSION_S (LimitReached) or no message comes for
        SERVE_STREAM_IDLE_TIMEOUT_S (RequestTimeout)."""
        limit_at = self.started + self.s.stream_max_session_s
        last_frame = time.monotonic()
        while True:
            if self.hub.draining.is_set():
                self._finish(GOING_AWAY, "the server is shutting down")
                return
            now = time.monotonic()
            if now >= limit_at:
                raise contract.LimitReached(f"the {self.noun} reached its limit of {self.s.stream_max_session_s:g} s "
                                            f"(SERVE_STREAM_MAX_SESSION_S); open a new one to go on")
            if now - last_frame >= self.s.stream_idle_timeout_s:
                raise contract.RequestTimeout(f"no {self.unit} for {self.s.stream_idle_timeout_s:g} s "
                                              f"(SERVE_STREAM_IDLE_TIMEOUT_S){self.idle_hint}")
            try:
                message = self.conn.recv(timeout=min(POLL_S, limit_at - now,
                                                     last_frame + self.s.stream_idle_timeout_s - now))
            except TimeoutError:
                continue
            if self._message(message) or self._drain():
                return
            if self.stream is not None:
                self._step()
            last_frame = time.monotonic()  # after the work: time spent transcribing is not the client's idling

    def _drain(self) -> bool:
        """Take every message that is already waiting (a stream whose windows took longer than real time), so
        that the next window catches up on all of its audio at once; True when the stream is over."""
        for i in range(DRAIN_MAX):
            try:
                message = self.conn.recv(timeout=0)
            except TimeoutError:
                self.meter.set_behind(i > 0)  # messages were waiting: this stream's audio comes faster than real time
                return False
            if self._message(message):
                return True
        self.meter.set_behind(True)
        return False

    # The protocol's ---------------------------------------------------------------------------------------------
    def _message(self, message) -> bool:
        raise NotImplementedError

    def _step(self) -> None:
        raise NotImplementedError

    def _finish(self, code: int, reason: str) -> None:
        raise NotImplementedError

    def _fail(self, exc: contract.ServingError) -> None:
        raise NotImplementedError
