"""The edge: how an error is written out, one function per protocol, over one hierarchy.

Every error a front door answers is a serve/contract.py `ServingError` (the model's and the HTTP layer's
alike), which carries its HTTP status and its WebSocket close code. Here each protocol writes it out:

- HTTP JSON (`register`): `{"error": message}` with the class's status, for /invocations and the response
  stream's first chunk; werkzeug's own errors (404, 405, 413) in the same shape; anything else a 500 whose
  traceback goes to the log only.
- Another HTTP shape is a `shape(message, status, exc) -> dict` given to `register` (on an app or on a
  blueprint, for its routes only): an OpenAI-style route passes one that writes
  `{"error": {"message", "type", "param", "code"}}`; statuses, messages and logging stay the same.
  `by_path` picks a shape by the request's path, for errors no blueprint sees (404 and 405 from routing, 413
  from the body limit): serve/app.py gives /v1/ paths serve/openai_api.py's `error_shape`.
- WebSocket (`stream_event`): the `error` event, `{"type": "error", "error": message, "code": close code}`,
  sent before the close with that code (serve/stream_route.py).

A Timeout's message names the setting that chose the deadline, which only the front door knows: each protocol
gives its own `timeout_message`.
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping

from flask import jsonify, request
from werkzeug.exceptions import HTTPException

from . import contract

log = logging.getLogger("serve")

INTERNAL_MESSAGE = "internal server error (see the server log)"

Shape = Callable[[str, int, BaseException], dict]


def json_shape(message: str, status: int, exc: BaseException) -> dict:
    """This server's own error body: {"error": message}."""
    return {"error": message}


def by_path(shapes: Mapping[str, Shape], default: Shape = json_shape) -> Shape:
    """A shape that is `shapes[prefix]` for a request whose path starts with `prefix`, else `default`."""
    def shape(message: str, status: int, exc: BaseException) -> dict:
        for prefix, chosen in shapes.items():
            if request.path.startswith(prefix):
                return chosen(message, status, exc)
        return default(message, status, exc)

    return shape


def message_of(exc: contract.ServingError, timeout_message: str = "") -> str:
    """What the client is told: the error's own message, or the protocol's for a Timeout."""
    if isinstance(exc, contract.Timeout) and timeout_message:
        return timeout_message
    return exc.message


def log_failure(exc: contract.ServingError) -> None:
    """A server-side failure in the log, with its cause's traceback (clients only get the message)."""
    cause = exc.__cause__
    log.error("%s: %s", type(exc).__name__, exc.message,
              exc_info=(type(cause), cause, cause.__traceback__) if cause is not None else None)


def register(app, timeout_message: str = "", shape: Shape = json_shape) -> None:
    """Error handlers on a Flask app or blueprint: every error becomes `shape(...)` with its HTTP status."""
    def answer(message: str, status: int, exc: BaseException):
        return jsonify(shape(message, status, exc)), status

    @app.errorhandler(contract.ServingError)
    def _serving_error(exc: contract.ServingError):
        if exc.status >= 500:
            log_failure(exc)
        return answer(message_of(exc, timeout_message), exc.status, exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        # Werkzeug's own errors (404, 405, 413 from the body limit) in the same shape.
        return answer(exc.description or exc.name, exc.code or 500, exc)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("internal error")
        return answer(INTERNAL_MESSAGE, 500, exc)


def stream_event(exc: contract.ServingError, timeout_message: str = "") -> dict:
    """The WebSocket `error` event for `exc`; the connection is then closed with `exc.close_code` (the route
    logs what failed on the server side: `log_failure`)."""
    return {"type": "error", "error": message_of(exc, timeout_message), "code": exc.close_code}
