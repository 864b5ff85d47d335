"""One error type that carries its HTTP status, and the handlers that turn any error into {"error": ...}.

Tracebacks go to the log only; clients get a message saying what was wrong.
"""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger("serve")


class ServeError(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def _response(message: str, status: int):
    return jsonify(error=message), status


def register(app: Flask) -> None:
    @app.errorhandler(ServeError)
    def _serve_error(exc: ServeError):
        return _response(exc.message, exc.status)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        # Werkzeug's own errors (404, 405, 413 from the body limit) in the same JSON shape.
        return _response(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("internal error")
        return _response("internal server error (see the server log)", 500)
