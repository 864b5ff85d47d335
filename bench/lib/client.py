"""The HTTP load client all servers share: N threads, each sends the next queued request and waits."""
from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Request:
    clip: str         # clip name
    body: bytes
    content_type: str
    seconds: float    # audio seconds in the body
    headers: tuple[tuple[str, str], ...] = ()  # extra request headers (e.g. request options)


@dataclass
class Run:
    concurrency: int
    wall_s: float = 0.0
    audio_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)  # clip -> transcript (last answer seen)
    batch_sizes: list[int] = field(default_factory=list)  # X-Batch-Size where the server says it
    cpu_s: float = 0.0  # CPU seconds the server used meanwhile (filled in by the caller)

    @property
    def rtfx(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        xs = sorted(self.latencies_s)
        if len(xs) == 1:
            return xs[0] * 1000
        return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] * 1000


def merge(runs: list[Run]) -> Run:
    """Runs of the same requests pooled: walls and audio summed, latencies joined, first transcripts kept."""
    out = Run(runs[0].concurrency)
    for r in runs:
        out.wall_s += r.wall_s
        out.audio_s += r.audio_s
        out.latencies_s += r.latencies_s
        out.errors += r.errors
        out.batch_sizes += r.batch_sizes
        out.cpu_s += r.cpu_s
        for k, v in r.texts.items():
            out.texts.setdefault(k, v)
    return out


def _text(body: bytes) -> str:
    value = json.loads(body)
    if isinstance(value, str):  # the seed answers a bare JSON string
        return value
    return value.get("text", "")


def send(port: int, req: Request, timeout_s: float = 600) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("POST", "/invocations", body=req.body, headers={"Content-Type": req.content_type, **dict(req.headers)})
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def run(port: int, requests: list[Request], concurrency: int, seconds: float | None = None) -> Run:
    """`concurrency` threads, each posting the next request and waiting for its answer: every request once, or,
    with `seconds`, cycling through them until that many seconds have passed. Wall time from the first send to
    the last answer."""
    result = Run(concurrency)
    lock = threading.Lock()
    queue = list(reversed(requests))
    deadline = None if seconds is None else time.perf_counter() + seconds
    sent = 0

    def next_request() -> Request | None:
        nonlocal sent
        with lock:
            if deadline is not None:
                if time.perf_counter() >= deadline:
                    return None
                sent += 1
                return requests[(sent - 1) % len(requests)]
            return queue.pop() if queue else None

    def worker():
        while (req := next_request()) is not None:
            t0 = time.perf_counter()
            try:
                status, body, headers = send(port, req)
            except OSError as exc:
                with lock:
                    result.errors.append(f"{req.clip}: {exc}")
                continue
            dt = time.perf_counter() - t0
            with lock:
                if status != 200:
                    result.errors.append(f"{req.clip}: HTTP {status} {body[:200]!r}")
                    continue
                result.latencies_s.append(dt)
                result.audio_s += req.seconds
                result.texts[req.clip] = _text(body)
                if "x-batch-size" in headers:
                    result.batch_sizes.append(int(headers["x-batch-size"]))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall_s = time.perf_counter() - started
    return result
