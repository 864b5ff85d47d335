"""The serving model contract: everything a front door may ask of a model, and what it gets back.

Front doors (`/invocations` and the response stream in serve/app.py, the WebSocket route in
serve/stream_route.py, and any OpenAI-style route or event protocol) turn request bytes into `Clip`s (16 kHz
mono float32 samples plus the request's `Options`) or live audio, and results into their own wire format; they
never import torch and never call the model object for anything not named here. Everything between is the
model's: normalising, cutting long audio into chunks, batching forward passes, the decoder stage (logits ->
text), adapters, sliding windows. serve/model.py implements the contract for Hugging Face CTC checkpoints;
tests implement it with a few lines of Python (tests/fake_models.py), and tests/test_serve_contract.py checks
that both keep the signatures below.

A model (`Model`) offers:

    health() -> Health
        Whether it can take requests now (`/ping` answers from it; it never blocks on inference).
    info -> ModelInfo
        What it is and can do: architecture, languages, decoders, whether it has an LM, frame geometry.
    transcribe(clips, *, deadline) -> list[Transcript]
        One transcript per clip, same order. All clips' chunks are queued at once, so one request's
        clips (and other requests' clips) share forward passes. `deadline` is a time.monotonic() value.
    transcribe_iter(clip, *, deadline) -> Iterator[Segment]
        One clip, results as they become ready: a `Segment` per chunk of long audio, in order, each with
        the words completed so far (a word that runs over a chunk edge comes with the next segment).
        Joining the segments' words gives the transcript `transcribe` returns (with beam search: for a
        clip of one chunk; on longer ones the LM's context restarts at each segment, see serve/model.py).
        For response streaming (POST /invocations-response-stream writes each segment as a JSON line).
    open_stream(options) -> LiveStream
        A live stream with one request's options (BadRequest for options the model cannot honour, e.g. an
        unknown language). Its audio goes through the same batcher as clips, so all streams and requests on a
        worker share forward passes (serve/streaming.py says how windows, utterances and finals are made).

A `LiveStream` is driven by one thread (it is not thread-safe):

    push(samples)          16 kHz mono float32 audio, any length; nothing runs yet.
    advance(deadline)      runs what the audio pushed so far completes; -> list[Event] (Partial, Final).
    finish(deadline)       no more audio: commits everything; -> list[Event], the last a Final with last=True.
    commit(deadline)       the client ends the utterance at the audio pushed so far; -> list[Event], the last
                           that utterance's Final (last=False); the stream goes on.
    clear(deadline)        drops the audio of the utterance in progress (no Final for it); -> the Finals of
                           utterances that ended before it.
    set_turn_detection(mode, *, threshold, prefix_padding_s, silence_s)
                           what ends an utterance from now on: "vad" (Silero VAD; SpeechStarted and
                           SpeechStopped events), "ctc" (runs of CTC blanks) or "manual" (commit only).
    behind_s               seconds of audio pushed that wait for their windows beyond what a stream keeping up
                           waits for (back-pressure: a front door closes a stream over SERVE_STREAM_MAX_BEHIND_S
                           with FellBehind).
    audio_seconds, utterances, windows, max_batch
                           its statistics so far, for the session's log line.

Errors (one hierarchy, below) are raised by the model and by the front doors alike. Each class carries its
HTTP status (`status`) and its WebSocket close code (`close_code`), because a kind of failure means the same
thing on every protocol; how it is written out is the protocol's: serve/errors.py turns one into an HTTP JSON
answer (`register`, `{"error": message}`, or any other `shape`, such as OpenAI's
`{"error": {"message", "type", "param", "code"}}`) or a WebSocket `error` event (`stream_event`). The
classes live here, not in errors.py, because the model side raises them and must not import Flask. Their
messages are safe to show to a client; a cause (`raise ... from exc`) goes to the log only.

Request options live in one typed table, serve/options.py (`Options`): the same names and types whether
they come from JSON fields, the query string, the X-Amzn-SageMaker-Custom-Attributes header or a stream's
settings frame. A new option (decoder, beam_width, hotwords, ...) is a new field there, read by the model;
the front doors do not change.

One file because it is the one contract every front door and every model is written against: the Model and
LiveStream signatures, the values they exchange and the errors they raise are read together, and
tests/test_serve_contract.py checks them as one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence, Union, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from .options import Options


# Errors --------------------------------------------------------------------------------------------------------
class ServingError(Exception):
    """Base of every error a front door answers; the message is safe to show to a client. On its own: an
    internal error (500; WebSocket 1011)."""
    status = 500  # HTTP status
    close_code = 1011  # WebSocket close code (RFC 6455, 7.4.1)

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ServingError):
    """The request is malformed or asks for something this model cannot do (unknown option value, unknown
    language, undecodable audio, a malformed stream frame)."""
    status, close_code = 400, 1007


class UnknownLanguage(BadRequest):
    def __init__(self, language: str, available: Sequence[str]):
        if available:
            message = f"unknown language {language!r}; this model has adapters for: {', '.join(available)}"
        else:
            message = (f"language={language!r}: this model has no language adapters (it transcribes the one "
                       f"language of its vocabulary); leave the language option out")
        super().__init__(message)
        self.language = language
        self.available = list(available)


class PayloadTooLarge(ServingError):
    """The request or a stream frame is over a size or length limit (the message names the setting)."""
    status, close_code = 413, 1009


class UnsupportedMediaType(ServingError):
    """A body whose content type the server does not decode."""
    status, close_code = 415, 1003


class NotAcceptable(ServingError):
    """An `Accept` header naming no media type the route can answer (HTTP only: a WebSocket has no Accept)."""
    status, close_code = 406, 1003


class RequestTimeout(ServingError):
    """The client stopped sending: a body not finished within SERVE_BODY_READ_TIMEOUT_S, a stream idle for
    SERVE_STREAM_IDLE_TIMEOUT_S (a policy close, after the stream's last final)."""
    status, close_code = 408, 1008


class LimitReached(ServingError):
    """A stream reached a limit the server sets on it (SERVE_STREAM_MAX_SESSION_S): a policy close, after the
    stream's last final."""
    status, close_code = 413, 1008


class FellBehind(ServingError):
    """A live stream's audio waits longer for its windows than SERVE_STREAM_MAX_BEHIND_S allows (sent faster
    than it is transcribed): closed instead of its memory growing; try again later or send slower."""
    status, close_code = 503, 1013


class Timeout(ServingError):
    """The transcript was not ready by the deadline; queued work for it was cancelled. (The edge names the
    setting that chose the deadline in its answer.)"""
    status, close_code = 503, 1013


class Unavailable(ServingError):
    """The model cannot take requests now (its forward-pass thread stopped, the server is stopping, every
    stream place is taken): try again later."""
    status, close_code = 503, 1013


class ModelFailure(ServingError):
    """The model failed on input it accepted; the cause is in the server log."""
    status, close_code = 500, 1011


# Requests and results ------------------------------------------------------------------------------------------
def _default_options() -> "Options":
    from .options import Options  # options.py raises this module's BadRequest, so it is imported late

    return Options()


@dataclass(frozen=True)
class Clip:
    audio: np.ndarray  # 16 kHz mono float32, as decoded from the request (not normalised)
    options: "Options" = field(default_factory=_default_options)


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the clip
    end: float
    # Mean posterior of the frames that spell the word (common/ctc.py word_probabilities); only with
    # options.confidence.
    probability: float | None = None


@dataclass(frozen=True)
class Transcript:
    text: str
    audio_seconds: float
    words: list[Word] | None = None  # only when options.timestamps
    batch_size: int = 1  # most clips that shared a forward pass with this clip's chunks
    segments: "list[Segment] | None" = None  # only when options.segments: one per chunk, in order
    language: str | None = None  # the adapter language transcribed (None: a model of one language)


@dataclass(frozen=True)
class Segment:
    """Part of a long clip's transcript: what became final once chunk `index` was decoded."""
    index: int
    start: float  # seconds: the part of the clip this segment's audio covers
    end: float
    text: str  # the words completed in this segment, joined with spaces
    words: list[Word] | None
    last: bool
    batch_size: int = 1
    avg_logprob: float | None = None  # mean over the segment's frames of log(top posterior); Transcript.segments


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class ModelInfo:
    architecture: str  # e.g. "Wav2Vec2ForCTC"
    languages: tuple[str, ...] = ()  # adapter languages; () for a one-language model
    default_language: str | None = None
    decoders: tuple[str, ...] = ("greedy",)  # what the `decoder` request option may name
    frame_seconds: float = 0.02
    default_decoder: str = "greedy"  # for requests that name none ("beam" for a model with an LM)
    # The feature encoder's geometry, for sliding windows: input samples per CTC frame (its total stride) and
    # input samples one frame sees (its receptive field). Frame k of audio starting at sample 0 covers samples
    # [k * frame_samples, k * frame_samples + receptive_field).
    frame_samples: int = 320
    receptive_field: int = 400
    has_lm: bool = False  # beam search decodes with an n-gram LM (alpha, beta apply)


# Live streams --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Partial:
    """The current utterance's hypothesis: `stable` is its committed words (they never change within the
    utterance), `text` those and the words after them (which may). Times in seconds from the stream's start;
    behind_s > 0 when the window was a catch-up one (the stream's audio came faster than it was transcribed)."""
    utterance: int
    text: str
    stable: str
    start: float
    end: float
    behind_s: float = 0.0


@dataclass(frozen=True)
class Final:
    """An utterance's transcript, decided once (cut at a pause, at a length limit, or at the stream's end:
    `last`). Word times in seconds from the stream's start."""
    utterance: int
    text: str
    start: float
    end: float
    last: bool = False
    words: tuple[Word, ...] = ()
    # The samples its pass read, in seconds from the stream's start (with VAD or client turns, /invocations of
    # exactly those samples gives the same text), and each word's confidence (0..1, in the order of `words`).
    audio_start: float = 0.0
    audio_end: float = 0.0
    confidences: tuple[float, ...] = ()


@dataclass(frozen=True)
class SpeechStarted:
    """VAD endpointing: speech began in utterance `utterance` at `start` (seconds from the stream's start, less
    the prefix padding)."""
    utterance: int
    start: float


@dataclass(frozen=True)
class SpeechStopped:
    """VAD endpointing: speech stopped at `end` (seconds); utterance `utterance` ends in the pause after it (its
    Final follows once its frames are committed)."""
    utterance: int
    end: float


Event = Union[Partial, Final, SpeechStarted, SpeechStopped]


@runtime_checkable
class LiveStream(Protocol):
    """One live stream (see the module docstring). Model errors are this module's (BadRequest, Timeout,
    Unavailable, ModelFailure)."""
    audio_seconds: float  # audio pushed so far
    utterances: int  # finals with text so far
    windows: int  # forward passes of sliding windows so far
    max_batch: int  # most windows that shared one forward pass
    behind_s: float  # audio waiting for its windows, seconds (back-pressure)

    def push(self, samples: np.ndarray) -> None: ...

    def advance(self, deadline: float) -> list[Event]: ...

    def finish(self, deadline: float) -> list[Event]: ...

    def commit(self, deadline: float) -> list[Event]: ...

    def clear(self, deadline: float) -> list[Event]: ...

    def set_turn_detection(self, mode: str, *, threshold: float | None = None, prefix_padding_s: float | None = None,
                           silence_s: float | None = None) -> None: ...


@runtime_checkable
class Model(Protocol):
    info: ModelInfo

    def health(self) -> Health: ...

    def transcribe(self, clips: Sequence[Clip], *, deadline: float) -> list[Transcript]: ...

    def transcribe_iter(self, clip: Clip, *, deadline: float) -> Iterator[Segment]: ...

    def open_stream(self, options: "Options") -> LiveStream: ...
