"""The gunicorn worker: gthread, plus a separate small thread pool for GET /ping.

gthread runs every request on one pool of SERVE_THREADS threads, first come first served. With more
requests in flight than threads (SageMaker does not bound concurrency), a /ping waited behind transcriptions
and missed its 2 s deadline: after a worker was killed under load, /ping timed out for 12 s
(reliability/faults). A request that starts with "GET /ping" is recognised by peeking at the socket, before
anything is read, and runs on its own pool, so health checks never queue behind inference.
"""
from __future__ import annotations

import selectors
import socket
import time
from concurrent import futures
from functools import partial

from gunicorn.workers.gthread import ThreadWorker

PING_THREADS = 2
_PING = b"GET /ping"


class Worker(ThreadWorker):
    def init_process(self):
        self.ping_pool = futures.ThreadPoolExecutor(max_workers=PING_THREADS, thread_name_prefix="ping")
        super().init_process()

    def enqueue_req(self, conn):
        try:
            head = conn.sock.recv(len(_PING), socket.MSG_PEEK | socket.MSG_DONTWAIT)
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
        if head != _PING:
            super().enqueue_req(conn)
            return
        conn.sock.setblocking(True)
        fs = self.ping_pool.submit(self.handle, conn)
        fs.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))
