"""WebSocket route for live transcription: `/invocations-bidirectional-stream`, what SageMaker's
InvokeEndpointWithBidirectionalStream connects to (the image declares it with the label
com.amazonaws.sagemaker.capabilities.bidirectional-streaming=true).

The gunicorn worker (serve/worker.py) recognises the request line `GET /invocations-bidirectional-stream`
before anything is read and hands the socket to `Hub.handle` on a thread pool of its own, so a session (which
can last an hour) never holds one of the SERVE_THREADS threads that answer /invocations. The WebSocket
protocol itself (handshake, framing, UTF-8 checks, ping -> pong, the closing handshake, size limits) is
websockets' threading implementation (websockets.sync.server; see README, Live transcription, for why).

Protocol (README, Live transcription, is the user's reference):
  client -> server
    text    {"type": "settings", "encoding": "pcm_s16le" | "ogg_opus", "sample_rate": 16000, "channels": 1,
             and any request option of /invocations (language, ...)}: optional, before the first audio frame
    binary  audio, frames of any size (without settings: 16 kHz mono 16-bit little-endian PCM)
    text    {"type": "end"}: no more audio; the server answers with the last final and closes (1000)
  server -> client (JSON text frames): partial, final (serve/streaming.py), error (then a close)
Options may also come in the query string (InvokeEndpointWithBidirectionalStream's ModelQueryString) or the
X-Amzn-SageMaker-Custom-Attributes header; the settings frame's win, as a JSON item's fields do.

Close codes: 1000 the stream ended; 1001 the server is stopping (after the last final); 1007 malformed
settings, options or audio; 1008 a time limit (session length, idle), after the last final; 1009 a frame
over SERVE_STREAM_MAX_FRAME_BYTES; 1011 the model failed; 1013 too many streams, or the model is overloaded
or down: try again later.

This module does not import torch (serve/streaming.py, imported when the first Hub is made, does).
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.parse
import uuid

from websockets.exceptions import ConnectionClosed
from websockets.sync import server as ws_server

from . import contract, metrics, options

log = logging.getLogger("serve")
_WS_LOG = logging.getLogger("serve.websocket")  # websockets' own: one line per connection at INFO; ours says more
_WS_LOG.setLevel(logging.WARNING)

PATH = "/invocations-bidirectional-stream"
REQUEST_LINE = b"GET " + PATH.encode()  # what the worker looks for; then " " or "?"

NORMAL, GOING_AWAY, INVALID_DATA, POLICY, TOO_BIG, INTERNAL, TRY_LATER = 1000, 1001, 1007, 1008, 1009, 1011, 1013
CLOSE_TIMEOUT_S = 2.0  # the closing handshake; SIGTERM leaves ~25 s in all
POLL_S = 0.25  # how often a waiting session looks for a shutdown
DRAIN_MAX = 256  # messages taken at once before the windows run (websockets queues 16 per connection anyway)
SETTINGS_FIELDS = ("type", "encoding", "sample_rate", "channels")


class StreamError(Exception):
    """Ends a session with an `error` event and a close code."""

    def __init__(self, message: str, code: int, final: bool = False):
        super().__init__(message)
        self.message, self.code, self.final = message, code, final


def is_stream_request(head: bytes) -> bool:
    """Whether the first bytes of a connection are this route's request line."""
    return head.startswith(REQUEST_LINE) and head[len(REQUEST_LINE): len(REQUEST_LINE) + 1] in (b" ", b"?")


def could_be_stream_request(head: bytes) -> bool:
    """Too few bytes yet to tell (a request line cut by the network)."""
    return len(head) <= len(REQUEST_LINE) and REQUEST_LINE.startswith(head)


class Hub:
    """A worker's live streams: admission (SERVE_STREAM_MAX_SESSIONS), the sessions, shutdown."""

    def __init__(self, model, settings):
        from . import streamaudio, streaming  # model side: torch

        self.model, self.settings = model, settings
        self.streamaudio, self.streaming = streamaudio, streaming
        self.config = streaming.StreamConfig.from_settings(settings)
        self.draining = threading.Event()
        self._lock = threading.Lock()
        self.active = 0
        # websockets builds its per-connection handler (handshake, then our session, then the closing handshake)
        # in serve(); the listening socket it is given is never used: connections come from gunicorn's.
        # Messages up to twice the frame limit are read so that a frame over it gets an `error` event; a bigger
        # one is refused by websockets itself (close 1009, with the limit in the reason).
        self._server = ws_server.serve(
            self._session, sock=socket.socket(), compression=None, ping_interval=None,
            close_timeout=CLOSE_TIMEOUT_S, open_timeout=10, max_size=2 * settings.stream_max_frame_bytes,
            process_request=self._process_request, server_header=None, logger=_WS_LOG)

    def handle(self, sock: socket.socket, address) -> None:
        """Serve one connection whose request line is this route's (on a stream pool thread); returns when the
        connection is closed."""
        sock.setblocking(True)
        # websockets.sync.server.Server.handler: the per-connection handler serve() made (websockets 17).
        self._server.handler(sock, address)

    def drain(self) -> None:
        """SIGTERM: every session sends its last final and closes with 1001; new ones are refused."""
        self.draining.set()

    def _process_request(self, connection, request):
        if urllib.parse.urlsplit(request.path).path != PATH:
            return connection.respond(404, f"no WebSocket route {request.path!r}; use {PATH}\n")
        if self.draining.is_set():
            return connection.respond(503, "the server is shutting down\n")
        return None

    def _session(self, connection) -> None:
        with self._lock:
            admitted = self.active < self.settings.stream_max_sessions
            self.active += admitted
        if not admitted:
            _send_error(connection, f"this worker already serves {self.settings.stream_max_sessions} streams "
                                    f"(SERVE_STREAM_MAX_SESSIONS); try again later", TRY_LATER)
            log.info("stream refused: %d streams open", self.settings.stream_max_sessions)
            return
        try:
            Session(self, connection).run()
        finally:
            with self._lock:
                self.active -= 1


class Session:
    def __init__(self, hub: Hub, connection):
        self.hub, self.conn, self.s = hub, connection, hub.settings
        self.meter = metrics.StreamMeter()
        headers = connection.request.headers
        self.id = (headers.get("X-Amzn-RequestId") or headers.get("X-Request-Id") or uuid.uuid4().hex[:16])[:64]
        self.started = time.monotonic()
        self.base: dict = {}
        self.item: dict = {}
        self.decoder = None
        self.transcriber = None
        self.bytes = 0
        self.close_code = NORMAL

    def run(self) -> None:
        try:
            self._run()
        except ConnectionClosed:
            self.close_code = 1006  # the client went away; nothing to answer
        except StreamError as exc:
            self._fail(exc)
        except contract.ServingError as exc:
            self._fail(_model_error(exc, self.s))
        except Exception:
            log.exception("stream id=%s failed", self.id)
            self._fail(StreamError("internal server error (see the server log)", INTERNAL))
        t = self.transcriber
        log.info("stream id=%s audio_s=%.2f bytes=%d utterances=%d windows=%d batch=%d duration_s=%.1f close=%d",
                 self.id, t.audio_seconds if t else 0.0, self.bytes, t.utterances if t else 0,
                 t.windows if t else 0, t.max_batch if t else 0, time.monotonic() - self.started, self.close_code)
        self.meter.closed(t.audio_seconds if t else 0.0, time.monotonic() - self.started, self.close_code)

    def _run(self) -> None:
        query = urllib.parse.urlsplit(self.conn.request.path).query
        try:
            self.base = options.request_level(urllib.parse.parse_qsl(query, keep_blank_values=True),
                                              self.conn.request.headers.get(options.HEADER))
        except contract.BadRequest as exc:
            raise StreamError(exc.message, INVALID_DATA) from None
        limit_at = self.started + self.s.stream_max_session_s
        last_frame = time.monotonic()
        while True:
            if self.hub.draining.is_set():
                self._finish(GOING_AWAY, "the server is shutting down")
                return
            now = time.monotonic()
            if now >= limit_at:
                raise StreamError(f"the stream reached its limit of {self.s.stream_max_session_s:g} s "
                                  f"(SERVE_STREAM_MAX_SESSION_S); open a new one to go on", POLICY, final=True)
            if now - last_frame >= self.s.stream_idle_timeout_s:
                raise StreamError(f"no frame for {self.s.stream_idle_timeout_s:g} s (SERVE_STREAM_IDLE_TIMEOUT_S); "
                                  f"send {{\"type\": \"end\"}} when the audio is over", POLICY, final=True)
            try:
                message = self.conn.recv(timeout=min(POLL_S, limit_at - now,
                                                     last_frame + self.s.stream_idle_timeout_s - now))
            except TimeoutError:
                continue
            if self._message(message) or self._drain():
                return
            if self.transcriber is not None:
                self._send(self.transcriber.advance(time.monotonic() + self.s.timeout_s))
            last_frame = time.monotonic()  # after the work: time spent transcribing is not the client's idling

    def _drain(self) -> bool:
        """Take every message that is already waiting (a stream whose windows took longer than real time), so
        that the next window catches up on all of its audio at once; True when the stream is over."""
        for i in range(DRAIN_MAX):
            try:
                message = self.conn.recv(timeout=0)
            except TimeoutError:
                self.meter.set_behind(i > 0)  # frames were waiting: this stream's audio comes faster than real time
                return False
            if self._message(message):
                return True
        self.meter.set_behind(True)
        return False

    def _message(self, message) -> bool:
        """A text or audio message (audio is only added; `advance` runs its windows); True when the stream is
        over."""
        if len(message) > self.s.stream_max_frame_bytes:
            raise StreamError(f"a frame of {len(message)} bytes is over the limit of "
                              f"{self.s.stream_max_frame_bytes} (SERVE_STREAM_MAX_FRAME_BYTES); send smaller "
                              f"frames", TOO_BIG)
        if isinstance(message, str):
            return self._text(message)
        self._audio(message)
        return False

    def _text(self, message: str) -> bool:
        """A settings or end message; True when the stream is over."""
        try:
            doc = json.loads(message)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise StreamError(f"a text frame is not JSON ({exc}); send {{\"type\": \"settings\", ...}} first or "
                              f"{{\"type\": \"end\"}} last, and audio as binary frames", INVALID_DATA) from None
        if not isinstance(doc, dict):
            raise StreamError("a text frame must hold a JSON object", INVALID_DATA)
        kind = doc.get("type", "settings")
        if kind == "end":
            if set(doc) - {"type"}:
                raise StreamError(f"{{\"type\": \"end\"}} takes no other field, got {sorted(set(doc) - {'type'})}",
                                  INVALID_DATA)
            self._finish(NORMAL, "")
            return True
        if kind != "settings":
            raise StreamError(f"unknown message type {kind!r}; text frames are {{\"type\": \"settings\", ...}} "
                              f"(before the audio) and {{\"type\": \"end\"}}", INVALID_DATA)
        if self.decoder is not None:
            raise StreamError("settings must come before the first audio frame", INVALID_DATA)
        self._settings(doc)
        return False

    def _settings(self, doc: dict) -> None:
        item = {}
        for name, value in doc.items():
            if name in SETTINGS_FIELDS:
                continue
            if name not in options.NAMES:
                raise StreamError(f"unknown settings field {name!r}; settings are {', '.join(SETTINGS_FIELDS[1:])} "
                                  f"and the request options {', '.join(options.NAMES)}", INVALID_DATA)
            try:
                item[name] = options.from_json(name, value, "settings: ")
            except contract.BadRequest as exc:
                raise StreamError(exc.message, INVALID_DATA) from None
        for name in ("sample_rate", "channels"):
            value = doc.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise StreamError(f"settings: {name} must be a whole number, got {value!r}", INVALID_DATA)
        encoding = doc.get("encoding", "pcm_s16le")
        try:
            decoder = self.hub.streamaudio.make_decoder(encoding, doc.get("sample_rate"), doc.get("channels"))
        except self.hub.streamaudio.StreamAudioError as exc:
            raise StreamError(f"settings: {exc}", INVALID_DATA) from None
        self.item = item
        self._start(decoder)

    def _start(self, decoder) -> None:
        try:
            self.transcriber = self.hub.streaming.Transcriber(self.hub.model, options.build(self.base, self.item),
                                                             self.hub.config)
        except contract.BadRequest as exc:
            raise StreamError(exc.message, INVALID_DATA) from None
        self.decoder = decoder

    def _audio(self, data: bytes) -> None:
        if self.decoder is None:
            self._start(self.hub.streamaudio.make_decoder("pcm_s16le"))
        self.bytes += len(data)
        try:
            samples = self.decoder.decode(data)
        except self.hub.streamaudio.StreamAudioError as exc:
            raise StreamError(str(exc), INVALID_DATA) from None
        self.transcriber.push(samples)

    def _finish(self, code: int, reason: str) -> None:
        """The last final (all audio committed), then the close."""
        if self.decoder is None:
            self._start(self.hub.streamaudio.make_decoder("pcm_s16le"))
        self.transcriber.push(self.decoder.flush())
        self._send(self.transcriber.finish(time.monotonic() + self.s.timeout_s))
        self.close_code = code
        self.conn.close(code, reason)

    def _fail(self, exc: StreamError) -> None:
        self.close_code = exc.code
        try:
            if exc.final and self.transcriber is not None:
                self._send(self.transcriber.finish(time.monotonic() + self.s.timeout_s))
        except (contract.ServingError, ConnectionClosed):
            pass
        _send_error(self.conn, exc.message, exc.code)

    def _send(self, events: list[dict]) -> None:
        for event in events:
            self.conn.send(json.dumps(event))


def _send_error(connection, message: str, code: int) -> None:
    try:
        connection.send(json.dumps({"type": "error", "error": message, "code": code}))
        connection.close(code, message.encode()[:120].decode(errors="ignore"))  # a reason is at most 123 bytes
    except ConnectionClosed:
        pass


def _model_error(exc: contract.ServingError, settings) -> StreamError:
    if isinstance(exc, contract.BadRequest):
        return StreamError(exc.message, INVALID_DATA)
    if isinstance(exc, contract.Timeout):
        return StreamError(f"the model did not keep up: a window (or a final's beam search) was not done within "
                           f"{settings.timeout_s} s "
                           f"(MODEL_SERVER_TIMEOUT); try again later", TRY_LATER)
    if isinstance(exc, contract.Unavailable):
        return StreamError(exc.message, TRY_LATER)
    log.error("%s: %s", type(exc).__name__, exc.message, exc_info=exc.__cause__)
    return StreamError(exc.message, INTERNAL)
