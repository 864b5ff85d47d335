"""Audio in: any container libsndfile reads, any rate, any channel count -> 16 kHz mono float32."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

TARGET_RATE = 16_000
# Below 1 kHz nothing is speech; above 384 kHz no real recorder writes. Both bounds catch garbage headers.
MIN_RATE = 1_000
MAX_RATE = 384_000


class AudioError(ValueError):
    """The audio given cannot be turned into samples; the message says why."""


def check_rate(rate) -> int:
    try:
        rate_f = float(rate)
    except (TypeError, ValueError):
        raise AudioError(f"sampling rate must be a number, got {rate!r}") from None
    if not np.isfinite(rate_f) or rate_f != int(rate_f):
        raise AudioError(f"sampling rate must be a whole number of Hz, got {rate!r}")
    rate_i = int(rate_f)
    if not MIN_RATE <= rate_i <= MAX_RATE:
        raise AudioError(f"sampling rate {rate_i} Hz is outside {MIN_RATE}..{MAX_RATE} Hz")
    return rate_i


def to_model_input(samples, rate) -> np.ndarray:
    """Validate samples (frames x channels or 1-D) at `rate`, downmix and resample to 16 kHz float32."""
    rate = check_rate(rate)
    try:
        x = np.asarray(samples)
    except (TypeError, ValueError) as exc:
        raise AudioError(f"samples are not a numeric array: {exc}") from None
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise AudioError("samples must be numbers")
    if x.ndim == 0 or x.ndim > 2:
        raise AudioError(f"samples must be 1-D (mono) or 2-D (frames x channels), got {x.ndim}-D")
    if np.issubdtype(x.dtype, np.integer):
        # Integer PCM: scale to [-1, 1) by the type's range, as libsndfile does.
        x = x.astype(np.float32) / float(-np.iinfo(x.dtype).min)
    x = x.astype(np.float32, copy=False)
    if x.size == 0:
        raise AudioError("audio has no samples")
    if not np.isfinite(x).all():
        raise AudioError("samples contain NaN or infinite values")
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    if rate != TARGET_RATE:
        x = soxr.resample(x, rate, TARGET_RATE, quality="HQ").astype(np.float32, copy=False)
    if x.size == 0:
        raise AudioError("audio is too short to resample to 16 kHz")
    return np.ascontiguousarray(x)


def _read(source) -> tuple[np.ndarray, int]:
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError) as exc:
        raise AudioError(f"cannot decode audio: {exc}") from None
    return data, rate


def decode_bytes(payload: bytes) -> np.ndarray:
    """Decode an encoded file (WAV, FLAC, OGG, MP3, ...; format sniffed) to 16 kHz mono float32."""
    if not payload:
        raise AudioError("audio body is empty")
    data, rate = _read(io.BytesIO(payload))
    return to_model_input(data, rate)


def load_file(path: str | Path) -> np.ndarray:
    """Read an audio file from disk to 16 kHz mono float32."""
    data, rate = _read(str(path))
    return to_model_input(data, rate)
