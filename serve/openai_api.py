"""OpenAI-compatible routes: POST /v1/audio/transcriptions and GET /v1/models, on the serving port.

A thin adapter over the model contract (serve/contract.py): the request is OpenAI's multipart body
(serve/multipart.py), read by the same `read_clips` as /invocations; the answer is what OpenAI's API answers
for `response_format` json (`{"text"}`), text, srt, vtt (serve/subtitles.py, cues from the word times) or
verbose_json (`language`, `duration`, `text`, `segments`, `words`), or with `stream=true` server-sent events:
one `transcript.text.delta` per segment of the audio (`model.transcribe_iter`) and a last
`transcript.text.done` with the whole text. `timestamp_granularities[]` shape verbose_json only (`segment`, the
default: segments; `word`: words with their probability); the other formats do not carry them.

Errors on /v1/ paths have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: `error_shape` is
the `shape` serve/app.py gives the edge (serve/errors.py `register`, `by_path`) for them, so every error (413
body limits, 415, 400 options, 404 routes, 503 timeouts) keeps one status and message on every route and only
its body differs. `param` is the field at fault where the error knows it (multipart.FieldError, an unknown
language, an unknown model). This layer never imports torch.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from typing import Callable

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import NotFound

from . import bodies, contract, multipart, subtitles

log = logging.getLogger("serve")

PREFIX = "/v1/"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
MODELS = "/v1/models"
OWNER = "wav2vec2-sagemaker"
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
STREAMED = ("json", "text")  # stream=true sends text events; the other formats are whole documents


def register(app: Flask, model: contract.Model, settings, read_clips: Callable) -> None:
    """Add the routes to `app` (serve/app.py create_app); `read_clips` is its body reader."""
    model_id = model.info.architecture
    created = int(time.time())
    listed = {"id": model_id, "object": "model", "created": created, "owned_by": OWNER}

    @app.get(MODELS)
    def list_models():
        return jsonify(object="list", data=[listed])

    @app.get(MODELS + "/<path:name>")
    def get_model(name: str):
        if name != model_id:
            missing = NotFound(f"no model {name[:100]!r} here; this server serves {model_id!r}")
            missing.param = "model"
            raise missing
        return jsonify(listed)

    @app.post(TRANSCRIPTIONS)
    def transcriptions() -> Response:
        if bodies.media_type(request.content_type) != multipart.TYPE:
            raise contract.UnsupportedMediaType(
                f"send {multipart.TYPE} with the audio as its `file` part (as OpenAI's API takes it), not "
                f"{bodies.media_type(request.content_type) or 'none'!r}")
        clips, _ = read_clips()
        form: multipart.Form = g.form
        o = clips[0].options
        fmt = o.response_format or "json"
        if form.stream and fmt not in STREAMED:
            raise multipart.FieldError(f"stream=true sends text events: use response_format json or text, not "
                                       f"{fmt}", "stream")
        granularities = form.granularities or ("segment",)
        verbose = fmt == "verbose_json"
        opts = dataclasses.replace(
            o, timestamps=o.timestamps or fmt in ("srt", "vtt") or (verbose and "word" in granularities),
            confidence=o.confidence or (verbose and "word" in granularities),
            segments=o.segments or (verbose and "segment" in granularities))
        clip = contract.Clip(clips[0].audio, opts)
        echo = _header_safe(form.model or model_id)
        if form.stream:
            response = _stream(model, clip, g.started + settings.timeout_s + g.audio_s, g.request_id)
        else:
            t = model.transcribe([clip], deadline=g.started + settings.timeout_s)[0]
            g.batch = t.batch_size
            response = _answer(t, fmt, opts, form, echo)
        response.headers["OpenAI-Model"] = echo
        return response


def error_shape(message: str, status: int, exc: BaseException) -> dict:
    """OpenAI's error body (a serve/errors.py `Shape`): `type` invalid_request_error for a 4xx, server_error for
    a 5xx; `param` the field at fault when the error names one; `code` null."""
    param = "language" if isinstance(exc, contract.UnknownLanguage) else getattr(exc, "param", None)
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _answer(t: contract.Transcript, fmt: str, o, form: multipart.Form, echo: str) -> Response:
    if fmt == "text":
        return Response(t.text, mimetype="text/plain")
    if fmt in ("srt", "vtt"):
        text = subtitles.render(fmt, [(w.word, w.start, w.end) for w in t.words or []], duration=t.audio_seconds,
                                max_line_chars=o.max_line_chars, max_lines=o.max_lines)
        return Response(text, mimetype=subtitles.MEDIA_TYPES[fmt])
    usage = {"type": "duration", "seconds": t.audio_seconds}
    if fmt == "json":
        return jsonify(text=t.text, model=echo, usage=usage)
    body = {"task": "transcribe", "language": t.language or form.language_hint or "", "duration": t.audio_seconds,
            "text": t.text, "model": echo}
    if t.segments is not None:
        body["segments"] = [{"id": s.index, "start": s.start, "end": s.end, "text": s.text,
                             "avg_logprob": s.avg_logprob} for s in t.segments]
    if o.confidence and t.words is not None:
        body["words"] = [{"word": w.word, "start": w.start, "end": w.end, "probability": w.probability}
                         for w in t.words]
    body["usage"] = usage
    return jsonify(body)


def _event(doc: dict) -> str:
    return f"data: {json.dumps(doc)}\n\n"


def _stream(model: contract.Model, clip: contract.Clip, deadline: float, request_id: str) -> Response:
    """Server-sent events, as OpenAI streams a transcription: a delta per segment with text (a space before all
    but the first, so the deltas add up to the text), then done. The first segment is awaited here, so that an
    error before any text is an ordinary error answer with its status; a later one is the last event."""
    segments = model.transcribe_iter(clip, deadline=deadline)
    first = next(segments, None)
    if first is None:
        segments.close()
        raise contract.ModelFailure("the model gave no segment for this audio")

    def events():
        texts, segment = [], first
        try:
            while True:
                if segment.text:
                    yield _event({"type": "transcript.text.delta", "delta": (" " if texts else "") + segment.text})
                    texts.append(segment.text)
                if segment.last:
                    break
                segment = next(segments)
            yield _event({"type": "transcript.text.done", "text": " ".join(texts)})
        except contract.ServingError as exc:
            log.error("transcription stream id=%s: %s: %s", request_id, type(exc).__name__, exc.message)
            yield _event({"error": {"message": exc.message, "type": "server_error", "param": None, "code": None}})
        finally:
            segments.close()

    response = Response(events(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    return response


def _header_safe(text: str) -> str:
    return re.sub(r"[^\x20-\x7e]", "?", text)[:256]
