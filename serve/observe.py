"""Per-request observability of the Flask app: GET /metrics (serve/metrics.py), one log line per request and
the request metrics. `install(app, settings)` is all create_app calls.

The request line always has the route, method, status, latency, audio seconds and content type; a 4xx/5xx
answer adds the error message the client got. 404 and 405 are logged too (their route is `unmatched`, or the
path when it exists with other methods). Successful /ping and /metrics answers are counted, not logged (a
health check every few seconds would bury the rest). SERVE_LOG_FORMAT=json writes each line as one JSON object
(with time, pid and level) for log pipelines; `text` (the default) as key=value pairs.
"""
from __future__ import annotations

import json
import logging
import sys
import time

from flask import Flask, Response, g, request

from . import bodies, metrics

log = logging.getLogger("serve.request")
QUIET = ("/ping",)  # 2xx not logged


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "pid": record.process,
               "level": record.levelname.lower()}
        doc.update(getattr(record, "fields", None) or {"message": record.getMessage()})
        return json.dumps(doc, ensure_ascii=False)


def configure_log(log_format: str) -> None:
    """SERVE_LOG_FORMAT: json gives request lines a handler of their own that writes bare JSON objects."""
    if log_format == "json" and not any(isinstance(h.formatter, _JSONFormatter) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JSONFormatter())
        log.addHandler(handler)
        log.propagate = False


def _kv(value) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=\n')) else text


def install(app: Flask, settings) -> None:
    configure_log(getattr(settings, "log_format", "text"))
    path = getattr(settings, "metrics_path", "/metrics")
    quiet = QUIET + ((path,) if getattr(settings, "metrics", True) else ())
    if getattr(settings, "metrics", True):
        @app.get(path, endpoint="metrics")
        def scrape():
            body, content_type = metrics.exposition()
            return Response(body, content_type=content_type)

    def route() -> str:
        if request.url_rule is not None:
            return request.url_rule.rule
        # 405: the path exists with other methods; 404: any path at all, kept out of the labels.
        return request.path if any(r.rule == request.path for r in app.url_map.iter_rules()) else "unmatched"

    @app.after_request
    def _observed(response: Response):
        started = getattr(g, "started", None)
        seconds = time.monotonic() - started if started is not None else 0.0
        audio_s = float(getattr(g, "audio_s", 0.0) or 0.0)
        name = route()
        content_type = bodies.media_type(request.content_type) or "-"
        status = response.status_code
        metrics.observe_request(name, status, content_type, seconds, audio_s)
        if status < 400 and name in quiet:
            return response
        fields = {"event": "request", "id": getattr(g, "request_id", "-"), "route": name, "method": request.method,
                  "content_type": content_type, "audio_s": round(audio_s, 2), "latency_ms": round(seconds * 1000, 1),
                  "status": status, "batch": getattr(g, "batch", 0)}
        if name == "unmatched":
            fields["path"] = request.path[:200]
        if status >= 400:
            fields["error"] = _error_message(response)
        shown = {**fields, "audio_s": f"{audio_s:.2f}", "latency_ms": f"{seconds * 1000:.1f}"}
        level = logging.WARNING if 400 <= status < 500 else logging.ERROR if status >= 500 else logging.INFO
        log.log(level, "request " + " ".join(f"{k}={_kv(v)}" for k, v in shown.items() if k != "event"),
                extra={"fields": fields})
        return response


def _error_message(response: Response) -> str:
    """The {"error": ...} the client got (every error answer has one, serve/errors.py)."""
    if response.is_streamed:
        return "-"
    try:
        doc = json.loads(response.get_data())
    except (ValueError, UnicodeDecodeError):
        return response.status
    if not isinstance(doc, dict):
        return response.status
    error = doc.get("error", response.status)
    return str(error.get("message", error) if isinstance(error, dict) else error)  # OpenAI's shape on /v1/


