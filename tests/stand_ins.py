"""One local HTTP stand-in for the services a test talks to (SageMaker's runtime, a serving container, an AWS
API): it records every request and answers with what the test's `answer` function says. Standard library only,
so both .venv and .venv-launch tests use it."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, NamedTuple


class Request(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


# answer(request) -> (status, body, content type); a dict or list body is sent as JSON, a str as UTF-8.
Answer = Callable[[Request], tuple[int, "bytes | str | dict | list", str]]


def json_answer(doc, status: int = 200) -> Answer:
    """Always the same JSON document."""
    return lambda request: (status, doc, "application/json")


class StandIn(ThreadingHTTPServer):
    """Serves on 127.0.0.1 (a free port) in a daemon thread from construction until `close()`; `requests` holds
    what it was sent, in order. Use as a context manager or close it in the fixture's teardown."""

    daemon_threads = True

    def __init__(self, answer: Answer):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = answer
        self.requests: list[Request] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def __enter__(self) -> "StandIn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's names)
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def _handle(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        request = Request(method, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        self.server.requests.append(request)
        status, payload, content_type = self.server.answer(request)
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload).encode()
        elif isinstance(payload, str):
            payload = payload.encode()
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass
