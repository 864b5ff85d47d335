"""The serving model contract: what the HTTP layer asks of a model, and what it gets back.

The HTTP layer (serve/app.py) turns request bytes into `Clip`s (16 kHz mono float32 samples plus the
request's `Options`) and results into JSON; it never imports torch. Everything between is the model's:
normalising, cutting long audio into chunks, batching forward passes, the decoder stage (logits -> text),
adapters. serve/model.py implements the contract for Hugging Face CTC checkpoints; tests implement it
with a few lines of Python (tests/test_serve_app.py).

A model offers:

    health() -> Health
        Whether it can take requests now (`/ping` answers from it; it never blocks on inference).
    info -> ModelInfo
        What it is: architecture, languages, decoders, seconds per CTC frame.
    transcribe(clips, *, deadline) -> list[Transcript]
        One transcript per clip, same order. All clips' chunks are queued at once, so one request's
        clips (and other requests' clips) share forward passes. `deadline` is a time.monotonic() value.
    transcribe_iter(clip, *, deadline) -> Iterator[Segment]
        One clip, results as they become ready: a `Segment` per chunk of long audio, in order, each with
        the words completed so far (a word that runs over a chunk edge comes with the next segment).
        Joining the segments' words gives the transcript `transcribe` returns (with beam search: for a
        clip of one chunk; on longer ones the LM's context restarts at each segment, see serve/model.py).
        For response streaming (POST /invocations-response-stream writes each segment as a JSON line).
    submit(windows, options) -> list[Future]     (serve.model.ServingModel only, not part of Model)
        Raw forward passes through the same batcher: one future per window, each resolving to the
        window's frame logits. A streaming session (WebSocket, serve/streaming.py) submits sliding windows
        this way, commits their frames with the greedy stream of `decoder(options)` and decodes each
        utterance's final with `decoder(options)`, so all sessions and requests on a worker share forward
        passes and one decoder registry (serve/decoding.py).

Errors are the exception types below; each HTTP status is chosen at the edge (serve/errors.py), never here:
BadRequest (400: a malformed or unknown option, an unknown language), Timeout and Unavailable (503),
ModelFailure (500: the model failed on good input).

Request options live in one typed table, serve/options.py (`Options`): the same names and types whether
they come from JSON fields, the query string or the X-Amzn-SageMaker-Custom-Attributes header. A new
option (decoder, beam_width, hotwords, ...) is a new field there, read by the model; the routes do not
change.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    from .options import Options


class ServingError(Exception):
    """Base of the contract's errors; the message is safe to show to a client."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ServingError):
    """The request asks for something this model cannot do (unknown option value, unknown language)."""


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


class Timeout(ServingError):
    """The transcript was not ready by the deadline; queued work for it was cancelled. (The edge names the
    setting that chose the deadline in its answer.)"""


class Unavailable(ServingError):
    """The model cannot take requests now (its forward-pass thread stopped)."""


class ModelFailure(ServingError):
    """The model failed on input it accepted; the cause is in the server log."""


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


class Model(Protocol):
    info: ModelInfo

    def health(self) -> Health: ...

    def transcribe(self, clips: Sequence[Clip], *, deadline: float) -> list[Transcript]: ...

    def transcribe_iter(self, clip: Clip, *, deadline: float) -> Iterator[Segment]: ...
