"""gunicorn around the Flask app: gthread workers (concurrency for batching), one per GPU, each pinned.

The master only forks; every worker sets its CUDA_VISIBLE_DEVICES after the fork and then loads its own
model, so CUDA is first touched inside the worker.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication

from .settings import Settings

log = logging.getLogger("serve")

# gunicorn's master kills workers this long after SIGTERM; SageMaker sends SIGKILL after 30 s. Live streams
# send their last final and close within it (serve/stream_route.py).
GRACEFUL_TIMEOUT_S = 25


class Server(BaseApplication):
    def __init__(self, settings: Settings, gpus: list[str]):
        self.settings = settings
        self.gpus = gpus
        self.workers = settings.workers or max(1, len(gpus))
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options = {
            "bind": f"0.0.0.0:{s.port}",
            "workers": self.workers,
            "worker_class": "serve.worker.Worker",  # gthread with /ping on its own threads
            "threads": s.threads,
            "timeout": s.timeout_s,
            "graceful_timeout": GRACEFUL_TIMEOUT_S,
            "keepalive": 5,
            "loglevel": s.log_level,
            "errorlog": "-",
            "accesslog": None,  # the app logs one line per request itself
            "preload_app": False,  # the model is loaded in each worker, never in the master
            "control_socket_disable": True,  # no runtime-control socket in $HOME: nothing needs it
            "pre_fork": self._pre_fork,
            "post_fork": self._post_fork,
            "child_exit": self._child_exit,
        }
        if s.metrics:
            prepare_multiprocess_dir()
        for key, value in options.items():
            self.cfg.set(key, value)

    def _pre_fork(self, server, worker) -> None:
        # Stable slot per worker (a replaced worker takes the free slot), hence a stable GPU.
        taken = {getattr(w, "slot", None) for w in server.WORKERS.values()}
        worker.slot = next(i for i in range(len(taken) + 1) if i not in taken)

    def _child_exit(self, server, worker) -> None:
        if self.settings.metrics:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid)  # its live gauges (open streams) must not linger

    def _post_fork(self, server, worker) -> None:
        gunicorn_util.write_error = _write_json_error
        if self.gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = self.gpus[worker.slot % len(self.gpus)]
        _heartbeat_while_loading(worker, self.settings.timeout_s)

    def load(self):
        # In the worker: torch and the model are imported here, after the fork.
        from common.modeldir import ModelDirError

        from . import model as model_side
        from .app import create_app

        logging.getLogger("serve").setLevel(self.settings.log_level.upper())
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "-") if self.gpus else "none"
        log.info("worker %d loading the model (GPU %s)", os.getpid(), gpu)
        try:
            model = model_side.load(self.settings, self.workers)
        except ModelDirError as exc:
            log.error("cannot serve the model in %s: %s", self.settings.model_dir, exc)
            raise
        finally:
            _loaded.set()
        app = create_app(model, self.settings, workers=self.workers)
        from .stream_route import Hub

        app.extensions["streams"] = Hub(model, self.settings)  # served by serve.worker, not by Flask
        return app


_loaded = threading.Event()

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(environ=os.environ) -> str:
    """In the master, before any worker forks: every worker's serve/metrics.py counts in files in this folder
    (prometheus_client's multiprocess mode), which a scrape adds up. The folder given, emptied of an earlier
    run's files (prometheus_client's rule), or a new temporary one. The master itself defines no metrics."""
    path = environ.get(MULTIPROC_ENV)
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        for old in Path(path).glob("*.db"):
            old.unlink()
    else:
        path = tempfile.mkdtemp(prefix="serve-metrics-")
        environ[MULTIPROC_ENV] = path
    return path


def _write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to a request it cannot parse (bad Expect, header or request line), as {"error": ...}
    like every other error, instead of its HTML page; same status, same Connection: close."""
    body = json.dumps({"error": f"{reason}: {mesg}" if mesg else reason}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1", "replace")
    gunicorn_util.write_nonblock(sock, head + body)


def _heartbeat_while_loading(worker, timeout_s: int) -> None:
    """A big model can load for longer than gunicorn's worker timeout; keep telling the master we live."""
    def beat():
        while not _loaded.wait(max(1.0, timeout_s / 4)):
            worker.notify()

    threading.Thread(target=beat, name="load-heartbeat", daemon=True).start()
