"""Audio in: any container libsndfile reads, any rate, any channel count -> 16 kHz mono float32."""
from __future__ import annotations

import io
import os
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
    if x.dtype == object or x.dtype == bool or not np.issubdtype(x.dtype, np.number):
        raise AudioError("samples must be numbers")
    if np.iscomplexobj(x):
        raise AudioError("samples must be real numbers")
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


def normalize(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over one clip's own samples (float32, same shape), exactly as
    Wav2Vec2FeatureExtractor(do_normalize=True) computes it. Training and serving both call this, so a model
    sees the same input scale in both."""
    x = np.asarray(x, dtype=np.float32)
    return ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32, copy=False)


class AudioTooLong(AudioError):
    """The audio decodes to more than the allowed length; caught while decoding, before it is all in memory."""


# Decoded in blocks of at most this many samples (frames x channels): a header may declare billions of frames
# or thousands of channels, so never allocate what it declares.
_BLOCK_SAMPLES = 1 << 20


def _read(source, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    try:
        with sf.SoundFile(source) as f:
            declared, rate, channels = f.frames, f.samplerate, f.channels
            limit = None if max_seconds is None else int(max_seconds * max(rate, 1)) + 1
            block = max(1, _BLOCK_SAMPLES // max(channels, 1))
            parts, total = [], 0
            while True:
                part = f.read(block, dtype="float32", always_2d=True)
                if not len(part):
                    break
                parts.append(part)
                total += len(part)
                if limit is not None and total > limit:
                    raise AudioTooLong(f"audio is longer than {max_seconds:g} s")
            data = np.concatenate(parts) if parts else np.zeros((0, max(channels, 1)), np.float32)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError, MemoryError) as exc:
        raise AudioError(f"cannot decode audio (WAV, FLAC, OGG or MP3 that libsndfile reads): {exc}") from None
    # Compressed streams whose header promises more frames than decode were cut short.
    if 0 < declared < (1 << 62) and len(data) < declared:
        raise AudioError(f"audio is truncated: header declares {declared} frames, only {len(data)} decode")
    return data, rate


# How much of a file is read to find the WAV data chunk's header (it follows fmt and any LIST/fact chunks).
_WAV_HEAD_BYTES = 1 << 20


def _check_wav_length(payload: bytes, total: int | None = None) -> None:
    """libsndfile silently shortens a WAV whose data chunk is cut off; a truncated upload or file must be an
    error. `payload` is the whole file, or its first bytes when `total` gives the file's full size."""
    total = len(payload) if total is None else total
    if len(payload) < 12 or payload[:4] != b"RIFF" or payload[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= len(payload):
        chunk, size = payload[pos:pos + 4], int.from_bytes(payload[pos + 4:pos + 8], "little")
        if chunk == b"data":
            have = total - pos - 8
            # 0 and 0xFFFFFFFF mark streamed WAVs whose writer did not know the length.
            if size not in (0, 0xFFFFFFFF) and size > have:
                raise AudioError(f"WAV is truncated: its header declares {size} bytes of samples, the body has {have}")
            return
        pos += 8 + size + (size & 1)


def decode_bytes(payload: bytes, max_seconds: float | None = None) -> np.ndarray:
    """Decode an encoded file (WAV, FLAC, OGG, MP3, ...; format sniffed) to 16 kHz mono float32.

    With `max_seconds`, longer audio raises AudioTooLong as soon as decoding passes it (a few MB of FLAC
    can hold hours of silence)."""
    if not payload:
        raise AudioError("audio body is empty")
    _check_wav_length(payload)
    data, rate = _read(io.BytesIO(payload), max_seconds)
    return to_model_input(data, rate)


def probe_seconds(path: str | Path) -> float:
    """Duration of an audio file in seconds from its header, without decoding the samples (for indexing
    large datasets). An estimate where the container has no exact length (MP3 without a Xing/Info frame).
    Raises AudioError when the file cannot be opened as audio."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError, OSError) as exc:
        raise AudioError(f"cannot read the header of {path}: {exc}") from None
    if info.samplerate <= 0:
        raise AudioError(f"{path}: header declares a sampling rate of {info.samplerate} Hz")
    return float(info.frames) / float(info.samplerate)


def load_file(path: str | Path) -> np.ndarray:
    """Read an audio file from disk to 16 kHz mono float32 (a truncated WAV is an error, as in decode_bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_WAV_HEAD_BYTES)
            total = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise AudioError(f"cannot read {path}: {exc.strerror or exc}") from None
    _check_wav_length(head, total)
    data, rate = _read(str(path))
    return to_model_input(data, rate)
