"""The machine the check runs on (GPUs, driver, torch's CUDA build) and the memory its programs use.

Memory is read from outside the programs, as an operator would: `nvidia-smi --query-compute-apps` gives each
process's GPU memory; where it lists no processes (some sandboxes hide them), the device's used memory
above what it was before the program started; without a GPU (the rehearsal), the processes' resident set
size. Each figure says which of the three it is.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


def _smi(*args: str) -> list[list[str]] | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [[c.strip() for c in line.split(",")] for line in out.stdout.strip().splitlines() if line.strip()]


def describe() -> dict:
    """GPUs (nvidia-smi), driver, and this Python's torch: version, CUDA build, architectures compiled in."""
    import torch

    info: dict = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                  "cuda_available": torch.cuda.is_available(), "gpus": []}
    rows = _smi("--query-gpu=index,name,driver_version,memory.total,uuid")
    if rows:
        info["driver"] = rows[0][2]
        info["gpus"] = [{"index": int(r[0]), "name": r[1], "memory_mib": float(r[3]), "uuid": r[4]} for r in rows]
    if torch.cuda.is_available():
        info["arch_list"] = torch.cuda.get_arch_list()
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        info["device_count"] = torch.cuda.device_count()
        if not info["gpus"]:
            info["gpus"] = [{"index": i, "name": torch.cuda.get_device_name(i)} for i in range(torch.cuda.device_count())]
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    return info


def tree_pids(root: int) -> set[int]:
    """A process and all its live descendants (a server's gunicorn master and workers; torchrun and the
    workers it starts, which it puts in sessions of their own, so a process group would miss them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, []))
    return {p for p in out if Path(f"/proc/{p}").exists()}


def gpu_processes() -> list[dict] | None:
    """[{"pid", "gpu_uuid", "mib"}] from nvidia-smi; None without nvidia-smi."""
    rows = _smi("--query-compute-apps=pid,gpu_uuid,used_memory")
    if rows is None:
        return None
    return [{"pid": int(r[0]), "gpu_uuid": r[1], "mib": float(r[2])} for r in rows if r[0].isdigit()]


def gpu_device_files(pid: int) -> set[str]:
    """The GPU device nodes (/dev/nvidia0, /dev/nvidia1, ...) a process holds open: a CUDA context on GPU N
    holds /dev/nvidiaN. Read from /proc, so it works where nvidia-smi cannot see other processes."""
    found = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            name = target.rsplit("/", 1)[-1]
            if target.startswith("/dev/nvidia") and name[len("nvidia"):].isdigit():
                found.add(target)
    except OSError:
        pass
    return found


def device_used_mib() -> float | None:
    rows = _smi("--query-gpu=memory.used")
    return sum(float(r[0]) for r in rows) if rows else None


def rss_mib(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


@dataclass
class MemorySampler:
    """Peak memory of a process and its descendants, sampled every `every_s` in a thread (`with` block)."""
    pid: int
    gpu: bool
    every_s: float = 0.5
    method: str = ""
    peak_mib: float = 0.0
    per_process_peak_mib: dict[int, float] = field(default_factory=dict)
    gpus_by_pid: dict[int, str] = field(default_factory=dict)
    device_files_by_pid: dict[int, list[str]] = field(default_factory=dict)
    _baseline: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self._baseline = device_used_mib() if self.gpu else None

    def sample(self) -> None:
        pids = tree_pids(self.pid)
        if not self.gpu:
            self.method = "host RSS"
            self.peak_mib = max(self.peak_mib, rss_mib(pids))
            return
        for pid in pids:
            files = gpu_device_files(pid)
            if files:
                self.device_files_by_pid[pid] = sorted(files)
        procs = gpu_processes() or []
        mine = [p for p in procs if p["pid"] in pids]
        if mine:
            self.method = "per-process GPU memory (nvidia-smi)"
            for p in mine:
                self.per_process_peak_mib[p["pid"]] = max(self.per_process_peak_mib.get(p["pid"], 0.0), p["mib"])
                self.gpus_by_pid[p["pid"]] = p["gpu_uuid"]
            self.peak_mib = max(self.peak_mib, sum(p["mib"] for p in mine))
        elif self.method != "per-process GPU memory (nvidia-smi)":
            used = device_used_mib()
            if used is not None and self._baseline is not None:
                self.method = "device memory above the level before start (nvidia-smi lists no processes)"
                self.peak_mib = max(self.peak_mib, used - self._baseline)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a failed sample must not stop the measurement
                pass

    def __enter__(self) -> "MemorySampler":
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self) -> dict:
        return {"peak_mib": round(self.peak_mib, 1) if self.method else None, "method": self.method or "not measured",
                "per_process_peak_mib": {str(k): round(v, 1) for k, v in self.per_process_peak_mib.items()},
                "gpu_of_process": {str(k): v for k, v in self.gpus_by_pid.items()},
                "gpu_device_files": {str(k): v for k, v in self.device_files_by_pid.items()}}

    def gpus_of_processes(self) -> tuple[dict[int, str], str]:
        """pid -> the GPU it uses, and how that was read: nvidia-smi's process list, else the device files
        each process holds open (a process holding several is counted on all of them, joined)."""
        if self.gpus_by_pid:
            return dict(self.gpus_by_pid), "nvidia-smi"
        return {pid: "+".join(files) for pid, files in self.device_files_by_pid.items()}, "/proc/PID/fd"


def wait_for(predicate, timeout_s: float, every_s: float = 0.2) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every_s)
    return predicate()


def cpu_count() -> int:
    return os.cpu_count() or 1
