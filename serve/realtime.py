"""OpenAI Realtime transcription events over a live stream: another front door over the contract's LiveStream.

The WebSocket route (serve/stream_route.py) hands a connection here when its path is `/v1/realtime` (what
OpenAI's clients connect to under a `websocket_base_url`) or when, on `/invocations-bidirectional-stream`, the
first message is a JSON event whose `type` is one of CLIENT_EVENTS. The session feeds decoded audio to
`model.open_stream(options)` (serve/contract.py) and writes its events as OpenAI's server events; it asks the
model for nothing else. docs/streaming.md, "Realtime (OpenAI events)", is the user's reference.

Both shapes of OpenAI's reference are read (the `openai` package's types: openai.types.realtime, the GA API,
and openai.types.beta.realtime):
  GA    {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000} | {"type": "audio/pcmu"} | {"type": "audio/pcma"},
            "transcription": {"model", "language", "prompt"}, "turn_detection": {"type": "server_vad",
            "threshold", "prefix_padding_ms", "silence_duration_ms"} | null, "noise_reduction": null}}}}
        -> session.updated
  beta  {"type": "transcription_session.update", "session": {"input_audio_format": "pcm16" | "g711_ulaw" |
            "g711_alaw", "input_audio_transcription": {...}, "turn_detection": {...} | null}}
        -> transcription_session.updated
  input_audio_buffer.append {"audio": base64} / .commit / .clear
        -> input_audio_buffer.speech_started / speech_stopped / committed / cleared (with item_id),
           conversation.item.input_audio_transcription.delta (the utterance's newly committed words) and
           .completed (its final, with "words": [{word, start, end, confidence}] as an extension field),
           input_audio_buffer.behind (extension: the stream is behind real time), error.
pcm16 is 24 kHz (OpenAI's rate), or 16 kHz with "rate": 16000 (an extension); G.711 is 8 kHz.
A bad event gets an `error` event and the session goes on; a limit, a model failure or SIGTERM ends it
(the pending transcript first where there is audio for it), with the close codes of serve/stream_route.py.

One file because it is one protocol: reading the session configuration, the event loop and the mapping of
LiveStream events to item ids share one session's state (its format, turn detection, items), and none of the
parts is used without the others. This module does not import torch.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import urllib.parse
import uuid
from dataclasses import dataclass

from websockets.exceptions import ConnectionClosed

from . import contract, errors, options
from .stream_session import GOING_AWAY, NORMAL, StreamSession

log = logging.getLogger("serve")

PATH = "/v1/realtime"
CLIENT_EVENTS = ("session.update", "transcription_session.update", "input_audio_buffer.append",
                 "input_audio_buffer.commit", "input_audio_buffer.clear")
# Client events of the API that a transcription-only server does not take (answered with an error event).
NOT_SUPPORTED = ("conversation.item.create", "conversation.item.delete", "conversation.item.retrieve",
                 "conversation.item.truncate", "response.create", "response.cancel", "output_audio_buffer.clear")
FORMATS = {"pcm16": ("pcm_s16le", 24_000), "g711_ulaw": ("pcm_mulaw", 8_000), "g711_alaw": ("pcm_alaw", 8_000)}
GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
PCM_RATES = (16_000, 24_000)
BEHIND_REPORT_S = 1.0  # behind real time by more than this: an input_audio_buffer.behind event (at most 1/s)


class BadEvent(contract.BadRequest):
    """A client event that cannot be honoured: an error event, and the session goes on."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.param, self.error_code = param, code


def is_client_event(message) -> bool:
    """Whether a first WebSocket message is an OpenAI Realtime client event (a JSON object with such a type)."""
    if not isinstance(message, str) or '"type"' not in message[:4096]:
        return False
    try:
        doc = json.loads(message)
    except (ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and (doc.get("type") in CLIENT_EVENTS or doc.get("type") in NOT_SUPPORTED)


@dataclass
class TurnDetection:
    """server_vad (threshold, prefix_padding_ms, silence_duration_ms) or None: the client commits turns."""
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500

    def json(self) -> dict:
        return {"type": "server_vad", "threshold": self.threshold, "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms}


@dataclass
class _Item:
    id: str
    committed: bool = False
    said: str = ""  # the text sent in its deltas so far


def _eid() -> str:
    return "event_" + uuid.uuid4().hex[:20]


class RealtimeSession(StreamSession):
    """One OpenAI Realtime transcription session on a WebSocket connection (the hub's: model, settings,
    draining, streamaudio). `first`: the message that chose this protocol, when there was one."""

    protocol = "realtime"
    noun = "session"
    unit = "event"

    def __init__(self, hub, connection, first: str | None = None, started: float | None = None):
        super().__init__(hub, connection, started)
        self.first = first
        self.session_id = "sess_" + uuid.uuid4().hex[:20]
        self.beta = False  # the client speaks transcription_session.* (answered in kind)
        self.format = "pcm16"
        self.rate = 24_000
        self.transcription: dict = {"model": "", "language": None, "prompt": ""}
        self.item_options: dict = {}
        self.turns: TurnDetection | None = TurnDetection(
            getattr(self.s, "stream_vad_threshold", 0.5),
            round(1000 * getattr(self.s, "stream_vad_prefix_padding_s", 0.3)),
            round(1000 * self.s.stream_silence_s))
        self.base: dict = {}
        self.items: dict[int, _Item] = {}
        self.last_item: str | None = None
        self.appended = 0  # bytes appended since the last commit or clear
        self.reported_behind = 0.0

    # The loop ------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        query = urllib.parse.urlsplit(self.conn.request.path).query
        self.base = options.request_level([(k, v) for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True)
                                           if k not in ("model", "intent")],
                                          self.conn.request.headers.get(options.HEADER))
        self._send({"type": "transcription_session.created" if self._beta_first() else "session.created",
                    "session": self._session_json()})
        if self.first is not None and self._message(self.first):
            return
        self._loop()

    def _step(self) -> None:
        self._behind()
        self._events(self.stream.advance(self._deadline()))

    def _beta_first(self) -> bool:
        try:
            return json.loads(self.first).get("type") == "transcription_session.update" if self.first else False
        except (ValueError, AttributeError):
            return False

    def _deadline(self) -> float:
        return time.monotonic() + self.s.timeout_s

    def _behind(self) -> None:
        """Back-pressure: audio waiting for its windows beyond SERVE_STREAM_MAX_BEHIND_S ends the session (its
        memory would grow); more than BEHIND_REPORT_S is told to the client, at most once a second."""
        behind = self.stream.behind_s
        limit = self.s.stream_max_behind_s
        if behind > limit:
            raise contract.FellBehind(f"the stream is {behind:.1f} s behind real time, over the limit of {limit:g} s "
                                      f"(SERVE_STREAM_MAX_BEHIND_S): send audio no faster than real time, or "
                                      f"try again when the server is less busy")
        now = time.monotonic()
        if behind > BEHIND_REPORT_S and now - self.reported_behind >= 1.0:
            self.reported_behind = now
            self._send({"type": "input_audio_buffer.behind", "behind_s": round(behind, 3), "limit_s": limit})

    # Client events --------------------------------------------------------------------------------------------
    def _message(self, message) -> bool:
        """One client message; True when the session is over. A bad event is answered with an error event."""
        event_id = None
        try:
            if isinstance(message, bytes):
                raise BadEvent("binary frames are not part of this protocol: send audio as input_audio_buffer.append "
                               "events (base64)", code="invalid_event")
            if len(message) > self.s.stream_max_frame_bytes:
                raise BadEvent(f"an event of {len(message)} bytes is over the limit of {self.s.stream_max_frame_bytes}"
                               f" (SERVE_STREAM_MAX_FRAME_BYTES); append audio in smaller pieces", code="event_too_big")
            try:
                doc = json.loads(message)
            except (ValueError, RecursionError) as exc:
                raise BadEvent(f"the event is not JSON ({exc})", code="invalid_json") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
                raise BadEvent("an event must be a JSON object with a string `type`", "type", "invalid_event")
            event_id = doc.get("event_id") if isinstance(doc.get("event_id"), str) else None
            self._event(doc)
        except BadEvent as exc:
            self._send({"type": "error", "error": {"type": "invalid_request_error", "code": exc.error_code,
                                                   "message": exc.message, "param": exc.param,
                                                   "event_id": event_id}})
        except contract.BadRequest as exc:  # an option or language the model refuses: the session goes on
            self._send({"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_value",
                                                   "message": exc.message, "param": None, "event_id": event_id}})
        return False

    def _event(self, doc: dict) -> None:
        kind = doc["type"]
        if kind in ("session.update", "transcription_session.update"):
            self.beta = kind == "transcription_session.update"
            session = doc.get("session")
            if not isinstance(session, dict):
                raise BadEvent("`session` must be an object", "session")
            self._update(session)
            self._send({"type": "transcription_session.updated" if self.beta else "session.updated",
                        "session": self._session_json()})
        elif kind == "input_audio_buffer.append":
            self._append(doc)
        elif kind == "input_audio_buffer.commit":
            self._commit()
        elif kind == "input_audio_buffer.clear":
            if self.stream is not None:
                self._events(self.stream.clear(self._deadline()))
            for utterance in [u for u, item in self.items.items() if not item.committed]:
                del self.items[utterance]  # the cleared utterance's (speech_started, deltas): it has no transcript
            self.appended = 0
            self._send({"type": "input_audio_buffer.cleared"})
        elif kind in NOT_SUPPORTED:
            raise BadEvent(f"{kind!r} is not supported: this server transcribes (a transcription session); it "
                           f"takes {', '.join(CLIENT_EVENTS)}", "type", "unsupported_event")
        else:
            raise BadEvent(f"unknown event type {kind!r}; this server takes {', '.join(CLIENT_EVENTS)}", "type",
                           "invalid_event_type")

    def _update(self, session: dict) -> None:
        """Read a session object (GA or beta shape) fully before changing anything: a bad one changes nothing."""
        if self.beta:
            allowed = {"input_audio_format", "input_audio_transcription", "turn_detection",
                       "input_audio_noise_reduction", "include", "modalities", "client_secret", "object", "id"}
            _known(session, allowed, "session")
            fmt = session.get("input_audio_format", self.format)
            transcription = session.get("input_audio_transcription", None)
            turns = session["turn_detection"] if "turn_detection" in session else ...
            noise = session.get("input_audio_noise_reduction")
            rate = FORMATS.get(fmt, (None, None))[1] if isinstance(fmt, str) else None
            path = "session."
        else:
            _known(session, {"type", "audio", "include", "id", "object", "expires_at", "client_secret"}, "session")
            if session.get("type", "transcription") != "transcription":
                raise BadEvent(f"session.type {session.get('type')!r} is not supported: this server runs "
                               f"transcription sessions (\"type\": \"transcription\")", "session.type")
            audio = session.get("audio") or {}
            _object(audio, "session.audio")
            _known(audio, {"input"}, "session.audio")
            inp = audio.get("input") or {}
            _object(inp, "session.audio.input")
            _known(inp, {"format", "transcription", "turn_detection", "noise_reduction"}, "session.audio.input")
            fmt, rate = self.format, self.rate
            if "format" in inp:
                f = inp["format"]
                _object(f, "session.audio.input.format")
                _known(f, {"type", "rate"}, "session.audio.input.format")
                fmt = GA_FORMATS.get(f.get("type", "audio/pcm"))
                if fmt is None:
                    raise BadEvent(f"audio format {f.get('type')!r} is not supported; use one of "
                                   f"{', '.join(GA_FORMATS)}", "session.audio.input.format.type")
                rate = FORMATS[fmt][1]
                if fmt == "pcm16":
                    rate = f.get("rate", 24_000)
                    if rate not in PCM_RATES:
                        raise BadEvent(f"audio/pcm rate {rate!r} is not supported; use 24000 (or 16000)",
                                       "session.audio.input.format.rate")
                elif "rate" in f:
                    raise BadEvent(f"{f['type']} is 8 kHz; leave rate out", "session.audio.input.format.rate")
            transcription = inp.get("transcription")
            turns = inp["turn_detection"] if "turn_detection" in inp else ...
            noise = inp.get("noise_reduction")
            path = "session.audio.input."
        if fmt not in FORMATS:
            raise BadEvent(f"input audio format {fmt!r} is not supported; use one of {', '.join(FORMATS)}",
                           path + ("format" if not self.beta else "input_audio_format"))
        if noise is not None:
            raise BadEvent("noise reduction is not supported; leave it out or null",
                           path + ("noise_reduction" if not self.beta else "input_audio_noise_reduction"))
        new_turns = self.turns if turns is ... else _turns(turns, path + "turn_detection")
        new_transcription, item = self.transcription, self.item_options
        if transcription is not None:
            new_transcription, item = _transcription(transcription, path + (
                "transcription" if not self.beta else "input_audio_transcription"))
        if self.stream is not None:
            if (fmt, rate) != (self.format, self.rate):
                raise BadEvent("the input audio format cannot change after audio was appended; open a new session",
                               path + "format")
            if item != self.item_options:
                raise BadEvent("the transcription settings cannot change after audio was appended; open a new "
                               "session", path + "transcription")
        self.format, self.rate = fmt, rate
        self.transcription, self.item_options = new_transcription, item
        self.turns = new_turns
        if self.stream is not None:
            self._turn_detection()

    def _turn_detection(self) -> None:
        turns = self.turns
        if turns is None:
            self.stream.set_turn_detection("manual")
        else:
            self.stream.set_turn_detection("vad", threshold=turns.threshold,
                                           prefix_padding_s=turns.prefix_padding_ms / 1000,
                                           silence_s=turns.silence_duration_ms / 1000)

    def _open(self) -> None:
        encoding, _ = FORMATS[self.format]
        self.decoder = self.hub.streamaudio.make_decoder(encoding, self.rate)
        self.stream = self.hub.model.open_stream(options.build(self.base, self.item_options))
        self._turn_detection()

    def _append(self, doc: dict) -> None:
        _known(doc, {"type", "event_id", "audio"}, "")
        audio = doc.get("audio")
        if not isinstance(audio, str):
            raise BadEvent("input_audio_buffer.append needs `audio`: base64 of the audio bytes", "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise BadEvent("`audio` is not valid base64", "audio") from None
        if self.stream is None:
            self._open()
        self.bytes += len(data)
        self.appended += len(data)
        try:
            samples = self.decoder.decode(data)
        except self.hub.streamaudio.StreamAudioError as exc:
            raise BadEvent(str(exc), "audio") from None
        self.stream.push(samples)

    def _commit(self) -> None:
        if self.stream is None or not self.appended:
            raise BadEvent("the input audio buffer is empty: append audio before committing it", None,
                           "input_audio_buffer_commit_empty")
        self.appended = 0
        # The resampler's last samples belong to this turn: flushed, and a fresh one for the next turn.
        self.stream.push(self.decoder.flush())
        self.decoder = self.hub.streamaudio.make_decoder(FORMATS[self.format][0], self.rate)
        self._events(self.stream.commit(self._deadline()), committing=True)

    def _finish(self, code: int, reason: str) -> None:
        """The pending transcript (when there is audio for it), then the close."""
        if self.stream is not None:
            self.stream.push(self.decoder.flush())
            self._events(self.stream.finish(self._deadline()))
        self.close_code = code
        self.conn.close(code, reason)

    def _fail(self, exc: contract.ServingError) -> None:
        self.close_code = exc.close_code
        try:
            if isinstance(exc, (contract.LimitReached, contract.RequestTimeout)) and self.stream is not None:
                self._events(self.stream.finish(self._deadline()))
        except (contract.ServingError, ConnectionClosed):
            pass
        message = errors.message_of(exc, getattr(self.hub, "timeout_message", ""))
        kind = "invalid_request_error" if isinstance(exc, contract.BadRequest) else "server_error"
        try:
            self._send({"type": "error", "error": {"type": kind, "code": _code(exc), "message": message,
                                                   "param": None, "event_id": None}})
            self.conn.close(exc.close_code, message.encode()[:120].decode(errors="ignore"))
        except ConnectionClosed:
            pass

    # LiveStream events -> server events ----------------------------------------------------------------------
    def _item(self, utterance: int) -> _Item:
        item = self.items.get(utterance)
        if item is None:
            item = self.items[utterance] = _Item("item_" + uuid.uuid4().hex[:20])
        return item

    def _committed(self, utterance: int) -> None:
        item = self._item(utterance)
        if not item.committed:
            item.committed = True
            self._send({"type": "input_audio_buffer.committed", "previous_item_id": self.last_item,
                        "item_id": item.id})
            self.last_item = item.id

    def _events(self, events, committing: bool = False) -> None:
        for e in events:
            if isinstance(e, contract.SpeechStarted):
                self._send({"type": "input_audio_buffer.speech_started", "audio_start_ms": round(e.start * 1000),
                            "item_id": self._item(e.utterance).id})
            elif isinstance(e, contract.SpeechStopped):
                item = self._item(e.utterance)
                self._send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": round(e.end * 1000),
                            "item_id": item.id})
                self._committed(e.utterance)
            elif isinstance(e, contract.Partial):
                if not e.stable:
                    continue
                item = self._item(e.utterance)
                if e.stable.startswith(item.said) and len(e.stable) > len(item.said):
                    delta = e.stable[len(item.said):]
                    if item.said and not delta.startswith(" "):
                        continue  # a word still growing: wait for its end
                    item.said = e.stable
                    self._send({"type": "conversation.item.input_audio_transcription.delta", "item_id": item.id,
                                "content_index": 0, "delta": delta})
            elif isinstance(e, contract.Final):
                self._final(e, committing)

    def _final(self, e, committing: bool) -> None:
        if not e.text and e.utterance not in self.items and not committing:
            return  # a pause with no speech in it: no item
        self._committed(e.utterance)
        item = self.items.pop(e.utterance)
        confidences = list(getattr(e, "confidences", ()) or ())
        words = [{"word": w.word, "start": w.start, "end": w.end,
                  "confidence": confidences[i] if i < len(confidences) else None} for i, w in enumerate(e.words)]
        self._send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item.id,
                    "content_index": 0, "transcript": e.text,
                    "usage": {"type": "duration", "seconds": round(e.audio_end - e.audio_start, 3)},
                    "start": e.start, "end": e.end, "audio_start": e.audio_start, "audio_end": e.audio_end,
                    "words": words})

    # Output ------------------------------------------------------------------------------------------------
    def _session_json(self) -> dict:
        turns = self.turns.json() if self.turns else None
        transcription = {**self.transcription, **self.item_options}
        if self.beta or (self.first is not None and self._beta_first()):
            return {"id": self.session_id, "object": "realtime.transcription_session",
                    "input_audio_format": self.format, "input_audio_transcription": transcription,
                    "turn_detection": turns, "input_audio_noise_reduction": None, "modalities": ["text"]}
        fmt = {"type": "audio/pcm", "rate": self.rate} if self.format == "pcm16" else \
            {"type": {v: k for k, v in GA_FORMATS.items()}[self.format]}
        return {"type": "transcription", "id": self.session_id, "object": "realtime.transcription_session",
                "audio": {"input": {"format": fmt, "transcription": transcription, "turn_detection": turns,
                                    "noise_reduction": None}}, "include": []}

    def _send(self, event: dict) -> None:
        self.conn.send(json.dumps({"event_id": _eid(), **event}))


def _object(value, param: str) -> None:
    if not isinstance(value, dict):
        raise BadEvent(f"`{param}` must be an object", param)


def _known(doc: dict, allowed: set, where: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        name = f"{where}.{unknown[0]}" if where else unknown[0]
        raise BadEvent(f"unknown parameter {name!r}", name, "unknown_parameter")


def _turns(value, param: str) -> TurnDetection | None:
    if value is None:
        return None
    _object(value, param)
    _known(value, {"type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
                   "interrupt_response", "idle_timeout_ms", "eagerness"}, param)
    if value.get("type", "server_vad") != "server_vad":
        raise BadEvent(f"turn detection {value.get('type')!r} is not supported; use server_vad, or null for turns "
                       f"the client commits", param + ".type")
    default = TurnDetection()
    threshold = value.get("threshold", default.threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise BadEvent(f"threshold must be a number between 0 and 1, got {threshold!r}", param + ".threshold")
    out = [float(threshold)]
    for name, low, high in (("prefix_padding_ms", 0, 5000), ("silence_duration_ms", 100, 10_000)):
        v = value.get(name, getattr(default, name))
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise BadEvent(f"{name} must be a whole number from {low} to {high}, got {v!r}", f"{param}.{name}")
        out.append(v)
    return TurnDetection(*out)


def _transcription(value, param: str) -> tuple[dict, dict]:
    """The transcription object: (what session events echo, the request options it sets). `model` names
    nothing here (one model per server); `language` is the language option; `prompt` must be empty (a CTC
    model takes none); any request option of /invocations (decoder, hotwords, ...) may be given too."""
    _object(value, param)
    shown = {"model": value.get("model") or "", "language": value.get("language"), "prompt": value.get("prompt") or ""}
    item = {}
    for name, v in value.items():
        if name == "model":
            if v is not None and not isinstance(v, str):
                raise BadEvent("model must be a string", param + ".model")
        elif name == "prompt":
            if v:
                raise BadEvent("prompt is not supported: a CTC model takes no prompt; name words to favour with "
                               "`hotwords` (with an LM) instead", param + ".prompt")
        elif name == "language":
            if v is not None:
                item["language"] = options.from_json("language", v, param + ": ")
        elif name in options.NAMES:
            item[name] = options.from_json(name, v, param + ": ")
            shown[name] = v
        else:
            raise BadEvent(f"unknown parameter '{param}.{name}'; it takes model, language, prompt and the request "
                           f"options {', '.join(options.NAMES)}", f"{param}.{name}", "unknown_parameter")
    return shown, item


def refusal(connection, exc: contract.ServingError) -> None:
    """A connection refused before its session starts (SERVE_STREAM_MAX_SESSIONS): an error event in this
    protocol's shape, then the close."""
    try:
        connection.send(json.dumps({"event_id": _eid(), "type": "error", "error": {
            "type": "server_error", "code": _code(exc), "message": exc.message, "param": None, "event_id": None}}))
        connection.close(exc.close_code, exc.message.encode()[:120].decode(errors="ignore"))
    except ConnectionClosed:
        pass


def _code(exc: contract.ServingError) -> str:
    for cls, code in ((contract.LimitReached, "session_limit_reached"), (contract.RequestTimeout, "idle_timeout"),
                      (contract.FellBehind, "stream_behind"), (contract.Timeout, "model_timeout"),
                      (contract.Unavailable, "unavailable"), (contract.PayloadTooLarge, "payload_too_large"),
                      (contract.BadRequest, "invalid_request")):
        if isinstance(exc, cls):
            return code
    return "server_error"
