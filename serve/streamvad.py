"""Voice-activity endpointing of a live stream: Silero VAD, run window by window as the audio arrives.

serve/streaming.py asks a `StreamVad` of each stream where speech starts and stops (the OpenAI Realtime
`server_vad` turn detection, and SERVE_STREAM_ENDPOINTING=vad for our own protocol): `feed(samples)` runs
Silero VAD over every whole WINDOW (512 samples, 32 ms at 16 kHz) of the new audio and returns what changed:

    ("start", sample)  speech began at `sample` (the first window whose probability reached `threshold`)
    ("stop", sample, cut)
                       speech ended at `sample` (where the probability fell under threshold - 0.15 and stayed
                       there), decided once `silence_s` of such audio followed it; `cut` (= sample + silence) is
                       where the utterance ends, in the pause.

That is the hysteresis of silero-vad's own VADIterator (enter at `threshold`, leave under `threshold - 0.15`,
a pause only counts once it lasts `min_silence`), over one stream's probabilities. One Silero model serves
every stream and /invocations' VAD chunking alike: serve/vad.py's `load_session()` (the wheel's ONNX file,
silero_vad.onnx, in one single-threaded onnxruntime session per process; its docstring says why ONNX and not
the TorchScript file), each call given the stream's own recurrent state and 64 samples of context (what the
packaged TorchScript model keeps inside itself between calls, so that one could serve only one stream); its
probabilities are the TorchScript model's to 1e-3 (tests/test_serve_realtime.py). A stream runs one 32 ms
window at a time on its session thread: 0.2-0.3 ms with onnxruntime's one thread, without touching the
model's threads (the TorchScript model at the worker's torch thread count took 12-100 ms per window on a
loaded 2-core machine).
"""
from __future__ import annotations

import numpy as np

from .vad import CONTEXT, STATE, WINDOW, load_session, model_file  # noqa: F401 (model_file: for the tests)

EXIT_DROP = 0.15  # speech ends under threshold - this (silero-vad's VADIterator)

_RATE = np.array(16_000, dtype=np.int64)


def load() -> None:
    """Load the model now (a worker does at start, so that a stream's first window does not wait for it)."""
    load_session()


class StreamVad:
    """One stream's speech detector. threshold: Silero probability at which speech starts; silence_s: the
    pause that ends it; all positions are samples from the stream's start."""

    def __init__(self, threshold: float = 0.5, silence_s: float = 0.5):
        self.net = load_session()
        self.threshold = threshold
        self.exit = max(threshold - EXIT_DROP, 0.01)
        self.silence = max(WINDOW, round(silence_s * 16_000))
        self.state = np.zeros(STATE, np.float32)
        self.context = np.zeros((1, CONTEXT), np.float32)
        self.rest = np.zeros(0, np.float32)
        self.at = 0  # samples run through the model
        self.speaking = False
        self.quiet_from: int | None = None  # where the current run of sub-exit windows began, while speaking
        self.probabilities: list[float] = []  # kept only when `keep` (tests)
        self.keep = False

    def configure(self, threshold: float, silence_s: float) -> None:
        self.threshold = threshold
        self.exit = max(threshold - EXIT_DROP, 0.01)
        self.silence = max(WINDOW, round(silence_s * 16_000))

    def reset(self) -> None:
        """Forget that speech is going on (the client cleared its audio); the model's state is kept."""
        self.speaking, self.quiet_from = False, None

    def feed(self, samples: np.ndarray) -> list[tuple]:
        """Run the whole windows the new samples complete; -> [("start", s)] / [("stop", s, cut)], in order."""
        x = np.concatenate([self.rest, np.asarray(samples, np.float32)]) if len(self.rest) else \
            np.asarray(samples, np.float32)
        whole = len(x) // WINDOW * WINDOW
        self.rest = x[whole:].copy()
        if not whole:
            return []
        events = []
        for w in x[:whole].reshape(-1, WINDOW):
            inp = np.concatenate([self.context, w[None]], axis=1)
            out, self.state = self.net.run(None, {"input": inp, "state": self.state, "sr": _RATE})
            self.context = inp[:, -CONTEXT:]
            events += self._step(float(out[0, 0]))
        return events

    def _step(self, p: float) -> list[tuple]:
        start, self.at = self.at, self.at + WINDOW
        if self.keep:
            self.probabilities.append(p)
        if p >= self.threshold:
            self.quiet_from = None
            if not self.speaking:
                self.speaking = True
                return [("start", start)]
            return []
        if self.speaking and p < self.exit:
            if self.quiet_from is None:
                self.quiet_from = start
            if self.at - self.quiet_from >= self.silence:
                end, self.speaking, self.quiet_from = self.quiet_from, False, None
                return [("stop", end, end + self.silence)]
        return []
