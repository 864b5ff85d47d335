"""The gunicorn worker: gthread, plus small thread pools of their own for GET /ping and for live streams.

gthread runs every request on one pool of SERVE_THREADS threads, first come first served. With more
requests in flight than threads (SageMaker does not bound concurrency), a /ping waited behind transcriptions
and missed its 2 s deadline: after a worker was killed under load, /ping timed out for 12 s
(reliability/faults). A request that starts with "GET /ping" is recognised by peeking at the socket, before
anything is read, and runs on its own pool, so health checks never queue behind inference.

The same peek sends "GET /invocations-bidirectional-stream" and "GET /v1/realtime" (WebSockets that may stay open for an hour;
stream_route.is_stream_request) to
the stream pool (SERVE_STREAM_MAX_SESSIONS threads, and a few more to refuse the streams over that limit),
where serve/stream_route.py serves it: a live stream never holds a thread /invocations needs. On SIGTERM every
open stream is told to send its last final and close (1001) while gunicorn drains its connections.

Slow senders: gthread reads a request on a blocking socket with no timeout, so a client that sent its headers and
a few bytes of body, then nothing, held a request thread for ever (17 of them blocked /invocations for minutes
while /ping still said 200). Every request socket here reads with SERVE_BODY_READ_TIMEOUT_S: a client silent for
that long has its connection closed (a 408 when the app was reading the body), logged with a running count. While
every request thread is waiting on such a client for over STALLED_S, /ping answers 503 (the app asks
`request_threads_stalled`), so SageMaker's health check sees what the clients see.

Written against gunicorn 27.0.1's gthread internals, pinned in requirements/serve.txt (gunicorn==27.0.1):
`ThreadWorker.enqueue_req`, `handle`, `finish_request`, `method_queue.defer`, `pending_conns`, `poller`,
`on_pending_socket_readable`, `nr_conns`, `TConn.init` (it calls `sock.setblocking(True)` on every request, which
clears a socket timeout: ours is set after it), `RequestParser.unreader` being a `SocketUnreader` whose `chunk()`
reads the socket, and `http.errors.NoMoreData` closing a connection quietly. tests/test_serve.py checks
each of these against the installed gunicorn, so an upgrade that moves one fails a test, not production.
"""
from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from concurrent import futures
from functools import partial

from gunicorn import util
from gunicorn.http.errors import NoMoreData
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker

from .contract import RequestTimeout
from .stream_route import REQUEST_LINE, could_be_stream_request, is_stream_request

log = logging.getLogger("serve")

PING_THREADS = 2
REFUSAL_THREADS = 4  # stream threads beyond the session limit: they answer the streams over it
_PING = b"GET /ping"
_PEEK = len(REQUEST_LINE) + 1
_STREAMED = object()  # a stream pool job's result when the connection was a WebSocket, now closed
STALLED_S = 1.0  # a request thread waiting this long on a silent client counts as stalled (for /ping)
_UNTRACKED_THREADS = ("ping", "stream")  # their own pools: /ping and live streams never stall /invocations


class ClientTooSlow(NoMoreData, RequestTimeout):
    """No request bytes for SERVE_BODY_READ_TIMEOUT_S. gunicorn closes the connection quietly (NoMoreData) when
    it happens while it reads the headers; while the app reads the body it is a RequestTimeout (408)."""

    def __init__(self, message: str):
        RequestTimeout.__init__(self, message)
        self.buf = b""

    def __str__(self) -> str:
        return self.message


class _TimedUnreader(SocketUnreader):
    """gunicorn's socket reader, with a read timeout, the worker told of every read that waits."""
    worker: "Worker"

    def chunk(self, size_hint=None):
        sock, worker = self.sock, self.worker
        ours = sock.gettimeout() == worker.read_timeout_s  # not one of gunicorn's own drains, with their deadline
        tracked = ours and not threading.current_thread().name.startswith(_UNTRACKED_THREADS)
        if tracked:
            worker.reading[threading.get_ident()] = time.monotonic()
        try:
            return super().chunk(size_hint)
        except (socket.timeout, TimeoutError):
            if not ours:
                raise
            worker.slow_clients += 1
            log.warning("closed a connection from %s: no request bytes for %g s (SERVE_BODY_READ_TIMEOUT_S); "
                        "slow clients closed so far: %d", _peer(sock), worker.read_timeout_s, worker.slow_clients)
            try:
                sock.shutdown(socket.SHUT_RD)  # what follows (a drain) sees the end at once
            except OSError:
                pass
            raise ClientTooSlow(f"no request bytes arrived for {worker.read_timeout_s:g} s "
                                f"(SERVE_BODY_READ_TIMEOUT_S); send the whole body without pausing") from None
        finally:
            if tracked:
                worker.reading.pop(threading.get_ident(), None)


def _peer(sock) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "a client that left"


class _TimedConn(TConn):
    """A connection whose every request is read with the worker's read timeout."""
    worker: "Worker"

    def init(self):
        super().init()  # sets the socket blocking (no timeout) on every request
        if self.is_http2:
            return
        self.sock.settimeout(self.worker.read_timeout_s)
        unreader = getattr(self.parser, "unreader", None)
        if type(unreader) is SocketUnreader:
            unreader.__class__ = _TimedUnreader
            unreader.worker = self.worker


class Worker(ThreadWorker):
    def init_process(self):
        settings = getattr(self.app, "settings", None)
        self.read_timeout_s = getattr(settings, "body_read_timeout_s", 10.0)
        self.reading: dict[int, float] = {}  # request thread -> when its current socket read began
        self.slow_clients = 0
        self.ping_pool = futures.ThreadPoolExecutor(max_workers=PING_THREADS, thread_name_prefix="ping")
        sessions = getattr(getattr(self.app, "settings", None), "stream_max_sessions", 16)
        self.stream_pool = futures.ThreadPoolExecutor(max_workers=sessions + REFUSAL_THREADS,
                                                      thread_name_prefix="stream")
        super().init_process()

    def load_wsgi(self):
        super().load_wsgi()
        extensions = getattr(self.wsgi, "extensions", None)
        if extensions is not None:
            extensions["request_threads_stalled"] = self.request_threads_stalled

    def request_threads_stalled(self) -> bool:
        """Whether every request thread is waiting, for over STALLED_S, on a client that stopped sending."""
        now = time.monotonic()
        stalled = sum(1 for began in list(self.reading.values()) if now - began > STALLED_S)
        return stalled >= self.cfg.threads

    def handle_exit(self, sig, frame):
        hub = self._hub()
        if hub is not None:
            hub.drain()  # sets an event: safe in a signal handler
        super().handle_exit(sig, frame)

    def enqueue_req(self, conn):
        if type(conn) is TConn:
            conn.__class__ = _TimedConn
            conn.worker = self
        try:
            head = conn.sock.recv(_PEEK, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            # Accepted before its request arrived: wait for data on the poller (as gthread itself does for
            # slow clients), then come back here and look again.
            conn.sock.setblocking(False)
            conn.timeout = time.monotonic() + self.cfg.keepalive
            self.pending_conns.append(conn)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn))
            return
        except OSError:
            head = b""
        if head.startswith(_PING) or self._is_scrape(head):
            conn.sock.setblocking(True)
            fs = self.ping_pool.submit(self.handle, conn)
            fs.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))
            return
        if head and (is_stream_request(head) or could_be_stream_request(head)):
            conn.sock.setblocking(True)
            fs = self.stream_pool.submit(self._stream, conn)
            fs.add_done_callback(lambda fut: self.method_queue.defer(self._finish_stream, conn, fut))
            return
        super().enqueue_req(conn)

    def _is_scrape(self, head: bytes) -> bool:
        """GET of the metrics path (SERVE_METRICS_PATH): on the ping pool too, never behind transcriptions."""
        settings = getattr(self.app, "settings", None)
        if settings is None or not settings.metrics:
            return False
        line = f"GET {settings.metrics_path}".encode()
        if len(line) < len(head):
            return head[:len(line) + 1] in (line + b" ", line + b"?")
        return len(head) == _PEEK and line.startswith(head)  # a path longer than the peek: its first bytes

    def _hub(self):
        app = getattr(self, "wsgi", None)
        return getattr(app, "extensions", {}).get("streams") if app is not None else None

    def _stream(self, conn):
        """A stream pool thread: serve the WebSocket, or, when the request line turns out to be another GET once
        it has all arrived, the request as gthread would."""
        head = b""
        deadline = time.monotonic() + 5.0
        while could_be_stream_request(head) and time.monotonic() < deadline:
            conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                head = conn.sock.recv(_PEEK, socket.MSG_PEEK)
            except OSError:
                break
            if could_be_stream_request(head):
                time.sleep(0.01)
        conn.sock.settimeout(None)
        hub = self._hub()
        if hub is None or not is_stream_request(head):
            return self.handle(conn)
        hub.handle(conn.sock, conn.client)
        return _STREAMED

    def _finish_stream(self, conn, fut):
        if not fut.cancelled() and fut.exception() is None and fut.result() is _STREAMED:
            self.nr_conns -= 1
            util.close(conn.sock)  # websockets closed it already; a second close does nothing
            return
        self.finish_request(conn, fut)
