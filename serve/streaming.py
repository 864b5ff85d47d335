"""Live transcription of one audio stream: sliding windows, committed frames, utterances cut at pauses.

Wav2Vec2 is not a streaming model (its attention sees the whole input), so a stream is transcribed in sliding
windows through the model's batcher (the same as /invocations'), and each CTC frame is decided once, when it
has enough context on both sides. In frames of the model's output (20 ms for wav2vec2; F input samples per
frame, a frame seeing RF samples):

    committed frames [0, c) are final and never recomputed;
    a step commits the next S frames [c, c+S) with one window covering frames [max(0, c-L), c+S+R), i.e. the
    samples [a*F, (c+S+R-1)*F + RF): L frames of left context, R frames of right look-ahead. The window runs as
    soon as the stream has sent that audio;
    when k > 1 steps are ready at once (the stream is behind: the session took several waiting messages), ONE
    window [max(0, c-L), c+k*S+R) commits them all (at most MAX_COMMIT_S), instead of k windows: a slow model
    or a busy worker turns into larger latency rather than falling further behind; its partial says behind_s;
    the R look-ahead frames of the newest window are tentative: they show in partials and are recomputed by
    the next window, which has more context.

S, L, R come from SERVE_STREAM_STEP_S, _LEFT_S, _RIGHT_S. Windows start on frame boundaries, so a window's
frames are the frames of the whole stream (the same grid as /invocations). Where the model can
(`model.stream_features`, serve/streamfeatures.py) each frame's feature-encoder output is computed once, from the
new audio (normalised with the stream's running statistics), and a window runs feature projection + transformer
over cached and new frames (`submit_features`); otherwise each window runs whole (`submit`), normalised over its
own samples (as the Hugging Face pipeline normalises each chunk).

Utterances: a committed frame is non-speech when its best token is the CTC blank, the word delimiter or a
special token. A run of SERVE_STREAM_SILENCE_S of non-speech after speech ends the utterance (the run may end
in the tentative frames once half of it is committed). The utterance's audio (with L frames of left context
and up to R of look-ahead) then runs once more through the model in one pass, normalised over its own samples
as /invocations normalises a clip, and those logits are decoded by the decoder the session's options choose
(`ServingModel.decoder`, serve/decoding.py) into its `final`, with word times from the start of the stream.
So a final does not depend on the windows that committed its frames: not on catch-up windows, nor on running
statistics, nor therefore on how fast the client sent the audio (issue 28: window-decoded finals were 0.044
CER from /invocations at 4x real time, 0.013 at real time; bench/README.md, Live streaming). The pass costs
one forward pass over the utterance per final. An utterance that runs SERVE_STREAM_MAX_UTTERANCE_S without
such a pause is cut at the end of its last complete word. Partials are greedy, from the windows: the committed
words (`stable`, they never change within the utterance) and the words of the frames after them; the final
usually starts with the stable words its partials showed, but is not bound to (its own pass has more
context). A model with an LM decodes finals with beam search + LM by default (the request options decoder,
beam_width, alpha, beta, hotwords apply, as in /invocations), in its beam-search processes, and the session
waits for it before its next window.

A `Transcriber` is the contract's LiveStream (serve/contract.py): `ServingModel.open_stream(options)` makes
one with the model's StreamConfig (SERVE_STREAM_*, set by serve.model.load). Its events are the contract's
`Partial` and `Final`; serve/stream_route.py writes them as JSON text frames.

One file because the window arithmetic, the commits and the utterance cuts share one stream's state (committed
frames, tentative frames, the audio kept for a final's pass) and every method moves it; split, each part would
reach into the others' fields.
"""
from __future__ import annotations

import dataclasses
import time
from concurrent.futures import wait
from dataclasses import dataclass, field

import numpy as np
import torch

from . import contract, decoding, streamfeatures

MAX_COMMIT_S = 10.0  # most audio one window commits (a stream that fell behind catches up in larger windows)
WARMUP_S = 3.0  # a stream's first seconds run whole windows, before its frames are cached
FINAL_LEFT_S = 2.0  # left context of a final's pass over its utterance (at least SERVE_STREAM_LEFT_S)


@dataclass(frozen=True)
class StreamConfig:
    step_s: float = 0.5
    left_s: float = 2.0
    right_s: float = 0.3
    silence_s: float = 0.5
    max_utterance_s: float = 30.0
    endpointing: str = "ctc"  # TURN_MODES: what ends an utterance (SERVE_STREAM_ENDPOINTING)
    vad_threshold: float = 0.5
    vad_prefix_padding_s: float = 0.3

    @classmethod
    def from_settings(cls, s) -> "StreamConfig":
        return cls(s.stream_step_s, s.stream_left_s, s.stream_right_s, s.stream_silence_s,
                   s.stream_max_utterance_s, getattr(s, "stream_endpointing", "ctc"),
                   getattr(s, "stream_vad_threshold", 0.5), getattr(s, "stream_vad_prefix_padding_s", 0.3))


# What ends an utterance: Silero VAD's pauses (serve/streamvad.py), runs of CTC blanks, or only the client
# (commit) and SERVE_STREAM_MAX_UTTERANCE_S.
TURN_MODES = ("vad", "ctc", "manual")


@dataclass(frozen=True)
class _Window:
    first: int    # first frame of the window (absolute)
    commit: int   # first frame it commits
    until: int    # frames [commit, until) are committed by it
    end: int      # last sample (exclusive, absolute)
    steps: int = 1  # steps it commits (more than one: the stream was behind)


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
    """One stream's transcription state (a contract.LiveStream). Not thread-safe: one session thread drives it.

    push(samples) adds 16 kHz mono float32 audio; advance(deadline) runs the windows that audio completed and
    returns the events they produce (contract.Partial, contract.Final); finish(deadline) commits everything
    left and returns the last events, the last of them a Final with last=True. Model errors are the
    contract's (Timeout, Unavailable, ModelFailure); an unknown language is a BadRequest from the
    constructor."""

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
        self.max_steps = max(1, round(MAX_COMMIT_S / (self.S * self.frame_s)))
        self.final_left = max(self.L, frames(FINAL_LEFT_S))
        self.audio = np.zeros(0, np.float32)
        self.audio_start = 0  # absolute sample index of self.audio[0]
        # Feature-encoder frames computed once (serve/streamfeatures.py), where the model can: frames
        # [features_start, encoded) of the stream, on the device.
        self.cache = bool(getattr(model, "stream_features", None))
        self.encoded = 0
        self.features_start = 0
        self.features: torch.Tensor | None = None
        self.sample_stats, self.channel_stats = model.stream_stats() if self.cache else (None, None)
        self.stats_until = 0  # samples counted in sample_stats
        self.received = 0  # samples received
        self.committed = 0  # frames committed
        self.tentative = torch.zeros(0, v.size)
        self.utterance = self._utterance(0, 0)
        self._last_partial: tuple[str, str] | None = None
        self.windows = 0  # statistics for the session's log line
        self.final_passes = 0
        self.max_batch = 0
        self.utterances = 0
        # Turns (set_turn_detection): the VAD, the frames where utterances it ended are cut, the span and frame
        # probabilities of the last final's pass (for the Final's audio_start/audio_end and word confidences).
        self.turn_mode = "ctc"
        self.vad = None
        self.vad_at = 0  # samples the VAD has read
        self.cuts: list[int] = []
        self.heard: set[int] = set()  # utterances in which the VAD heard speech start (no longer trimmed)
        self.prefix = frames(config.vad_prefix_padding_s)
        self._frames = frames
        self._finishing = False
        self._span: tuple[int, int] | None = None
        self._probs: torch.Tensor | None = None
        self.set_turn_detection(config.endpointing, threshold=config.vad_threshold, silence_s=config.silence_s)

    @property
    def audio_seconds(self) -> float:
        return self.received / 16_000

    def push(self, samples: np.ndarray) -> None:
        if len(samples):
            self.audio = np.concatenate([self.audio, np.asarray(samples, np.float32)])
            self.received += len(samples)

    def advance(self, deadline: float) -> list[contract.Event]:
        """Run the window the audio received so far completes: one step, or several at once when the stream is
        behind (at most MAX_COMMIT_S of them)."""
        heard = self._listen()  # the VAD over the new audio: speech starts and stops, utterance ends to cut
        window = self._ready(final=False)
        events = self._run(window, deadline) if window else []
        events += self._cut_on_tentative(deadline)
        partial = self._partial(window)
        return heard + events + ([partial] if partial else [])

    def finish(self, deadline: float) -> list[contract.Event]:
        """Commit every frame of the audio received, then the last utterance's final (with last=True)."""
        # The VAD first hears what arrived since the last step: audio sent faster than real time may reach the
        # end of the stream unheard, and its pauses must still end utterances.
        events: list[contract.Event] = self._listen()
        while (window := self._ready(final=True)) is not None:
            events += self._run(window, deadline)
        self.tentative = self.tentative[:0]
        self._finishing = True
        return events + [self._cut(deadline, last=True)]

    # Turns: client commits, clears, VAD endpointing (serve/realtime.py, serve/stream_route.py) -----------------
    def set_turn_detection(self, mode: str, *, threshold: float | None = None, prefix_padding_s: float | None = None,
                           silence_s: float | None = None) -> None:
        """What ends an utterance from now on (TURN_MODES): "vad" (Silero VAD: speech that stops for silence_s;
        speech starts at threshold), "ctc" (silence_s of CTC blanks after speech), "manual" (only `commit` and
        SERVE_STREAM_MAX_UTTERANCE_S). BadRequest for an unknown mode."""
        if mode not in TURN_MODES:
            raise contract.BadRequest(f"endpointing {mode!r} is not one of {', '.join(TURN_MODES)}")
        if silence_s is not None:
            self.silence = max(1, self._frames(silence_s))
        if prefix_padding_s is not None:
            self.prefix = self._frames(prefix_padding_s)
        self.turn_mode = mode
        self.cuts.clear()
        if mode != "vad":
            self.vad = None
            return
        from . import streamvad  # onnxruntime: only for streams that use it

        if self.vad is None:
            self.vad = streamvad.StreamVad()
            self.vad_at = self.received  # the VAD listens from now on
        self.vad.configure(self.vad.threshold if threshold is None else threshold, self.silence * self.frame_s)

    def commit(self, deadline: float) -> list[contract.Event]:
        """The client ends the utterance here: every frame of the audio received is committed, and the current
        utterance's Final (last=False) is the last event; the stream goes on after it."""
        events = self._listen()
        while (window := self._ready(final=True)) is not None:
            events += self._run(window, deadline)
        self.tentative = self.tentative[:0]
        self._finishing = True  # its pass reads the audio to its last sample, as finish's does
        try:
            events.append(self._cut(deadline))
        finally:
            self._finishing = False
        self._turn_reset()
        return events

    def clear(self, deadline: float) -> list[contract.Event]:
        """Drop the current utterance's audio (the client cleared its buffer): no Final for it; the next one
        starts after the audio received so far. Returns the Finals of utterances the VAD ended before it."""
        events = self._listen()
        while (window := self._ready(final=True)) is not None:
            events += self._run(window, deadline)
        self.tentative = self.tentative[:0]
        self.utterance = self._utterance(self.utterance.index + 1, self.committed)
        self._last_partial = None
        self._turn_reset()
        return [e for e in events if isinstance(e, contract.Final)]

    @property
    def behind_s(self) -> float:
        """Seconds of audio received that no window has committed yet, beyond the step and look-ahead a stream
        keeping up waits for: how far behind real time the stream is."""
        return max(0.0, (self.received - self._end(self.committed + self.S + self.R)) / 16_000)

    def _turn_reset(self) -> None:
        self.cuts.clear()
        if self.vad is not None:
            self.vad.reset()

    def _listen(self) -> list[contract.Event]:
        """Run the VAD over the audio received since it last ran: SpeechStarted / SpeechStopped events, and the
        frames where the utterances it ended are to be cut (`_commit_turns` cuts them once committed)."""
        if self.vad is None or self.received <= self.vad_at:
            return []
        audio = self.audio[max(self.vad_at, self.audio_start) - self.audio_start:]
        self.vad_at = self.received
        events: list[contract.Event] = []
        for change in self.vad.feed(audio):
            index = self.utterance.index + len(self.cuts)  # the utterance the change falls in
            if change[0] == "start":
                self.heard.add(index)
                start = max(0, change[1] - self.prefix * self.F)
                events.append(contract.SpeechStarted(index, round(start / 16_000, 3)))
            else:
                _, end, cut = change
                events.append(contract.SpeechStopped(index, round(end / 16_000, 3)))
                self.cuts.append(max(1, round(cut / self.F)))
        return events

    def _commit_turns(self, logits: torch.Tensor, deadline: float) -> list[contract.Event]:
        """`_commit` when the VAD or the client ends utterances: cut at the frames the VAD chose, else only at
        SERVE_STREAM_MAX_UTTERANCE_S; before speech, the utterance keeps only prefix padding of silence."""
        events = []
        while self.cuts and self.cuts[0] <= self.committed + len(logits):
            k = max(0, self.cuts.pop(0) - self.committed)
            self._append_turn(logits[:k])
            logits = logits[k:]
            events.append(self._cut(deadline))
        self._append_turn(logits)
        if self.utterance.frames >= self.max_utterance:
            events.append(self._cut(deadline, at_word=True))
        self._trim()
        return events

    def _append_turn(self, logits: torch.Tensor) -> None:
        if len(logits):
            self.utterance.speech = self.utterance.speech or bool(
                (~torch.isin(logits.argmax(dim=-1), self.quiet_ids)).any())
            self._append(logits)

    def _trim(self) -> None:
        """VAD mode, no speech heard yet in the utterance: drop its committed frames but the last
        prefix_padding (and a step), so that a pause is neither decoded nor kept in memory."""
        u = self.utterance
        if self.turn_mode != "vad" or u.index in self.heard or self.cuts or (self.vad is not None and self.vad.speaking):
            return
        keep = self.prefix + self.S
        if u.frames <= keep + self.S:
            return
        rest = torch.cat(u.logits)[u.frames - keep:]
        self.utterance = self._utterance(u.index, u.start + u.frames - keep)
        self.committed -= len(rest)
        self._append_turn(rest)
        self._last_partial = None

    def _extended(self, event):
        """A Final with the span of audio its pass read (audio_start, audio_end: seconds from the stream's start)
        and each word's confidence (the mean over its frames of the best token's probability)."""
        span, probs = self._span, self._probs
        self._span = self._probs = None
        fs = self.frame_s
        if span is None:
            a = round(event.start / fs) * self.F
            span = (a, max(a, min(self.received, round(event.end / fs) * self.F)))
        confidences: tuple[float, ...] = ()
        if probs is not None and event.words:
            s0 = round(event.start / fs)
            out = []
            for w in event.words:
                a = min(max(0, round(w.start / fs) - s0), len(probs) - 1)
                b = max(a + 1, round(w.end / fs) - s0)
                out.append(round(float(probs[a:b].mean()), 3))
            confidences = tuple(out)
        return dataclasses.replace(event, audio_start=round(span[0] / 16_000, 6), audio_end=round(span[1] / 16_000, 6),
                                   confidences=confidences)

    # Windows ------------------------------------------------------------------------------------------
    def _frames_in(self, samples: int) -> int:
        return (samples - self.RF) // self.F + 1 if samples >= self.RF else 0

    def _end(self, frames: int) -> int:
        """The sample after the last one frames [0, frames) see."""
        return (frames - 1) * self.F + self.RF

    def _ready(self, final: bool) -> _Window | None:
        """The next window: every whole step the audio received completes (look-ahead included), at most
        max_steps; at the end of the stream (final), the rest of the frames."""
        c = self.committed
        first = max(0, c - self.L)
        steps = 0
        while steps < self.max_steps and self.received >= self._end(c + (steps + 1) * self.S + self.R):
            steps += 1
        if steps:
            until = c + steps * self.S
            return _Window(first, c, until, self._end(until + self.R), steps)
        available = self._frames_in(self.received)
        if final and c < available:
            until = min(available, c + self.max_steps * self.S)
            return _Window(first, c, until, min(self.received, self._end(until + self.R)), 1)
        return None

    def _run(self, w: _Window, deadline: float) -> list[contract.Event]:
        # The first WARMUP_S of a stream run whole windows: running statistics of a second of audio are too
        # unsteady to normalise frames that are then kept (measured: bench/README.md, Live streaming).
        cached = self.cache and (self.features is not None or w.end >= WARMUP_S * 16_000)
        if cached:
            future = self.model.submit_features([self._features_window(w)], self.options)[0]
        else:
            future = self.model.submit([self.audio[w.first * self.F - self.audio_start: w.end - self.audio_start]],
                                       self.options)[0]
        outcome = self._result(future, deadline)
        if cached:
            out = outcome.value
            old = None if self.features is None else self.features[w.first - self.features_start:]
            self.features = out.features if old is None else torch.cat([old, out.features])
            self.features_start = w.first
            self.encoded += len(out.features)
            logits = out.logits.float().cpu()
        else:
            logits = outcome.value.float().cpu()
        self.windows += 1
        self.max_batch = max(self.max_batch, outcome.batch_size)
        events = self._commit(logits[w.commit - w.first: w.until - w.first], deadline)
        self.tentative = logits[w.until - w.first:]
        # What the next window needs: its left context's features (cached) or samples (whole-window passes),
        # and the samples of the frames not encoded yet.
        first = max(0, self.committed - self.L)
        if self.features is not None:
            self.features = self.features[first - self.features_start:]
            self.features_start = first
        keep = self.encoded * self.F if cached else first * self.F  # (stats_until >= encoded * F)
        keep = min(keep, self._final_from(self.utterance.start))  # the utterance's audio, for its final pass
        if keep > self.audio_start:
            self.audio = self.audio[keep - self.audio_start:]
            self.audio_start = keep
        return events

    @staticmethod
    def _result(future, deadline: float):
        done, _ = wait([future], timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            future.cancel()
            raise contract.Timeout("a stream window was not transcribed by its deadline")
        if future.exception() is not None:
            raise contract.ModelFailure("the model failed on this stream (details in the server log)") \
                from future.exception()
        return future.result()

    def _final_from(self, start: int) -> int:
        """The first sample the final pass of an utterance starting at frame `start` reads (L frames before; with
        VAD or client turns, its own first sample: its utterance begins in a pause, or where the client said)."""
        return max(0, start - (self.final_left if self.turn_mode == "ctc" else 0)) * self.F

    def _final_logits(self, start: int, frames: int, deadline: float) -> torch.Tensor:
        """Frames [start, start + frames) of the stream from one pass over the utterance's audio, with L frames
        of left context and up to R of look-ahead, normalised over its own samples as /invocations normalises a
        clip: what the windows computed (their context, catch-up windows, running statistics) and so the
        client's sending pace do not change a final."""
        first = self._final_from(start) // self.F
        end = min(self.received, self._end(start + frames + self.R))
        if self.turn_mode != "ctc" and not self._finishing:
            end = self._end(start + frames)  # exactly its frames: the final is the offline transcript of its span
        audio = self.audio[first * self.F - self.audio_start: end - self.audio_start]
        logits = self._result(self.model.submit([audio], self.options)[0], deadline).value
        self.final_passes += 1
        out = logits.float().cpu()[start - first: start - first + frames]
        self._span = (first * self.F, end)
        self._probs = torch.softmax(out, dim=-1).max(dim=-1).values
        return out

    def _features_window(self, w: _Window) -> streamfeatures.Window:
        """The window as cached frames [first, encoded) plus the samples of its frames not encoded yet, the new
        samples normalised with the stream's running statistics (serve/streamfeatures.py)."""
        if self.features is None:  # the first cached window (after WARMUP_S) encodes all its frames
            self.encoded = self.features_start = w.first
        end_frame = self._frames_in(w.end)
        audio = self.audio[:0]
        if end_frame > self.encoded:
            audio = self.audio[self.encoded * self.F - self.audio_start: self._end(end_frame) - self.audio_start]
            if self.sample_stats is not None:  # over every sample received so far (a clip sent whole: its own)
                self.sample_stats.add(self.audio[max(0, self.stats_until - self.audio_start):])
                self.stats_until = self.received
                audio = self.sample_stats.normalize(audio)
        cached = None if self.features is None else self.features[w.first - self.features_start:]
        return streamfeatures.Window(audio, cached, self.channel_stats)

    # Commits and utterances ----------------------------------------------------------------------------
    def _utterance(self, index: int, start: int) -> _Utterance:
        return _Utterance(index, start, decoding.GreedyStream(self.vocab))

    def _commit(self, logits: torch.Tensor, deadline: float) -> list[contract.Event]:
        """Add committed frames to the utterance, cutting it where a pause after speech is long enough."""
        if self.turn_mode != "ctc":
            return self._commit_turns(logits, deadline)
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

    def _cut_on_tentative(self, deadline: float) -> list[contract.Event]:
        """End the utterance early when half its pause is committed and the look-ahead frames continue it."""
        u = self.utterance
        if self.turn_mode != "ctc":
            return []
        if not u.speech or u.quiet < (self.silence + 1) // 2 or not len(self.tentative):
            return []
        speech = ~torch.isin(self.tentative.argmax(dim=-1), self.quiet_ids)
        lead = int(speech.nonzero()[0, 0]) if speech.any() else len(speech)
        return [self._cut(deadline)] if u.quiet + lead >= self.silence else []

    def _cut(self, deadline: float, last: bool = False, at_word: bool = False) -> contract.Final:
        """The current utterance's final, from one pass over its audio (`_final_logits`); the next utterance
        starts after it. Beam search (a model with an LM) decodes it in the model's beam-search processes, by
        `deadline` (contract.Timeout otherwise)."""
        u = self.utterance
        logits = torch.cat(u.logits) if u.logits else torch.zeros(0, self.vocab.size)
        at = len(logits)
        if at_word and u.words and 0 < u.words[-1][2] < at:
            at = u.words[-1][2]
        if at and u.speech:
            final = self._final_logits(u.start, at, deadline)
            with torch.inference_mode():
                hyp = self.final_decoder.decode(final, self.vocab, words=True, deadline=deadline)
        else:  # no speech frame: nothing to decode (and no beam-search round trip for a pause)
            hyp = decoding.Hypothesis("")
        step = self.frame_s
        event = contract.Final(
            utterance=u.index, text=hyp.text, start=round(u.start * step, 3), end=round((u.start + at) * step, 3),
            last=last, words=tuple(contract.Word(w, round((u.start + s) * step, 3), round((u.start + e) * step, 3))
                                   for w, s, e in hyp.words))
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
        return self._extended(event)

    def _partial(self, window: _Window | None) -> contract.Partial | None:
        """The current hypothesis, when it changed or when the window was a catch-up one (behind_s > 0)."""
        u = self.utterance
        tail_stream = u.stream.fork()
        tail = (tail_stream.push(self.tentative) if len(self.tentative) else []) + tail_stream.finish()
        stable = " ".join(w for w, _, _ in u.words)
        text = " ".join(w for w, _, _ in u.words + tail)
        behind = round((window.steps - 1) * self.S * self.frame_s, 3) if window else 0.0
        if (text, stable) == (self._last_partial or ("", "")) and not behind:
            return None
        self._last_partial = (text, stable)
        return contract.Partial(utterance=u.index, text=text, stable=stable, start=round(u.start * self.frame_s, 3),
                                end=round((self.committed + len(self.tentative)) * self.frame_s, 3), behind_s=behind)
