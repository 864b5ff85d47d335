"""The gunicorn worker: gthread, plus small thread pools of their own for GET /ping and for live streams.

gthread runs every request on one pool of SERVE_THREADS threads, first come first served. With more
requests in flight than threads (SageMaker does not bound concurrency), a /ping waited behind transcriptions
and missed its 2 s deadline: after a worker was killed under load, /ping timed out for 12 s
(reliability/faults). A request that starts with "GET /ping" is recognised by peeking at the socket, before
anything is read, and runs on its own pool, so health checks never queue behind inference.

The same peek sends "GET /invocations-bidirectional-stream" (a WebSocket that may stay open for an hour) to
the stream pool (SERVE_STREAM_MAX_SESSIONS threads, and a few more to refuse the streams over that limit),
where serve/stream_route.py serves it: a live stream never holds a thread /invocations needs. On SIGTERM every
open stream is told to send its last final and close (1001) while gunicorn drains its connections.
"""
from __future__ import annotations

import selectors
import socket
import time
from concurrent import futures
from functools import partial

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from .stream_route import REQUEST_LINE, could_be_stream_request, is_stream_request

PING_THREADS = 2
REFUSAL_THREADS = 4  # stream threads beyond the session limit: they answer the streams over it
_PING = b"GET /ping"
_PEEK = len(REQUEST_LINE) + 1
_STREAMED = object()  # a stream pool job's result when the connection was a WebSocket, now closed


class Worker(ThreadWorker):
    def init_process(self):
        self.ping_pool = futures.ThreadPoolExecutor(max_workers=PING_THREADS, thread_name_prefix="ping")
        sessions = getattr(getattr(self.app, "settings", None), "stream_max_sessions", 16)
        self.stream_pool = futures.ThreadPoolExecutor(max_workers=sessions + REFUSAL_THREADS,
                                                      thread_name_prefix="stream")
        super().init_process()

    def handle_exit(self, sig, frame):
        hub = self._hub()
        if hub is not None:
            hub.drain()  # sets an event: safe in a signal handler
        super().handle_exit(sig, frame)

    def enqueue_req(self, conn):
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
