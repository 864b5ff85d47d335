"""HTTP routes: /ping, /invocations, /execution-parameters. `create_app` builds the app around one model."""
from __future__ import annotations

import logging
import os
import time
import uuid
from concurrent.futures import wait

import torch
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from common.audio import TARGET_RATE

from . import decoders, errors
from .batcher import Batcher
from .model import Transcriber, choose_device_and_dtype
from .settings import Settings

log = logging.getLogger("serve")

_YES = {"1", "true", "yes", "on", "words", "word"}
_NO = {"0", "false", "no", "off", ""}


def load_model(settings: Settings, workers: int = 1) -> Transcriber:
    device, dtype = choose_device_and_dtype(settings.gpu_dtype, settings.cpu_bf16)
    if device.type == "cpu":
        # Workers share the cores; each using all of them would only thrash.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    started = time.monotonic()
    model = Transcriber(
        settings.model_dir, device=device, dtype=dtype,
        chunk_length_s=settings.chunk_length_s, chunk_stride_s=settings.chunk_stride_s,
    )
    model.warm_up()
    log.info("model loaded from %s on %s as %s in %.1f s", settings.model_dir, device, dtype,
             time.monotonic() - started)
    return model


def create_app(settings: Settings, model: Transcriber | None = None, workers: int = 1) -> Flask:
    """The Flask app; loads the model now (eagerly) unless one is given."""
    model = model if model is not None else load_model(settings, workers)
    batcher = Batcher(model.forward, settings.batch_size_on(model.device.type),
                      settings.max_batch_wait_ms / 1000).start()
    app = Flask("serve")
    app.json.sort_keys = False  # "text" first, words as word, start, end
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes
    app.extensions["transcriber"] = model
    app.extensions["batcher"] = batcher
    errors.register(app)
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
                     g.request_id, decoders.media_type(request.content_type) or "-", g.audio_s,
                     (time.monotonic() - g.started) * 1000, response.status_code, g.batch)
        return response

    @app.get("/ping")
    def ping():
        # Reports state only: the model was loaded before this worker accepted its first connection.
        if batcher.alive:
            return Response(status=200)
        return jsonify(error="model batcher thread is not running"), 503

    @app.get("/execution-parameters")
    def execution_parameters():
        return jsonify(
            MaxConcurrentTransforms=settings.max_concurrent_transforms or workers * settings.threads,
            BatchStrategy=settings.batch_strategy,
            MaxPayloadInMB=int(settings.max_payload_mb),
        )

    @app.post("/invocations")
    def invocations():
        body = _read_body(settings.max_payload_bytes)
        timestamps = _flag(request.args.get("timestamps", ""), "timestamps")
        clips, is_batch = decoders.decode(request.content_type, body, timestamps, settings.max_audio_s)
        del body
        g.audio_s = sum(len(c.audio) for c in clips) / TARGET_RATE
        for i, clip in enumerate(clips):
            if len(clip.audio) > settings.max_audio_s * TARGET_RATE:
                where = f"item {i}: " if is_batch else ""
                raise errors.ServeError(
                    f"{where}audio is {len(clip.audio) / TARGET_RATE:.0f} s long, over the "
                    f"{settings.max_audio_s:g} s limit (SERVE_MAX_AUDIO_S)", 413)
        plans = [model.chunks(c.audio) for c in clips]
        futures = batcher.submit([chunk.audio for plan in plans for chunk in plan])
        done, not_done = wait(futures, timeout=settings.timeout_s)
        if not_done:
            for f in not_done:
                f.cancel()
            raise errors.ServeError(
                f"transcription did not finish within {settings.timeout_s} s (MODEL_SERVER_TIMEOUT)", 503)
        outcomes = [f.result() for f in futures]
        g.batch = max(o.batch_size for o in outcomes)
        results, at = [], 0
        for clip, plan in zip(clips, plans):
            seq = model.join(plan, [o.value for o in outcomes[at: at + len(plan)]])
            at += len(plan)
            item = {"text": model.text(seq), "audio_seconds": round(len(clip.audio) / TARGET_RATE, 3)}
            if clip.timestamps:
                item["words"] = model.words(seq)
            results.append(item)
        # JSON unless the client prefers text/plain (no Accept, */* and unknown types get JSON).
        if request.accept_mimetypes.best_match(["application/json", "text/plain"]) == "text/plain":
            return Response("\n".join(r["text"] for r in results), mimetype="text/plain")
        return jsonify(results if is_batch else results[0])

    return app


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


def _flag(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in _YES:
        return True
    if v in _NO:
        return False
    raise errors.ServeError(f"query parameter {name}={value!r}: use true or false")
