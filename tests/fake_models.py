"""Fake models for the front doors' tests: serve/contract.py's `Model` in a few lines of pure Python (no torch).

`FakeModel` transcribes a clip as its length ("16000 samples eng"), iterates one segment per second of audio,
and opens `FakeStream`s; it records what it was given (`seen`: the clips of each transcribe call; `streams`:
the options of each opened stream). Errors can be injected: `fail` (raised by transcribe and transcribe_iter),
`stream_fail` (raised by a stream's advance/finish once it has `stream_fail_after` samples). Any front door
(/invocations, the response stream, the WebSocket route, OpenAI-style routes, event protocols) can be tested
against it; tests/test_serve_contract.py checks that it keeps the contract's signatures.
"""
from __future__ import annotations

import time

import numpy as np

from serve import contract

RATE = 16_000


class FakeModel:
    """The contract in a few lines: transcribes a clip as its length, records what it was given."""
    info = contract.ModelInfo("FakeForCTC", languages=("eng", "fra"), default_language="eng")

    def __init__(self, delay_s: float = 0.0, fail: Exception | None = None,
                 stream_fail: Exception | None = None, stream_fail_after: int = 0):
        self.delay_s, self.fail, self.healthy, self.seen = delay_s, fail, True, []
        self.stream_fail, self.stream_fail_after = stream_fail, stream_fail_after
        self.streams: list = []  # the options of each stream opened

    def health(self) -> contract.Health:
        return contract.Health(self.healthy, "fake model is down")

    def _check(self, clip_options) -> None:
        if clip_options.language not in (None, *self.info.languages):
            raise contract.UnknownLanguage(clip_options.language, self.info.languages)

    def transcribe(self, clips, *, deadline: float) -> list[contract.Transcript]:
        self.seen.append(clips)
        if self.fail is not None:
            raise self.fail
        time.sleep(min(self.delay_s, max(0.0, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            raise contract.Timeout("not ready by the deadline")
        for c in clips:
            self._check(c.options)
        return [contract.Transcript(f"{len(c.audio)} samples {c.options.language or 'eng'}",
                                    round(len(c.audio) / RATE, 3),
                                    [contract.Word("x", 0.0, 0.02)] if c.options.timestamps else None, batch_size=2)
                for c in clips]

    def transcribe_iter(self, clip, *, deadline: float):
        """One segment per second of audio (at least one), its text the second's length in samples."""
        self.seen.append([clip])
        if self.fail is not None:
            raise self.fail
        self._check(clip.options)
        n = len(clip.audio)
        starts = list(range(0, n, RATE)) or [0]
        for i, start in enumerate(starts):
            end = min(n, start + RATE)
            yield contract.Segment(i, start / RATE, end / RATE, f"{end - start} samples",
                                   [contract.Word("x", start / RATE, end / RATE)] if clip.options.timestamps
                                   else None, last=i == len(starts) - 1)

    def open_stream(self, options) -> "FakeStream":
        self._check(options)
        self.streams.append(options)
        return FakeStream(self, options)


class FakeStream:
    """A live stream in a few lines: an utterance is what runs from its first non-zero sample until SILENCE
    zero samples in a row; its final's text is its count of non-zero samples ("3200 samples"), with one word
    spanning it. Every advance that saw new audio gives a partial of the same text (stable: "")."""
    SILENCE = RATE // 2

    def __init__(self, model: FakeModel, options):
        self.model, self.options = model, options
        self.received = 0
        self.utterance, self.start = 0, 0  # the current utterance, the sample it starts at
        self.speech, self.quiet = 0, 0  # its non-zero samples; zero samples at its end
        self.advanced = 0  # samples received at the last advance
        self.audio_seconds, self.utterances, self.windows, self.max_batch = 0.0, 0, 0, 0
        self.behind_s = 0.0
        self.turns: list[tuple] = []  # set_turn_detection calls

    def push(self, samples: np.ndarray) -> None:
        for x in np.asarray(samples, np.float32):  # a few seconds at most in the tests
            self.received += 1
            if x != 0:
                self.speech, self.quiet = self.speech + 1, 0
            elif self.speech:
                self.quiet += 1
        self.audio_seconds = self.received / RATE

    def _maybe_fail(self) -> None:
        if self.model.stream_fail is not None and self.received >= self.model.stream_fail_after:
            raise self.model.stream_fail

    def advance(self, deadline: float) -> list[contract.Event]:
        self._maybe_fail()
        if self.received == self.advanced:
            return []
        self.advanced = self.received
        self.windows += 1
        self.max_batch = 1
        if self.speech and self.quiet >= self.SILENCE:
            return [self._final(last=False)]
        return [contract.Partial(self.utterance, f"{self.speech} samples", "", self.start / RATE,
                                 self.received / RATE)]

    def finish(self, deadline: float) -> list[contract.Event]:
        self._maybe_fail()
        return [self._final(last=True)]

    def commit(self, deadline: float) -> list[contract.Event]:
        self._maybe_fail()
        return [self._final(last=False)]

    def clear(self, deadline: float) -> list[contract.Event]:
        self.utterance, self.start, self.speech, self.quiet = self.utterance + 1, self.received, 0, 0
        return []

    def set_turn_detection(self, mode: str, *, threshold: float | None = None, prefix_padding_s: float | None = None,
                           silence_s: float | None = None) -> None:
        self.turns.append((mode, threshold, prefix_padding_s, silence_s))

    def _final(self, last: bool) -> contract.Final:
        text = f"{self.speech} samples" if self.speech else ""
        start, end = self.start / RATE, self.received / RATE
        final = contract.Final(self.utterance, text, start, end, last,
                               (contract.Word("x", start, end),) if self.speech else ())
        self.utterances += bool(self.speech)
        self.utterance, self.start, self.speech, self.quiet = self.utterance + 1, self.received, 0, 0
        return final
