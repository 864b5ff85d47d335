"""Start the servers under test on free loopback ports, wait for /ping, stop them with SIGTERM.

All three run under gunicorn with the same options: ours through serve/serve (its own gunicorn set-up),
the comparison apps through gunicorn's command line with the worker count, worker class, threads and
keep-alive that serve/serve uses on this machine.
"""
from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common.ports import free_port  # noqa: F401  (one helper: tests, bench, local_test)

from . import ROOT

TIMEOUT_S = 600  # long enough that no request of a benchmark times out in any server


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in env.pop("BENCH_ALLOCATOR_SET", "").split():  # set for this process only (lib.ensure_venv)
        env.pop(name, None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", **extra)
    return env


def gunicorn_options() -> dict:
    """serve/serve's gunicorn options on this machine (workers, threads) from its own settings."""
    from serve.gpus import visible_gpus
    from serve.settings import Settings

    s = Settings.from_env({})
    return {"workers": s.workers or max(1, len(visible_gpus())), "threads": s.threads}


class Running:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, port: int):
        self.name, self.port, self.log_path = name, port, Path(log)
        self._log = open(log, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=str(ROOT))

    def ping(self) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/ping")
            return conn.getresponse().status
        finally:
            conn.close()

    def wait_ready(self, timeout_s: float = 300) -> float:
        """Seconds from start to the first /ping 200."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if self.ping() == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout_s} s:\n{self.log()[-3000:]}")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the live processes of this server (its process group:
        gunicorn's master and workers). Less sensitive than wall time to other jobs on a shared machine."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid:  # pgrp; the server leads its own session
                total += int(fields[11]) + int(fields[12])
        return total / tick

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> "Running":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


GPU_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def start_ours(model_dir: Path, workdir: Path, *, dtype: str = "fp32", **env: str) -> Running:
    """serve/serve with OPT_ML pointing at a tree whose model/ is model_dir; dtype fp32, bf16 (CPU or GPU) or
    fp16 (GPU only), set through SERVE_CPU_BF16 and SERVE_GPU_DTYPE."""
    opt = Path(workdir) / f"opt_ml_{dtype}"
    opt.mkdir(parents=True, exist_ok=True)
    link = opt / "model"
    if not link.exists():
        link.symlink_to(Path(model_dir).resolve())
    port = free_port()
    return Running(f"ours ({dtype})", [str(ROOT / "serve" / "serve"), "serve"],
                   _env(OPT_ML=str(opt), SAGEMAKER_BIND_TO_PORT=str(port), MODEL_SERVER_TIMEOUT=str(TIMEOUT_S),
                        SERVE_CPU_BF16="true" if dtype == "bf16" else "false", SERVE_GPU_DTYPE=GPU_DTYPES[dtype],
                        **env),
                   Path(workdir) / f"server_ours_{dtype}.log", port)


def start_app(kind: str, model_dir: Path, workdir: Path) -> Running:
    """kind: seed or pipeline (bench.lib.apps), under gunicorn with serve/serve's options."""
    opts = gunicorn_options()
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
            "--workers", str(opts["workers"]), "--worker-class", "gthread", "--threads", str(opts["threads"]),
            "--timeout", str(TIMEOUT_S), "--keep-alive", "5", "--log-level", "warning",
            f"bench.lib.apps:{kind}_app()"]
    return Running(kind, argv, _env(BENCH_MODEL_DIR=str(Path(model_dir).resolve())),
                   Path(workdir) / f"server_{kind}.log", port)
