"""Dynamic batching inside one worker: request threads queue clips, one thread runs the model.

Every clip comes with a key; only clips of the same key share a forward pass (the model's key says what a
pass must agree on: the adapter language, and the clip length where padding would change the result).
The first clip waiting opens a window of `max_wait_s`; whatever arrives meanwhile (up to `max_batch_size`)
joins it. Among the waiting clips of the oldest clip's key, the batch is the run of similar lengths that
holds the oldest clip, so padding stays small and no clip waits behind ever newer ones.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import numpy as np

from . import metrics

log = logging.getLogger("serve")

# How many waiting clips the batch is chosen from, as a multiple of the batch size.
LOOKAHEAD = 4


@dataclass
class _Job:
    key: Hashable
    audio: np.ndarray
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


_STOP = _Job(key=None, audio=np.zeros(0, np.float32))


@dataclass(frozen=True)
class Outcome:
    value: object
    batch_size: int  # how many clips shared the forward pass


class Batcher:
    """run(key, clips) -> one result per clip, called on the batcher's own thread."""

    def __init__(self, run: Callable[[Hashable, list[np.ndarray]], Sequence[object]], max_batch_size: int,
                 max_wait_s: float, max_for: Callable[[Hashable], int] | None = None):
        self._run = run
        self._max = max_batch_size
        self._max_for = max_for or (lambda key: max_batch_size)  # a key's own limit (stream windows)
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

    def stop(self) -> None:
        """Let the thread end once the clips already queued have run (for tests and tools; the server's
        workers simply exit)."""
        self._queue.put(_STOP)

    def submit(self, jobs: Sequence[tuple[Hashable, np.ndarray]]) -> list[Future]:
        """Queue (key, clip) pairs; one future per clip, resolving to an Outcome."""
        queued = [_Job(key, audio) for key, audio in jobs]
        for job in queued:
            self._queue.put(job)
        return [job.future for job in queued]

    def _loop(self) -> None:
        pending: list[_Job] = []
        while True:
            try:
                if not pending:
                    job = self._queue.get()
                    if job is _STOP:
                        return
                    pending.append(job)
                self._gather(pending)
                if any(j is _STOP for j in pending):
                    pending = [j for j in pending if j is not _STOP]
                    self._queue.put(_STOP)  # after the clips already gathered
                batch = [j for j in self._pick(pending) if j.future.set_running_or_notify_cancel()]
                chosen = set(map(id, batch))
                pending = [j for j in pending if id(j) not in chosen and not j.future.cancelled()]
                if batch:
                    self._execute(batch)
            except Exception:  # the loop must survive anything, or the worker stops answering
                log.exception("batcher loop error")

    def _gather(self, pending: list[_Job]) -> None:
        deadline = pending[0].enqueued + self._wait
        key = pending[0].key
        limit = self._max_for(key)
        while sum(j.key == key for j in pending) < limit:
            left = deadline - time.monotonic()
            try:
                pending.append(self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        while len(pending) < LOOKAHEAD * max(self._max, limit):
            try:
                pending.append(self._queue.get_nowait())
            except queue.Empty:
                break

    def _pick(self, pending: list[_Job]) -> list[_Job]:
        """The oldest clip's key; of its clips, the window of at most max_batch_size length-sorted clips that
        holds the oldest, least spread."""
        oldest_job = pending[0]
        same = [j for j in pending if j.key == oldest_job.key]
        k = min(self._max_for(oldest_job.key), len(same))
        ordered = sorted(same, key=lambda j: len(j.audio))
        oldest = next(i for i, j in enumerate(ordered) if j is oldest_job)
        best, best_spread = 0, None
        for lo in range(max(0, oldest - k + 1), min(oldest, len(ordered) - k) + 1):
            spread = len(ordered[lo + k - 1].audio) / max(1, len(ordered[lo].audio))
            if best_spread is None or spread < best_spread:
                best, best_spread = lo, spread
        return ordered[best: best + k]

    def _execute(self, batch: list[_Job]) -> None:
        try:
            timer = metrics.forward_started(len(batch), [j.enqueued for j in batch])
            results = self._run(batch[0].key, [j.audio for j in batch])
            timer.done()
        except Exception as exc:
            log.exception("forward pass failed for a batch of %d", len(batch))
            for job in batch:
                job.future.set_exception(exc)
            return
        self.batches_run += 1
        self.clips_run += len(batch)
        for job, value in zip(batch, results):
            job.future.set_result(Outcome(value, len(batch)))
