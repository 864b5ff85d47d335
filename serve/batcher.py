"""Dynamic batching inside one worker: request threads queue clips, one thread runs the model.

The first clip waiting opens a window of `max_wait_s`; whatever arrives meanwhile (up to `max_batch_size`)
joins it. Among the waiting clips, the batch is the run of similar lengths that holds the oldest clip, so
padding stays small and no clip waits behind ever newer ones.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger("serve")

# How many waiting clips the batch is chosen from, as a multiple of the batch size.
LOOKAHEAD = 4


@dataclass
class _Job:
    audio: np.ndarray
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Outcome:
    value: object
    batch_size: int  # how many clips shared the forward pass


class Batcher:
    def __init__(self, run: Callable[[list[np.ndarray]], Sequence[object]], max_batch_size: int, max_wait_s: float):
        self._run = run
        self._max = max_batch_size
        self._wait = max_wait_s
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self.batches_run = 0
        self.clips_run = 0

    def start(self) -> "Batcher":
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, clips: Sequence[np.ndarray]) -> list[Future]:
        jobs = [_Job(c) for c in clips]
        for job in jobs:
            self._queue.put(job)
        return [job.future for job in jobs]

    def _loop(self) -> None:
        pending: list[_Job] = []
        while True:
            try:
                if not pending:
                    pending.append(self._queue.get())
                self._gather(pending)
                batch = [j for j in self._pick(pending) if j.future.set_running_or_notify_cancel()]
                chosen = set(map(id, batch))
                pending = [j for j in pending if id(j) not in chosen and not j.future.cancelled()]
                if batch:
                    self._execute(batch)
            except Exception:  # the loop must survive anything, or the worker stops answering
                log.exception("batcher loop error")

    def _gather(self, pending: list[_Job]) -> None:
        deadline = pending[0].enqueued + self._wait
        while len(pending) < self._max:
            left = deadline - time.monotonic()
            try:
                pending.append(self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        while len(pending) < LOOKAHEAD * self._max:
            try:
                pending.append(self._queue.get_nowait())
            except queue.Empty:
                break

    def _pick(self, pending: list[_Job]) -> list[_Job]:
        """The window of at most max_batch_size length-sorted clips that holds the oldest, least spread."""
        k = min(self._max, len(pending))
        ordered = sorted(pending, key=lambda j: len(j.audio))
        oldest = next(i for i, j in enumerate(ordered) if j is pending[0])
        best, best_spread = 0, None
        for lo in range(max(0, oldest - k + 1), min(oldest, len(ordered) - k) + 1):
            spread = len(ordered[lo + k - 1].audio) / max(1, len(ordered[lo].audio))
            if best_spread is None or spread < best_spread:
                best, best_spread = lo, spread
        return ordered[best: best + k]

    def _execute(self, batch: list[_Job]) -> None:
        try:
            results = self._run([j.audio for j in batch])
        except Exception as exc:
            log.exception("forward pass failed for a batch of %d", len(batch))
            for job in batch:
                job.future.set_exception(exc)
            return
        self.batches_run += 1
        self.clips_run += len(batch)
        for job, value in zip(batch, results):
            job.future.set_result(Outcome(value, len(batch)))
