"""Voice-activity segmentation of long audio: chunks cut at the pauses Silero VAD finds (SERVE_CHUNKING=vad).

Three steps; the last two are pure functions of numbers (tests/test_serve_vad.py):

    SileroVad.probabilities(audio)   16 kHz samples -> speech probability per 512-sample window (32 ms), from
                                     the Silero VAD model that the `silero-vad` wheel ships (its ONNX file in
                                     `load_session()`'s onnxruntime session: CPU, one thread; nothing is
                                     downloaded), window by window as silero-vad's OnnxWrapper.audio_forward
                                     runs it (64 samples of the previous window as context, the recurrent state
                                     carried);
    speech_regions(probs, ...)       -> speech regions in samples: silero-vad's own
                                     `get_speech_timestamps_from_probs` (threshold with hysteresis, pauses
                                     shorter than `min_silence_s` kept inside a region, `speech_pad_s` of
                                     audio kept on each side);
    chunking.plan_speech(...)        -> chunks (serve/chunking.py, beside the fixed plan): one per region, a
                                     region longer than a chunk split like fixed chunks, every edge on a CTC
                                     frame boundary, the silence between regions not sent.

serve/model.py's ServingModel puts `silence_logits` where a chunk's silence was left out (`Chunk.before`,
`Chunk.after`): a word delimiter, then blanks, so the joined frames still tile the whole clip (word times stay
times in the clip, a pause is always a word break). Audio with no speech has no chunks (an empty transcript).

`load_session()` is the one loader of the model: live streams (serve/streamvad.py) run the same session window
by window. It is made once per process, after gunicorn forks (serve/model.py's `load` makes the Segmenter).
Why ONNX and not the wheel's TorchScript file (same probabilities, to 1e-7): torch's thread count is one
setting for the whole process, and the small per-window operations of the VAD run ~20x slower with the
worker's threads than with one on a busy 2-core machine (1.6 s -> 35 s for a minute of audio, measured on the
i21-vad branch), while onnxruntime's session has its own single thread and leaves the model's threads alone
(0.8 s for a minute). silero-vad's extras would pull in torchaudio, which has no build for this torch: the
wheel itself needs only torch and packaging.
"""
from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from common.audio import TARGET_RATE

from . import chunking

WINDOW = 512  # samples per Silero probability at 16 kHz (32 ms): the model's fixed window
CONTEXT = 64  # samples of the previous window the model sees before each window (silero-vad's OnnxWrapper)
STATE = (2, 1, 128)  # the network's recurrent state, passed in and out of each run
MIN_SPEECH_S = 0.1  # a region shorter than this (a click, a breath) is dropped before padding
MODEL_FILE = "silero_vad.onnx"  # in the wheel's silero_vad/data/ (what load_silero_vad(onnx=True) opens)
SILENCE_LOGIT = -1e4  # the other tokens of a silence frame: probability exp(-1e4) = 0, finite in float16

_RATE = np.array(TARGET_RATE, dtype=np.int64)


@dataclass(frozen=True)
class VadParams:
    """What counts as speech: Silero's probability threshold (its exit threshold is 0.15 lower), the shortest
    pause that ends a region, and the audio kept on each side of a region (seconds)."""
    threshold: float = 0.5
    min_silence_s: float = 0.5
    speech_pad_s: float = 0.2


def model_file() -> Path:
    """The wheel's Silero VAD ONNX file, found without importing silero_vad (its import sets torch's thread
    count to 1 for the whole process). ImportError when the wheel or its file is missing."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("silero-vad is not installed (requirements/serve.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / MODEL_FILE
    if not path.is_file():
        raise ImportError(f"silero-vad's model file is missing: {path}")
    return path


_session = None
_session_lock = threading.Lock()


def load_session():
    """The wheel's Silero VAD ONNX file (`model_file()`) in an onnxruntime InferenceSession on the CPU provider
    with one intra-op and one inter-op thread, made once per process and shared. The network is stateless
    between runs (its state is an input and an output), so the session is thread-safe. One run:
    `session.run(None, {"input": float32 (1, CONTEXT + WINDOW), "state": float32 STATE, "sr": int64 16000})`
    -> [probability (1, 1), next state STATE]."""
    global _session
    with _session_lock:
        if _session is None:
            import onnxruntime

            opts = onnxruntime.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            opts.log_severity_level = 3  # warnings about unused initialisers are not ours to act on
            _session = onnxruntime.InferenceSession(str(model_file()), opts, providers=["CPUExecutionProvider"])
        return _session


def speech_regions(probs: Sequence[float], n_samples: int, params: VadParams) -> list[tuple[int, int]]:
    """Speech regions [(start, end)] in samples of a clip of n_samples, from one probability per WINDOW
    samples (silero-vad's get_speech_timestamps_from_probs, with this module's parameters)."""
    get_speech_timestamps_from_probs = _silero().get_speech_timestamps_from_probs
    found = get_speech_timestamps_from_probs(
        [float(p) for p in probs], sampling_rate=TARGET_RATE, threshold=params.threshold,
        min_speech_duration_ms=MIN_SPEECH_S * 1000, min_silence_duration_ms=params.min_silence_s * 1000,
        speech_pad_ms=params.speech_pad_s * 1000, audio_length_samples=n_samples)
    return [(int(r["start"]), int(r["end"])) for r in found if r["end"] > r["start"]]


def silence_logits(frames: int, vocab, like: torch.Tensor) -> torch.Tensor:
    """`frames` frames (frames x vocabulary, like `like`'s dtype and device) that decode to a word break and
    nothing else: the word delimiter (or space token) first, blanks after it; every other token at
    SILENCE_LOGIT, so greedy and beam search read them alike and the probabilities of those frames are one."""
    out = torch.full((frames, like.shape[-1]), SILENCE_LOGIT, dtype=like.dtype, device=like.device)
    out[:, vocab.blank_id] = 0
    space = next((i for i in range(vocab.size) if vocab.is_space(i)), None)
    if frames and space is not None:
        out[0, vocab.blank_id] = SILENCE_LOGIT
        out[0, space] = 0
    return out


class SileroVad:
    """Speech probabilities of whole clips from `load_session()`'s network; thread-safe (each call carries
    its own state)."""

    def __init__(self, session=None):
        self.session = session if session is not None else load_session()

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """One speech probability (0..1) per WINDOW samples of 16 kHz mono float32 audio (the last window
        zero-padded), the state starting at zero: shape (ceil(len(audio) / WINDOW),)."""
        n = len(audio)
        if n == 0:
            return np.zeros(0, np.float32)
        windows = -(-n // WINDOW)
        x = np.zeros(CONTEXT + windows * WINDOW, np.float32)  # zero context before the first window
        x[CONTEXT:CONTEXT + n] = audio
        state = np.zeros(STATE, np.float32)
        out = np.empty(windows, np.float32)
        run = self.session.run
        for i in range(windows):
            at = i * WINDOW
            p, state = run(None, {"input": x[None, at:at + CONTEXT + WINDOW], "state": state, "sr": _RATE})
            out[i] = p[0, 0]
        return out


class Segmenter:
    """A clip -> its chunks cut at pauses (`chunks`), from Silero VAD and the parameters; `short_audio`:
    whether a clip no longer than one chunk is segmented too (else it stays one whole chunk, as with fixed
    chunking)."""

    def __init__(self, params: VadParams = VadParams(), vad: SileroVad | None = None, short_audio: bool = False):
        self.params, self.short_audio = params, short_audio
        self.vad = vad or SileroVad()

    @classmethod
    def from_settings(cls, settings) -> "Segmenter":
        """From SERVE_VAD_THRESHOLD, SERVE_VAD_MIN_SILENCE_S, SERVE_VAD_SPEECH_PAD_S, SERVE_VAD_SHORT_AUDIO."""
        return cls(VadParams(settings.vad_threshold, settings.vad_min_silence_s, settings.vad_speech_pad_s),
                   short_audio=settings.vad_short_audio)

    def applies(self, samples: int, chunk_samples: int) -> bool:
        """Whether a clip of `samples` is cut at pauses (longer than a chunk, or short_audio)."""
        return self.short_audio or samples > chunk_samples

    def regions(self, audio: np.ndarray) -> list[tuple[int, int]]:
        """The speech regions of 16 kHz samples as they arrived (not normalised: Silero reads levels)."""
        return speech_regions(self.vad.probabilities(audio), len(audio), self.params)

    def chunks(self, audio: np.ndarray, normalized: np.ndarray, geometry: chunking.Geometry) -> list[chunking.Chunk]:
        """The chunks of a clip: regions found in `audio`, cut from `normalized` (the same clip as the model
        takes it: normalised over the whole clip, padded to the receptive field) by chunking.plan_speech."""
        return chunking.plan_speech(normalized, self.regions(audio), geometry)


_imported = None


def _silero():
    """silero_vad.utils_vad, imported with torch's thread count put back (silero_vad/model.py sets it to 1)."""
    global _imported
    if _imported is None:
        threads = torch.get_num_threads()
        try:
            from silero_vad import utils_vad
        finally:
            torch.set_num_threads(threads)
        _imported = utils_vad
    return _imported
