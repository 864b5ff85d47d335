"""Start the real serving program (serve/serve) on a free port and talk HTTP to it."""
from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from conftest import ROOT, free_port, program_env

SERVE = ROOT / "serve" / "serve"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)


class Server:
    def __init__(self, opt_ml: Path, log: Path, **env: str):
        self.port = free_port()
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [str(SERVE), "serve"],
            env=program_env(OPT_ML=str(opt_ml), SAGEMAKER_BIND_TO_PORT=str(self.port), **env),
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 120) -> "Server":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.get("/ping", timeout=2).status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 120) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def get(self, path: str, **kw) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, body: bytes, content_type: str | None, path: str = "/invocations", **headers) -> Reply:
        h = dict(headers)
        if content_type is not None:
            h["Content-Type"] = content_type
        return self.request("POST", path, body=body, headers=h)

    def post_json(self, doc, path: str = "/invocations", **headers) -> Reply:
        return self.post(json.dumps(doc).encode(), "application/json", path, **headers)

    def stop(self, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def make_opt_ml(root: Path, model_dir: Path) -> Path:
    """An /opt/ml tree whose model/ is a copy of `model_dir` (as SageMaker extracts model.tar.gz)."""
    shutil.copytree(model_dir, root / "model")
    return root


def encode(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()
