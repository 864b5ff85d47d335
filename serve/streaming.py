"""Live transcription of one audio stream: sliding windows, committed frames, utterances cut at pauses.

Wav2Vec2 is not a streaming model (its attention sees the whole input), so a stream is transcribed in sliding
windows through the model's ordinary forward pass (`ServingModel.submit`, the same batcher as /invocations),
and each CTC frame is decided once, when it has enough context on both sides. In frames of the model's output
(20 ms for wav2vec2; F input samples per frame, a frame seeing RF samples):

    committed frames [0, c) are final and never recomputed;
    a step commits the next S frames [c, c+S) with one window covering frames [max(0, c-L), c+S+R), i.e. the
    samples [a*F, (c+S+R-1)*F + RF): L frames of left context, R frames of right look-ahead. The window runs as
    soon as the stream has sent that audio;
    the R look-ahead frames of the newest window are tentative: they show in partials and are recomputed by
    the next window, which has more context.

S, L, R come from SERVE_STREAM_STEP_S, _LEFT_S, _RIGHT_S. Windows start on frame boundaries, so a window's
frames are the frames of the whole stream (the same grid as /invocations). Each window is normalised over its
own samples (as the Hugging Face pipeline normalises each chunk). When a stream falls behind (a client sending
faster than real time), up to MAX_WINDOWS ready windows are submitted at once and share forward passes.

Utterances: a committed frame is non-speech when its best token is the CTC blank, the word delimiter or a
special token. A run of SERVE_STREAM_SILENCE_S of non-speech after speech ends the utterance (the run may end
in the tentative frames once half of it is committed), and the utterance's committed logits are decoded by
the decoder the session's options choose (`ServingModel.decoder`, serve/decoding.py) into its `final`, with
word times from the start of the stream. An utterance that runs SERVE_STREAM_MAX_UTTERANCE_S without such a
pause is cut at the end of its last complete word. Partials are greedy: the committed words (`stable`, they
never change within the utterance) and the words of the frames after them; with greedy decoding the final of
an utterance starts with every stable prefix its partials showed. A model with an LM decodes finals with beam
search + LM by default (the request options decoder, beam_width, alpha, beta, hotwords apply, as in
/invocations), in its beam-search processes: the final can then differ from the greedy partials (that is the
LM's point), and the session waits for it before its next window.

Events are dicts, sent by serve/stream_route.py as JSON text frames:
    {"type": "partial", "utterance": 0, "text": "the red ca", "stable": "the red", "start": 0.0, "end": 1.86}
    {"type": "final", "utterance": 0, "text": "the red cat", "start": 0.0, "end": 2.4, "last": false,
     "words": [{"word": "the", "start": 0.12, "end": 0.22}, ...]}
"""
from __future__ import annotations

import time
from concurrent.futures import wait
from dataclasses import dataclass, field

import numpy as np
import torch

from . import contract, decoding

MAX_WINDOWS = 8  # windows one step submits at most (a stream that fell behind catches up in batches)


@dataclass(frozen=True)
class StreamConfig:
    step_s: float = 0.5
    left_s: float = 2.0
    right_s: float = 0.5
    silence_s: float = 0.5
    max_utterance_s: float = 30.0

    @classmethod
    def from_settings(cls, s) -> "StreamConfig":
        return cls(s.stream_step_s, s.stream_left_s, s.stream_right_s, s.stream_silence_s,
                   s.stream_max_utterance_s)


@dataclass(frozen=True)
class _Window:
    first: int    # first frame of the window (absolute)
    commit: int   # first frame it commits
    until: int    # frames [commit, until) are committed by it
    end: int      # last sample (exclusive, absolute)


@dataclass
class _Utterance:
    index: int
    start: int  # first frame (absolute)
    stream: decoding.GreedyStream
    logits: list[torch.Tensor] = field(default_factory=list)  # committed frames, on the host, float32
    frames: int = 0
    words: list[tuple[str, int, int]] = field(default_factory=list)  # stable words, frames from `start`
    speech: bool = False  # a speech frame was committed
    quiet: int = 0  # non-speech frames at the end of the committed ones


class Transcriber:
    """One stream's transcription state. Not thread-safe: one session thread drives it.

    push(samples) adds 16 kHz mono float32 audio; advance(deadline) runs the windows that audio completed and
    returns the events they produce; finish(deadline) commits everything left and returns the last events, the
    last of them a `final` with "last": true. Model errors are the contract's (Timeout, Unavailable,
    ModelFailure); an unknown language is a BadRequest from the constructor."""

    def __init__(self, model, options, config: StreamConfig):
        info = model.info
        self.model, self.options = model, options
        self.F, self.RF, self.frame_s = info.frame_samples, info.receptive_field, info.frame_seconds
        frames = lambda seconds: round(seconds / self.frame_s)  # noqa: E731
        self.S, self.L, self.R = max(1, frames(config.step_s)), frames(config.left_s), frames(config.right_s)
        self.silence = max(1, frames(config.silence_s))
        self.max_utterance = max(2 * self.S, frames(config.max_utterance_s))
        self.vocab = model.vocabulary(options)
        self.final_decoder = model.decoder(options)
        v = self.vocab
        self.quiet_ids = torch.tensor(sorted({v.blank_id, *v.dropped, *(i for i in range(v.size) if v.is_space(i))}))
        self.audio = np.zeros(0, np.float32)
        self.audio_start = 0  # absolute sample index of self.audio[0]
        self.received = 0  # samples received
        self.committed = 0  # frames committed
        self.tentative = torch.zeros(0, v.size)
        self.utterance = self._utterance(0, 0)
        self._last_partial: tuple[str, str] | None = None
        self.windows = 0  # statistics for the session's log line
        self.max_batch = 0
        self.utterances = 0

    @property
    def audio_seconds(self) -> float:
        return self.received / 16_000

    def push(self, samples: np.ndarray) -> None:
        if len(samples):
            self.audio = np.concatenate([self.audio, np.asarray(samples, np.float32)])
            self.received += len(samples)

    def advance(self, deadline: float) -> list[dict]:
        """Run the windows the audio received so far completes (at most MAX_WINDOWS)."""
        events = self._run(self._ready(final=False), deadline)
        events += self._cut_on_tentative(deadline)
        partial = self._partial()
        return events + ([partial] if partial else [])

    def finish(self, deadline: float) -> list[dict]:
        """Commit every frame of the audio received, then the last utterance's final (with "last": true)."""
        events: list[dict] = []
        while True:
            windows = self._ready(final=True)
            if not windows:
                break
            events += self._run(windows, deadline)
        self.tentative = self.tentative[:0]
        return events + [self._cut(deadline, last=True)]

    # Windows ------------------------------------------------------------------------------------------
    def _frames_in(self, samples: int) -> int:
        return (samples - self.RF) // self.F + 1 if samples >= self.RF else 0

    def _ready(self, final: bool) -> list[_Window]:
        out, c = [], self.committed
        while len(out) < MAX_WINDOWS:
            end = (c + self.S + self.R - 1) * self.F + self.RF
            if self.received >= end:
                out.append(_Window(max(0, c - self.L), c, c + self.S, end))
                c += self.S
                continue
            if final and c < self._frames_in(self.received):
                out.append(_Window(max(0, c - self.L), c, self._frames_in(self.received), self.received))
            break
        return out

    def _run(self, windows: list[_Window], deadline: float) -> list[dict]:
        if not windows:
            return []
        audio = [self.audio[w.first * self.F - self.audio_start: w.end - self.audio_start] for w in windows]
        futures = self.model.submit(audio, self.options)
        done, not_done = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        if not_done:
            for f in futures:
                f.cancel()
            raise contract.Timeout("a stream window was not transcribed by its deadline")
        events = []
        for w, f in zip(windows, futures):
            if f.exception() is not None:
                raise contract.ModelFailure("the model failed on this stream (details in the server log)") \
                    from f.exception()
            outcome = f.result()
            logits = outcome.value.float().cpu()
            self.windows += 1
            self.max_batch = max(self.max_batch, outcome.batch_size)
            events += self._commit(logits[w.commit - w.first: w.until - w.first], deadline)
            self.tentative = logits[w.until - w.first:]
        keep = max(0, (self.committed - self.L) * self.F)  # the next window's left context starts here
        if keep > self.audio_start:
            self.audio = self.audio[keep - self.audio_start:]
            self.audio_start = keep
        return events

    # Commits and utterances ----------------------------------------------------------------------------
    def _utterance(self, index: int, start: int) -> _Utterance:
        return _Utterance(index, start, decoding.GreedyStream(self.vocab))

    def _commit(self, logits: torch.Tensor, deadline: float) -> list[dict]:
        """Add committed frames to the utterance, cutting it where a pause after speech is long enough."""
        events = []
        quiet = torch.isin(logits.argmax(dim=-1), self.quiet_ids).tolist()
        u, begin = self.utterance, 0
        for i, q in enumerate(quiet):
            u.quiet = u.quiet + 1 if q else 0
            u.speech = u.speech or not q
            if u.speech and u.quiet >= self.silence:
                self._append(logits[begin: i + 1])
                events.append(self._cut(deadline))
                u, begin = self.utterance, i + 1
        self._append(logits[begin:])
        if self.utterance.frames >= self.max_utterance:
            events.append(self._cut(deadline, at_word=True))
        return events

    def _append(self, logits: torch.Tensor) -> None:
        if not len(logits):
            return
        u = self.utterance
        u.logits.append(logits)
        u.frames += len(logits)
        u.words += u.stream.push(logits)
        self.committed += len(logits)

    def _cut_on_tentative(self, deadline: float) -> list[dict]:
        """End the utterance early when half its pause is committed and the look-ahead frames continue it."""
        u = self.utterance
        if not u.speech or u.quiet < (self.silence + 1) // 2 or not len(self.tentative):
            return []
        speech = ~torch.isin(self.tentative.argmax(dim=-1), self.quiet_ids)
        lead = int(speech.nonzero()[0, 0]) if speech.any() else len(speech)
        return [self._cut(deadline)] if u.quiet + lead >= self.silence else []

    def _cut(self, deadline: float, last: bool = False, at_word: bool = False) -> dict:
        """The current utterance's final; the next utterance starts after it. Beam search (a model with an LM)
        decodes it in the model's beam-search processes, by `deadline` (contract.Timeout otherwise)."""
        u = self.utterance
        logits = torch.cat(u.logits) if u.logits else torch.zeros(0, self.vocab.size)
        at = len(logits)
        if at_word and u.words and 0 < u.words[-1][2] < at:
            at = u.words[-1][2]
        if at and u.speech:
            with torch.inference_mode():
                hyp = self.final_decoder.decode(logits[:at], self.vocab, words=True, deadline=deadline)
        else:  # no speech frame: nothing to decode (and no beam-search round trip for a pause)
            hyp = decoding.Hypothesis("")
        step = self.frame_s
        event = {"type": "final", "utterance": u.index, "text": hyp.text,
                 "start": round(u.start * step, 3), "end": round((u.start + at) * step, 3),
                 "words": [{"word": w, "start": round((u.start + s) * step, 3), "end": round((u.start + e) * step, 3)}
                           for w, s, e in hyp.words],
                 "last": last}
        self.utterances += bool(hyp.text)
        rest = logits[at:]
        self.utterance = self._utterance(u.index + 1, u.start + at)
        self._last_partial = None
        if len(rest):  # a cut at a word boundary: the frames after it begin the next utterance
            self.committed -= len(rest)
            self._append(rest)
            q = torch.isin(rest.argmax(dim=-1), self.quiet_ids)
            self.utterance.speech = bool((~q).any())
            trailing = (~q).nonzero()
            self.utterance.quiet = len(q) - (int(trailing[-1, 0]) + 1) if len(trailing) else len(q)
        return event

    def _partial(self) -> dict | None:
        u = self.utterance
        tail_stream = u.stream.fork()
        tail = (tail_stream.push(self.tentative) if len(self.tentative) else []) + tail_stream.finish()
        stable = " ".join(w for w, _, _ in u.words)
        text = " ".join(w for w, _, _ in u.words + tail)
        if (text, stable) == (self._last_partial or ("", "")):
            return None
        self._last_partial = (text, stable)
        return {"type": "partial", "utterance": u.index, "text": text, "stable": stable,
                "start": round(u.start * self.frame_s, 3),
                "end": round((self.committed + len(self.tentative)) * self.frame_s, 3)}
