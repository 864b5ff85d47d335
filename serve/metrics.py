"""Prometheus metrics of the serving program, for GET /metrics (SERVE_METRICS, SERVE_METRICS_PATH).

SageMaker's detailed observability scrapes a bring-your-own container's `GET /metrics` on port 8080 (the
endpoint config's MetricsConfig) and publishes what it finds to CloudWatch. Every gunicorn worker counts in
its own files (prometheus_client's multiprocess mode: PROMETHEUS_MULTIPROC_DIR, set by the master before it
forks, serve/server.py); a scrape, answered by whichever worker gets it, adds them all up. A dead worker's
live gauges are dropped by the master (gunicorn's child_exit hook, `mark_process_dead`); its counters stay,
so totals never go backwards.

The scrape reads those files only: it never touches the model, and runs on the worker's /ping threads
(serve/worker.py), so it answers while every request thread is transcribing. This module never imports torch.

Names follow Prometheus' conventions: base units (`_seconds`), `_total` counters, a `serve_` prefix.
docs/metrics.md lists every metric (a test checks the list against this registry).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
REGISTRY = CollectorRegistry(auto_describe=True)

# Request latencies: /ping in milliseconds up to async inference's hour.
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
_AUDIO = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
_RTF = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
_BATCH = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
_WAIT = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_FORWARD = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter("serve_requests", "HTTP requests answered, by route (the route's pattern; `unmatched` for "
                   "unknown paths), status code and request content type.",
                   ["route", "status", "content_type"], registry=REGISTRY)
REQUEST_SECONDS = Histogram("serve_request_duration_seconds", "Time from the request's arrival to its response "
                            "headers (a response stream's first line), by route.", ["route"], buckets=_LATENCY,
                            registry=REGISTRY)
REQUEST_AUDIO = Histogram("serve_request_audio_seconds", "Audio per successful transcription request (all items "
                          "of a batch together), in seconds of audio, by route.", ["route"], buckets=_AUDIO,
                          registry=REGISTRY)
REAL_TIME_FACTOR = Histogram("serve_real_time_factor", "Audio seconds transcribed per wall-clock second of the "
                             "request (above 1: faster than real time), per successful transcription request.",
                             ["route"], buckets=_RTF, registry=REGISTRY)
BATCH_SIZE = Histogram("serve_batch_size", "Clips, chunks or stream windows sharing one forward pass.",
                       buckets=_BATCH, registry=REGISTRY)
QUEUE_WAIT = Histogram("serve_batch_queue_wait_seconds", "Time a clip waited in the batcher's queue before its "
                       "forward pass started.", buckets=_WAIT, registry=REGISTRY)
FORWARD_SECONDS = Histogram("serve_forward_duration_seconds", "Time of one batched forward pass of the model, by "
                            "device and dtype (on a GPU measured with CUDA events: the kernels' time).",
                            ["device", "dtype"], buckets=_FORWARD, registry=REGISTRY)
BEAM_SECONDS = Histogram("serve_beam_search_duration_seconds", "Time from handing a clip's logits to the "
                         "beam-search processes (KenLM language model, or beam search without one) to its "
                         "transcript, waiting for a free process included.", buckets=_LATENCY, registry=REGISTRY)
STREAMS_OPEN = Gauge("serve_streams_open", "Live WebSocket streams open now.", registry=REGISTRY,
                     multiprocess_mode="livesum")
STREAMS_BEHIND = Gauge("serve_streams_behind_real_time", "Live streams whose audio arrives faster than it is "
                       "transcribed (frames were waiting when the last window finished).", registry=REGISTRY,
                       multiprocess_mode="livesum")
STREAM_AUDIO = Counter("serve_stream_audio_seconds", "Audio received on live streams, in seconds.",
                       registry=REGISTRY)
STREAM_SECONDS = Histogram("serve_stream_duration_seconds", "Wall-clock length of finished live streams.",
                           buckets=_AUDIO, registry=REGISTRY)
STREAMS = Counter("serve_streams", "Live streams finished, by WebSocket close code.", ["close_code"],
                  registry=REGISTRY)
DECODE_FAILURES = Counter("serve_decode_failures", "Request bodies that could not be turned into audio, by "
                          "reason.", ["reason"], registry=REGISTRY)
MODEL_LOAD_SECONDS = Gauge("serve_model_load_seconds", "Time the worker took to load and warm up the model "
                           "(the slowest worker's).", registry=REGISTRY, multiprocess_mode="max")
BUILD_INFO = Gauge("serve_build_info", "Always 1; the labels say what is served and on what.",
                   ["model_type", "architecture", "vocab_size", "lm", "device", "dtype", "torch_version",
                    "transformers_version"], registry=REGISTRY, multiprocess_mode="max")

DECODE_REASONS = ("unsupported_content_type", "empty_body", "invalid_json_body", "undecodable_audio",
                  "truncated_audio", "audio_too_long")


def exposition() -> tuple[bytes, str]:
    """(body, content type) of a scrape: every worker's values summed in multiprocess mode, else this process's."""
    path = os.environ.get(MULTIPROC_ENV)
    if path and Path(path).is_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# ---- hooks called by the serving code -------------------------------------------------------------------------

def observe_request(route: str, status: int, content_type: str, seconds: float, audio_s: float) -> None:
    REQUESTS.labels(route, str(status), content_type or "-").inc()
    REQUEST_SECONDS.labels(route).observe(seconds)
    if audio_s > 0 and status < 400:
        REQUEST_AUDIO.labels(route).observe(audio_s)
        REAL_TIME_FACTOR.labels(route).observe(audio_s / max(seconds, 1e-6))


def decode_failed(exc, content_type: str) -> None:
    """A request body refused while it was turned into audio (serve/bodies.py: a serve/contract.py error)."""
    status, message = getattr(exc, "status", 400), str(getattr(exc, "message", exc))
    if status == 415:
        reason = "unsupported_content_type"
    elif status == 413:
        reason = "audio_too_long"
    elif message.startswith("request body is empty"):
        reason = "empty_body"
    elif content_type == "application/json":
        reason = "invalid_json_body"
    elif "truncated" in message:
        reason = "truncated_audio"
    else:
        reason = "undecodable_audio"
    DECODE_FAILURES.labels(reason).inc()


_forward = {"device": "cpu", "dtype": "float32", "cuda": False}
_pending_cuda: list = []  # (start event, end event) of forward passes not yet read
_pending_lock = threading.Lock()


class _Forward:
    def __init__(self, size: int, enqueued: list[float]):
        now = time.monotonic()
        BATCH_SIZE.observe(size)
        for t in enqueued:
            QUEUE_WAIT.observe(max(0.0, now - t))
        self.started = now
        self.events = None
        if _forward["cuda"]:
            import torch  # the model side only: _forward["cuda"] is set by model_loaded

            self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self.events[0].record()

    def done(self) -> None:
        labels = FORWARD_SECONDS.labels(_forward["device"], _forward["dtype"])
        if self.events is None:
            labels.observe(time.monotonic() - self.started)
            return
        # No synchronisation here: the pass's time is read once its kernels have run (next time we look).
        self.events[1].record()
        with _pending_lock:
            _pending_cuda.append(self.events)
            ready = [e for e in _pending_cuda if e[1].query()]
            for e in ready:
                _pending_cuda.remove(e)
                labels.observe(e[0].elapsed_time(e[1]) / 1000)


def forward_started(size: int, enqueued: list[float]) -> _Forward:
    """The batcher, as a forward pass of `size` items starts (enqueued: each item's time.monotonic() when it
    was queued); call .done() when the pass returns."""
    return _Forward(size, enqueued)


def time_future(future) -> None:
    """A beam-search future: its time from now to a successful result."""
    started = time.monotonic()

    def finished(f):
        if not f.cancelled() and f.exception() is None:
            BEAM_SECONDS.observe(time.monotonic() - started)

    future.add_done_callback(finished)


def model_loaded(model, seconds: float) -> None:
    """serve/model.py's load(): the load time and the build-info labels."""
    device = str(getattr(model, "device", "cpu"))
    dtype = str(getattr(model, "dtype", "float32")).replace("torch.", "")
    _forward.update(device=device, dtype=dtype, cuda=device.startswith("cuda"))
    inner = getattr(model, "model", None)
    config = getattr(inner, "config", None)
    head = getattr(inner, "lm_head", None)
    beam = getattr(model, "beam", None)
    info = getattr(model, "info", None)
    MODEL_LOAD_SECONDS.set(seconds)
    BUILD_INFO.labels(
        model_type=str(getattr(config, "model_type", "unknown")),
        architecture=str(getattr(info, "architecture", type(inner).__name__)),
        vocab_size=str(getattr(head, "out_features", "unknown")),
        lm=str(bool(beam is not None and getattr(beam, "has_lm", False))).lower(),
        device=device, dtype=dtype,
        torch_version=getattr(sys.modules.get("torch"), "__version__", "none"),
        transformers_version=getattr(sys.modules.get("transformers"), "__version__", "none"),
    ).set(1)


class StreamMeter:
    """One live stream's share of the stream metrics (serve/stream_route.py)."""

    def __init__(self):
        self.behind = False
        STREAMS_OPEN.inc()

    def set_behind(self, behind: bool) -> None:
        if behind != self.behind:
            STREAMS_BEHIND.inc() if behind else STREAMS_BEHIND.dec()
            self.behind = behind

    def closed(self, audio_s: float, duration_s: float, close_code: int) -> None:
        self.set_behind(False)
        STREAMS_OPEN.dec()
        STREAM_AUDIO.inc(audio_s)
        STREAM_SECONDS.observe(duration_s)
        STREAMS.labels(str(close_code)).inc()


def metric_names() -> list[tuple[str, str]]:
    """(name as exposed, type) of every metric defined here, in definition order (README's table)."""
    out = []
    for family in REGISTRY.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        out.append((name, family.type))
    return out
