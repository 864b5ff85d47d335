"""HTTP routes: /ping, /invocations, /execution-parameters. `create_app(model, settings)` builds the app
around any object that keeps the model contract (serve/contract.py).

This layer turns request bytes into clips and options (serve/bodies.py, serve/options.py) and transcripts
into JSON; chunking, batching, decoding and the model itself are the model's. It never imports torch.
"""
from __future__ import annotations

import logging
import time
import uuid

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from common.audio import TARGET_RATE

from . import bodies, contract, errors, options
from .settings import Settings

log = logging.getLogger("serve")


def create_app(model: contract.Model, settings: Settings, workers: int = 1) -> Flask:
    """The Flask app serving `model` (already loaded: /ping reports its health, it never loads it)."""
    app = Flask("serve")
    app.json.sort_keys = False  # "text" first, words as word, start, end
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes
    app.extensions["model"] = model
    errors.register(app, timeout_message=f"transcription did not finish within {settings.timeout_s} s "
                                         f"(MODEL_SERVER_TIMEOUT)")
    too_big = (f"request body is larger than {settings.max_payload_mb:g} MB (SAGEMAKER_MAX_PAYLOAD_IN_MB); "
               "send compressed audio (FLAC/OGG/MP3) or raise the limit")

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc):
        return jsonify(error=too_big), 413

    @app.before_request
    def _start():
        g.started = time.monotonic()
        g.request_id = (request.headers.get("X-Amzn-RequestId") or request.headers.get("X-Request-Id") \
            or uuid.uuid4().hex[:16])[:64]
        g.audio_s = 0.0
        g.batch = 0

    @app.after_request
    def _finish(response: Response):
        response.headers["X-Request-Id"] = g.request_id
        if request.path == "/invocations":
            if g.batch:
                response.headers["X-Batch-Size"] = str(g.batch)
            log.info("request id=%s content_type=%s audio_s=%.2f latency_ms=%.1f status=%d batch=%d",
                     g.request_id, bodies.media_type(request.content_type) or "-", g.audio_s,
                     (time.monotonic() - g.started) * 1000, response.status_code, g.batch)
        return response

    @app.get("/ping")
    def ping():
        # Reports state only: the model was loaded before this worker accepted its first connection.
        health = model.health()
        if health.ok:
            return Response(status=200)
        return jsonify(error=health.detail or "model not ready"), 503

    @app.get("/execution-parameters")
    def execution_parameters():
        return jsonify(
            MaxConcurrentTransforms=settings.max_concurrent_transforms or workers * settings.threads,
            BatchStrategy=settings.batch_strategy,
            MaxPayloadInMB=int(settings.max_payload_mb),
        )

    @app.post("/invocations")
    def invocations():
        deadline = g.started + settings.timeout_s
        body = _read_body(settings.max_payload_bytes)
        shared = options.request_level(request.args.items(multi=True), request.headers.get(options.HEADER))
        decoded, is_batch = bodies.decode(request.content_type, body, settings.max_audio_s)
        del body
        g.audio_s = sum(len(c.audio) for c in decoded) / TARGET_RATE
        for i, clip in enumerate(decoded):
            if len(clip.audio) > settings.max_audio_s * TARGET_RATE:
                where = f"item {i}: " if is_batch else ""
                raise errors.ServeError(
                    f"{where}audio is {len(clip.audio) / TARGET_RATE:.0f} s long, over the "
                    f"{settings.max_audio_s:g} s limit (SERVE_MAX_AUDIO_S)", 413)
        clips = [contract.Clip(c.audio, options.build(shared, c.options)) for c in decoded]
        del decoded
        transcripts = model.transcribe(clips, deadline=deadline)
        g.batch = max(t.batch_size for t in transcripts)
        results = [as_json(t) for t in transcripts]
        # JSON unless the client prefers text/plain (no Accept, */* and unknown types get JSON).
        if request.accept_mimetypes.best_match(["application/json", "text/plain"]) == "text/plain":
            return Response("\n".join(r["text"] for r in results), mimetype="text/plain")
        return jsonify(results if is_batch else results[0])

    return app


def as_json(t: contract.Transcript) -> dict:
    item = {"text": t.text, "audio_seconds": t.audio_seconds}
    if t.words is not None:
        item["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in t.words]
    return item


def _read_body(cap: int) -> bytes:
    """The request body, refused with 413 from Content-Length alone, or as soon as a chunked body passes cap."""
    length = request.content_length
    if length is not None and length > cap:
        raise RequestEntityTooLarge()
    parts, total = [], 0
    while True:
        piece = request.stream.read(min(1 << 20, cap + 1 - total))
        if not piece:
            return b"".join(parts)
        parts.append(piece)
        total += len(piece)
        if total > cap:
            raise RequestEntityTooLarge()
