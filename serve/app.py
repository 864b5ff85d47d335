"""HTTP routes: /ping, /invocations, /invocations-response-stream, /execution-parameters. `create_app(model,
settings)` builds the app around any object that keeps the model contract (serve/contract.py). (The WebSocket
route /invocations-bidirectional-stream is served beside them by serve/stream_route.py; OpenAI's
/v1/audio/transcriptions and /v1/models are added by serve/openai_api.py.)

This layer turns request bytes into clips and options (serve/bodies.py, serve/options.py) and transcripts
into JSON; chunking, batching, decoding and the model itself are the model's. It never imports torch.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from common.audio import TARGET_RATE

from . import answers, bodies, contract, errors, metrics, multipart, observe, openai_api, options
from .settings import Settings

log = logging.getLogger("serve")


def create_app(model: contract.Model, settings: Settings, workers: int = 1) -> Flask:
    """The Flask app serving `model` (already loaded: /ping reports its health, it never loads it)."""
    app = Flask("serve")
    app.json.sort_keys = False  # "text" first, words as word, start, end
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes
    app.extensions["model"] = model
    # Errors on /v1/ paths in OpenAI's shape, every other one in this server's own (serve/errors.py).
    shape = errors.by_path({openai_api.PREFIX: openai_api.error_shape})
    errors.register(app, timeout_message=f"transcription did not finish within {settings.timeout_s} s "
                                         f"(MODEL_SERVER_TIMEOUT)", shape=shape)
    observe.install(app, settings)  # GET /metrics, the request log line and metrics
    too_big = (f"request body is larger than {settings.max_payload_mb:g} MB (SAGEMAKER_MAX_PAYLOAD_IN_MB); "
               "send compressed audio (FLAC/OGG/MP3) or raise the limit")

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc):
        response = jsonify(shape(too_big, 413, exc))
        response.status_code = 413
        # The 413 goes out first, then the rest of the body is read and dropped (the raw WSGI input: werkzeug's
        # stream refuses to open past MAX_CONTENT_LENGTH).
        body = request.environ.get("wsgi.input")
        if body is not None:
            response.call_on_close(lambda: _discard(body))
        return response

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
        if request.path in ("/invocations", STREAM_PATH):
            if g.batch:
                response.headers["X-Batch-Size"] = str(g.batch)
        return response

    @app.get("/ping")
    def ping():
        # Reports state only: the model was loaded before this worker accepted its first connection.
        health = model.health()
        stalled = app.extensions.get("request_threads_stalled")  # set by serve.worker: slow clients hold them all
        if health.ok and stalled is not None and stalled():
            return jsonify(error=f"every request thread is waiting on a client that stopped sending (closed after "
                                 f"SERVE_BODY_READ_TIMEOUT_S={settings.body_read_timeout_s:g} s)"), 503
        if health.ok:
            return Response(status=200)
        return jsonify(error=health.detail or "model not ready"), 503

    @app.get("/execution-parameters")
    def execution_parameters():
        return jsonify(
            MaxConcurrentTransforms=settings.max_concurrent_transforms or workers * settings.threads,
            BatchStrategy=settings.batch_strategy,
            MaxPayloadInMB=settings.transform_payload_mb,
        )

    def read_clips() -> tuple[list[contract.Clip], bool]:
        """The request's clips (and whether it is a batch); for a multipart body (OpenAI's, serve/multipart.py)
        its form is `g.form`, its fields over the query string's and the header's options."""
        body = _read_body(settings.max_payload_bytes)
        shared = options.request_level(request.args.items(multi=True), request.headers.get(options.HEADER))
        g.form = None
        content_type = request.content_type
        try:
            if bodies.media_type(content_type) == multipart.TYPE:
                g.form = multipart.parse(content_type, body, model.info)
                body, content_type = g.form.audio, "application/octet-stream"  # the file part, sniffed as any
                shared = {**shared, **g.form.options}
                for granularity, name in (("word", "timestamps"), ("segment", "segments")):
                    if granularity in g.form.granularities:
                        shared.setdefault(name, True)
            clips, is_batch = bodies.decode(content_type, body, settings.max_audio_s,
                                            settings.max_decoded_bytes, request_options=shared)
        except contract.ServingError as exc:
            metrics.decode_failed(exc, bodies.media_type(request.content_type))
            raise
        del body
        g.audio_s = sum(len(c.audio) for c in clips) / TARGET_RATE
        for i, clip in enumerate(clips):
            if len(clip.audio) > settings.max_audio_s * TARGET_RATE:
                where = f"item {i}: " if is_batch else ""
                raise contract.PayloadTooLarge(
                    f"{where}audio is {len(clip.audio) / TARGET_RATE:.0f} s long, over the "
                    f"{settings.max_audio_s:g} s limit (SERVE_MAX_AUDIO_S)")
        return clips, is_batch

    @app.post("/invocations")
    def invocations():
        deadline = g.started + settings.timeout_s
        clips, is_batch = read_clips()
        if g.form is not None and g.form.stream:
            raise contract.BadRequest(f"stream=true: /invocations answers once; stream with POST {STREAM_PATH} "
                                      f"(JSON lines) or POST {openai_api.TRANSCRIPTIONS} (server-sent events)")
        # JSON (JSON lines for a JSON lines body) unless response_format or Accept asks for text or subtitles.
        lines = bodies.media_type(request.content_type) == bodies.JSON_LINES_TYPE
        own = bodies.JSON_LINES_TYPE if lines else "application/json"
        fmt = answers.answer_format(clips, request.headers.get("Accept"), own, is_batch)
        if fmt in ("srt", "vtt", "verbose_json"):
            more = {"timestamps": True} if fmt != "verbose_json" else \
                {"timestamps": True, "segments": True, "confidence": True}
            clips = [contract.Clip(c.audio, dataclasses.replace(c.options, **more)) for c in clips]
        transcripts = model.transcribe(clips, deadline=deadline)
        g.batch = max(t.batch_size for t in transcripts)
        if fmt in ("srt", "vtt"):
            return answers.subtitle_response(transcripts[0], clips[0].options, fmt)
        results = [as_json(t) for t in transcripts]
        if fmt == "text":
            return Response("\n".join(r["text"] for r in results), mimetype="text/plain")
        if lines:  # one line per input line, in order (batch transform's AssembleWith=Line joins them)
            return Response("".join(json.dumps(r) + "\n" for r in results), mimetype=bodies.JSON_LINES_TYPE)
        return jsonify(results if is_batch else results[0])

    @app.post(STREAM_PATH)
    def invocations_response_stream():
        # InvokeEndpointWithResponseStream: the same bodies; one JSON line per chunk of long audio
        # (SERVE_CHUNK_LENGTH_S) as soon as it is transcribed. The first chunk is awaited here, so that a bad
        # option or a model error before any text is an ordinary JSON error answer with its status.
        clips, is_batch = read_clips()
        deadline = g.started + settings.timeout_s + g.audio_s  # long audio: its own length on top
        segments = [model.transcribe_iter(clip, deadline=deadline) for clip in clips]
        first = next(segments[0], None)
        if first is None:
            raise contract.ModelFailure("the model gave no segment for this audio")
        request_id = g.request_id

        def lines():
            item, segment = 0, first
            try:
                while True:
                    yield json.dumps(segment_json(segment, item if is_batch else None)) + "\n"
                    if not segment.last:
                        segment = next(segments[item])
                    elif item + 1 < len(segments):
                        item += 1
                        segment = next(segments[item])
                    else:
                        return
            except contract.ServingError as exc:
                # The status line is gone: the error is the last line.
                log.error("response stream id=%s: %s: %s", request_id, type(exc).__name__, exc.message)
                line = {"error": exc.message} if not is_batch else {"item": item, "error": exc.message}
                yield json.dumps(line) + "\n"
            finally:
                for it in segments:
                    it.close()

        return Response(lines(), mimetype="application/jsonlines")

    openai_api.register(app, model, settings, read_clips)  # POST /v1/audio/transcriptions, GET /v1/models
    return app


STREAM_PATH = "/invocations-response-stream"


def segment_json(s: contract.Segment, item: int | None = None) -> dict:
    line = {} if item is None else {"item": item}
    line.update(index=s.index, start=s.start, end=s.end, text=s.text)
    if s.words is not None:
        line["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in s.words]
    line["last"] = s.last
    return line


def as_json(t: contract.Transcript) -> dict:
    item = {"text": t.text, "audio_seconds": t.audio_seconds}
    if t.words is not None:
        item["words"] = [word_json(w) for w in t.words]
    if t.segments is not None:
        item["segments"] = [{"index": s.index, "start": s.start, "end": s.end, "text": s.text,
                             "avg_logprob": s.avg_logprob} for s in t.segments]
    return item


def word_json(w: contract.Word) -> dict:
    item = {"word": w.word, "start": w.start, "end": w.end}
    if w.probability is not None:
        item["probability"] = w.probability
    return item


# After a 413, a body of up to this many bytes is read and thrown away before the connection is closed, so that a
# client that writes its whole body before it reads (curl, requests, boto3) reads the 413 instead of a broken pipe.
DISCARD_MAX_BYTES = 64 * 2 ** 20


def _discard(stream) -> None:
    """Read and drop what is left of a refused body (at most DISCARD_MAX_BYTES; a client that stops sending is
    cut off by the worker's read timeout)."""
    total = 0
    try:
        while total <= DISCARD_MAX_BYTES:
            piece = stream.read(1 << 20)
            if not piece:
                return
            total += len(piece)
    except Exception:  # noqa: BLE001 - the client left or stalled: the 413 was sent, nothing more to do
        return


def _read_body(cap: int) -> bytes:
    """The request body, refused with 413 from Content-Length alone, or as soon as a chunked body passes cap."""
    length = request.content_length
    if length is not None and length > cap:
        raise RequestEntityTooLarge()
    parts, total = [], 0
    while True:
        try:
            piece = request.stream.read(min(1 << 20, cap + 1 - total))
        except ClientDisconnected as exc:
            # werkzeug turns any OSError of the read into this 400; serve.worker's read timeout is a 408 of its own.
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, contract.ServingError):
                raise cause from None
            raise
        if not piece:
            return b"".join(parts)
        parts.append(piece)
        total += len(piece)
        if total > cap:
            raise RequestEntityTooLarge()
