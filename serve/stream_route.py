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
  server -> client (JSON text frames): partial, final (`event_json`), error (then a close)
Options may also come in the query string (InvokeEndpointWithBidirectionalStream's ModelQueryString) or the
X-Amzn-SageMaker-Custom-Attributes header; the settings frame's win, as a JSON item's fields do.
The settings frame may also choose the endpointing (`endpointing` vad | ctc | manual, `vad_threshold`,
`silence_s`) and the G.711 encodings pcm_mulaw / pcm_alaw (8 kHz). A first message that is an OpenAI Realtime
client event (serve/realtime.py) hands the connection to that protocol instead, as does the path /v1/realtime;
our protocol is unchanged otherwise. A stream over SERVE_STREAM_MAX_BEHIND_S behind real time is closed with
1013 (FellBehind).

Close codes: 1000 the stream ended; 1001 the server is stopping (after the last final); the others are those
of serve/contract.py's errors (`close_code`), sent after an `error` event (serve/errors.py, `stream_event`):
1007 malformed settings, options or audio (BadRequest); 1008 a time limit (session length: LimitReached,
idle: RequestTimeout), after the last final; 1009 a frame over SERVE_STREAM_MAX_FRAME_BYTES
(PayloadTooLarge); 1011 the model failed (ModelFailure); 1013 too many streams, or the model is overloaded or
down, or the stream fell too far behind: try again later (Unavailable, Timeout, FellBehind).

The model is asked only what serve/contract.py declares: `model.open_stream(options)` gives a LiveStream,
which this route feeds decoded audio (serve/streamaudio.py) and whose Partial and Final events it writes as
JSON; tests/test_serve_stream_route.py drives it against a fake model. This module does not import torch.

One file because it is one protocol: the hub (admission, drain), the session's message loop and the wire
format of its events share the close codes and limits above, and none is used apart from the others.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.parse

from websockets.exceptions import ConnectionClosed
from websockets.sync import server as ws_server

from . import contract, errors, options, realtime
from .stream_session import GOING_AWAY, NORMAL, Handoff, StreamSession

log = logging.getLogger("serve")
_WS_LOG = logging.getLogger("serve.websocket")  # websockets' own: one line per connection at INFO; ours says more
_WS_LOG.setLevel(logging.WARNING)

PATH = "/invocations-bidirectional-stream"
REQUEST_LINE = b"GET " + PATH.encode()  # what the worker looks for; then " " or "?"
# OpenAI Realtime events (serve/realtime.py) at their own path too, for clients with a websocket_base_url.
REQUEST_LINES = (REQUEST_LINE, b"GET " + realtime.PATH.encode())

CLOSE_TIMEOUT_S = 2.0  # the closing handshake; SIGTERM leaves ~25 s in all
SETTINGS_FIELDS = ("type", "encoding", "sample_rate", "channels", "endpointing", "vad_threshold", "silence_s")
# Errors after which the audio already received is still transcribed: its last final, then the error.
AFTER_LAST_FINAL = (contract.LimitReached, contract.RequestTimeout)


def is_stream_request(head: bytes) -> bool:
    """Whether the first bytes of a connection are this route's request line (or /v1/realtime's)."""
    return any(head.startswith(line) and head[len(line): len(line) + 1] in (b" ", b"?") for line in REQUEST_LINES)


def could_be_stream_request(head: bytes) -> bool:
    """Too few bytes yet to tell (a request line cut by the network)."""
    return any(len(head) <= len(line) and line.startswith(head) for line in REQUEST_LINES)


class Hub:
    """A worker's live streams: admission (SERVE_STREAM_MAX_SESSIONS), the sessions, shutdown."""

    def __init__(self, model: contract.Model, settings):
        from . import streamaudio  # numpy and soxr: loaded in the worker, not in gunicorn's master

        self.model, self.settings = model, settings
        self.streamaudio = streamaudio
        if getattr(settings, "stream_endpointing", "ctc") == "vad":
            from . import streamvad  # serve/vad.py: torch (the model has it loaded already) and onnxruntime

            streamvad.load()  # once per worker, now: not while the first stream waits (a missing package fails here)
        self.timeout_message = (f"the model did not keep up: a window (or a final's beam search) was not done "
                                f"within {settings.timeout_s} s (MODEL_SERVER_TIMEOUT); try again later")
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
        if urllib.parse.urlsplit(request.path).path not in (PATH, realtime.PATH):
            return connection.respond(404, f"no WebSocket route {request.path!r}; use {PATH}\n")
        if self.draining.is_set():
            return connection.respond(503, "the server is shutting down\n")
        return None

    def _session(self, connection) -> None:
        with self._lock:
            admitted = self.active < self.settings.stream_max_sessions
            self.active += admitted
        openai = urllib.parse.urlsplit(connection.request.path).path == realtime.PATH
        if not admitted:
            refused = contract.Unavailable(f"this worker already serves {self.settings.stream_max_sessions} streams "
                                           f"(SERVE_STREAM_MAX_SESSIONS); try again later")
            if openai:
                realtime.refusal(connection, refused)
            else:
                _send_error(connection, errors.stream_event(refused))
            log.info("stream refused: %d streams open", self.settings.stream_max_sessions)
            return
        try:
            if openai:
                realtime.RealtimeSession(self, connection).run()
                return
            session = Session(self, connection)
            session.run()
            if session.handoff is not None:  # the first message chose the OpenAI Realtime protocol
                realtime.RealtimeSession(self, connection, session.handoff, session.started).run()
        finally:
            with self._lock:
                self.active -= 1


class Session(StreamSession):
    """Our protocol (the module docstring)."""

    idle_hint = '; send {"type": "end"} when the audio is over'

    def __init__(self, hub: Hub, connection):
        super().__init__(hub, connection)
        self.base: dict = {}
        self.item: dict = {}
        self.turns: dict = {}  # endpointing settings of the settings frame (set_turn_detection)

    def _run(self) -> None:
        query = urllib.parse.urlsplit(self.conn.request.path).query
        self.base = options.request_level(urllib.parse.parse_qsl(query, keep_blank_values=True),
                                          self.conn.request.headers.get(options.HEADER))
        self._loop()

    def _step(self) -> None:
        _check_behind(self.stream, self.s)
        self._send(self.stream.advance(time.monotonic() + self.s.timeout_s))

    def _message(self, message) -> bool:
        """A text or audio message (audio is only added; `advance` runs its windows); True when the stream is
        over."""
        if len(message) > self.s.stream_max_frame_bytes:
            raise contract.PayloadTooLarge(f"a frame of {len(message)} bytes is over the limit of "
                                           f"{self.s.stream_max_frame_bytes} (SERVE_STREAM_MAX_FRAME_BYTES); send "
                                           f"smaller frames")
        if isinstance(message, str):
            return self._text(message)
        self._audio(message)
        return False

    def _text(self, message: str) -> bool:
        """A settings or end message; True when the stream is over."""
        try:
            doc = json.loads(message)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise contract.BadRequest(f"a text frame is not JSON ({exc}); send {{\"type\": \"settings\", ...}} "
                                      f"first or {{\"type\": \"end\"}} last, and audio as binary frames") from None
        if not isinstance(doc, dict):
            raise contract.BadRequest("a text frame must hold a JSON object")
        kind = doc.get("type", "settings")
        if self.stream is None and not self.bytes and kind in realtime.CLIENT_EVENTS + realtime.NOT_SUPPORTED:
            raise Handoff(message)
        if kind == "end":
            if set(doc) - {"type"}:
                raise contract.BadRequest(f"{{\"type\": \"end\"}} takes no other field, got "
                                          f"{sorted(set(doc) - {'type'})}")
            self._finish(NORMAL, "")
            return True
        if kind != "settings":
            raise contract.BadRequest(f"unknown message type {kind!r}; text frames are {{\"type\": \"settings\", "
                                      f"...}} (before the audio) and {{\"type\": \"end\"}}")
        if self.decoder is not None:
            raise contract.BadRequest("settings must come before the first audio frame")
        self._settings(doc)
        return False

    def _settings(self, doc: dict) -> None:
        item = {}
        for name, value in doc.items():
            if name in SETTINGS_FIELDS:
                continue
            if name not in options.NAMES:
                raise contract.BadRequest(f"unknown settings field {name!r}; settings are "
                                          f"{', '.join(SETTINGS_FIELDS[1:])} and the request options "
                                          f"{', '.join(options.NAMES)}")
            item[name] = options.from_json(name, value, "settings: ")
        for name in ("sample_rate", "channels"):
            value = doc.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise contract.BadRequest(f"settings: {name} must be a whole number, got {value!r}")
        self.turns = _turn_settings(doc, self.s)
        encoding = doc.get("encoding", "pcm_s16le")
        try:
            decoder = self.hub.streamaudio.make_decoder(encoding, doc.get("sample_rate"), doc.get("channels"))
        except self.hub.streamaudio.StreamAudioError as exc:
            raise contract.BadRequest(f"settings: {exc}") from None
        self.item = item
        self._start(decoder)

    def _start(self, decoder) -> None:
        self.stream = self.hub.model.open_stream(options.build(self.base, self.item))
        if self.turns:
            self.stream.set_turn_detection(**self.turns)
        self.decoder = decoder

    def _audio(self, data: bytes) -> None:
        if self.decoder is None:
            self._start(self.hub.streamaudio.make_decoder("pcm_s16le"))
        self.bytes += len(data)
        try:
            samples = self.decoder.decode(data)
        except self.hub.streamaudio.StreamAudioError as exc:
            raise contract.BadRequest(str(exc)) from None
        self.stream.push(samples)

    def _finish(self, code: int, reason: str) -> None:
        """The last final (all audio committed), then the close."""
        if self.decoder is None:
            self._start(self.hub.streamaudio.make_decoder("pcm_s16le"))
        self.stream.push(self.decoder.flush())
        self._send(self.stream.finish(time.monotonic() + self.s.timeout_s))
        self.close_code = code
        self.conn.close(code, reason)

    def _fail(self, exc: contract.ServingError) -> None:
        self.close_code = exc.close_code
        try:
            if isinstance(exc, AFTER_LAST_FINAL) and self.stream is not None:
                self._send(self.stream.finish(time.monotonic() + self.s.timeout_s))
        except (contract.ServingError, ConnectionClosed):
            pass
        _send_error(self.conn, errors.stream_event(exc, self.hub.timeout_message))

    def _send(self, events: list[contract.Event]) -> None:
        for event in events:
            if isinstance(event, (contract.Partial, contract.Final)):  # VAD speech events: the Realtime protocol's
                self.conn.send(json.dumps(event_json(event)))


def _turn_settings(doc: dict, settings) -> dict:
    """The settings frame's endpointing fields as LiveStream.set_turn_detection's arguments ({} for none):
    endpointing vad | ctc | manual, vad_threshold (0..1), silence_s (0.1..10 s)."""
    if not any(name in doc for name in ("endpointing", "vad_threshold", "silence_s")):
        return {}
    mode = doc.get("endpointing", settings.stream_endpointing)
    if mode not in ("vad", "ctc", "manual"):
        raise contract.BadRequest(f"settings: endpointing must be vad, ctc or manual, got {mode!r}")
    out = {"mode": mode}
    for name, key, low, high in (("vad_threshold", "threshold", 0.0, 1.0), ("silence_s", "silence_s", 0.1, 10.0)):
        value = doc.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise contract.BadRequest(f"settings: {name} must be a number from {low:g} to {high:g}, got {value!r}")
        out[key] = float(value)
    return out


def _check_behind(stream, settings) -> None:
    """Back-pressure: a stream whose audio waits over SERVE_STREAM_MAX_BEHIND_S for its windows is closed."""
    limit = settings.stream_max_behind_s
    if stream.behind_s > limit:
        raise contract.FellBehind(f"the stream is {stream.behind_s:.1f} s behind real time, over the limit of "
                                  f"{limit:g} s (SERVE_STREAM_MAX_BEHIND_S): send audio no faster than real time, "
                                  f"or try again when the server is less busy")


def event_json(event: contract.Event) -> dict:
    """A stream event as its JSON text frame (README, Live transcription):
        {"type": "partial", "utterance": 0, "text": "the red ca", "stable": "the red", "start": 0.0,
         "end": 1.86, "behind_s": 0.0}
        {"type": "final", "utterance": 0, "text": "the red cat", "start": 0.0, "end": 2.4,
         "words": [{"word": "the", "start": 0.12, "end": 0.22}, ...], "last": false}"""
    if isinstance(event, contract.Partial):
        return {"type": "partial", "utterance": event.utterance, "text": event.text, "stable": event.stable,
                "start": event.start, "end": event.end, "behind_s": event.behind_s}
    if isinstance(event, contract.Final):
        return {"type": "final", "utterance": event.utterance, "text": event.text, "start": event.start,
                "end": event.end, "words": [{"word": w.word, "start": w.start, "end": w.end} for w in event.words],
                "last": event.last}
    raise TypeError(f"not a stream event: {event!r}")


def _send_error(connection, event: dict) -> None:
    """An `error` event (errors.stream_event), then the close with its code."""
    try:
        connection.send(json.dumps(event))
        # A close reason is at most 123 bytes.
        connection.close(event["code"], event["error"].encode()[:120].decode(errors="ignore"))
    except ConnectionClosed:
        pass
