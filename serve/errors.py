"""The edge: every error becomes {"error": ...} with its HTTP status, here and nowhere else.

ServeError is the HTTP layer's own error (it carries a status: 413 body too large, 415 content type, 400
bad body). The model contract's errors (serve/contract.py) get their status from STATUS. Tracebacks go to
the log only; clients get a message saying what was wrong.
"""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from . import contract

log = logging.getLogger("serve")

STATUS = {
    contract.BadRequest: 400,
    contract.Timeout: 503,
    contract.Unavailable: 503,
    contract.ModelFailure: 500,
}


class ServeError(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def status_of(exc: contract.ServingError) -> int:
    return next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 500)


def _response(message: str, status: int):
    return jsonify(error=message), status


def register(app: Flask, timeout_message: str = "") -> None:
    @app.errorhandler(ServeError)
    def _serve_error(exc: ServeError):
        return _response(exc.message, exc.status)

    @app.errorhandler(contract.ServingError)
    def _model_error(exc: contract.ServingError):
        status = status_of(exc)
        cause = exc.__cause__
        if status >= 500:
            log.error("%s: %s", type(exc).__name__, exc.message,
                      exc_info=(type(cause), cause, cause.__traceback__) if cause is not None else None)
        if isinstance(exc, contract.Timeout) and timeout_message:
            return _response(timeout_message, status)
        return _response(exc.message, status)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        # Werkzeug's own errors (404, 405, 413 from the body limit) in the same JSON shape.
        return _response(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("internal error")
        return _response("internal server error (see the server log)", 500)
