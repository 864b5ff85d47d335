"""Request bodies -> 16 kHz mono float32 clips: a dispatch table keyed by content type."""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import numpy as np

from common.audio import AudioError, AudioTooLong, decode_bytes, to_model_input

from .errors import ServeError

# Encoded audio: libsndfile sniffs the container, so the exact type only has to be one we accept.
AUDIO_TYPES = (
    "audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave",
    "audio/flac", "audio/x-flac", "audio/ogg", "audio/mpeg", "audio/mp3",
    "audio/x-audio", "application/octet-stream",
)
JSON_TYPE = "application/json"


@dataclass
class Clip:
    audio: np.ndarray  # 16 kHz mono float32
    timestamps: bool


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode(content_type: str | None, body: bytes, timestamps: bool,
           max_audio_s: float | None = None) -> tuple[list[Clip], bool]:
    """Clips in request order, and whether the request was a batch (a JSON list). Encoded audio longer than
    max_audio_s is refused (413) while it is decoded."""
    kind = media_type(content_type)
    decoder = DECODERS.get(kind)
    if decoder is None:
        shown = kind or "none"
        raise ServeError(
            f"unsupported content type {shown!r}; send audio as one of {', '.join(AUDIO_TYPES)}, "
            f"or {JSON_TYPE}", 415,
        )
    if not body:
        raise ServeError("request body is empty")
    return decoder(body, timestamps, max_audio_s)


def _audio(body: bytes, timestamps: bool, max_audio_s: float | None) -> tuple[list[Clip], bool]:
    return [Clip(_clip(decode_bytes, body, max_audio_s), timestamps)], False


def _json(body: bytes, timestamps: bool, max_audio_s: float | None = None) -> tuple[list[Clip], bool]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServeError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        # The parser recurses once per nesting level; a valid request nests at most 3 deep.
        raise ServeError("body is JSON nested too deeply; send an object or a list of objects") from None
    if isinstance(doc, list):
        if not doc:
            raise ServeError("batch is an empty list; send at least one item")
        return [_json_item(item, timestamps, f"item {i}: ", max_audio_s) for i, item in enumerate(doc)], True
    return [_json_item(doc, timestamps, "", max_audio_s)], False


def _json_item(item, timestamps: bool, where: str, max_audio_s: float | None = None) -> Clip:
    if not isinstance(item, dict):
        raise ServeError(f'{where}expected an object with "speech_array" and "sampling_rate", or "audio" (base64)')
    want = item.get("timestamps", timestamps)
    if not isinstance(want, bool):
        raise ServeError(f'{where}"timestamps" must be true or false')
    has_array, has_audio = "speech_array" in item, "audio" in item
    if has_array == has_audio:
        raise ServeError(
            f'{where}give exactly one of "speech_array" (with "sampling_rate") or "audio" (a base64 encoded file)'
        )
    if has_audio:
        encoded = item["audio"]
        if not isinstance(encoded, str):
            raise ServeError(f'{where}"audio" must be a base64 string of an encoded audio file')
        try:
            payload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ServeError(f'{where}"audio" is not valid base64: {exc}') from None
        return Clip(_clip(decode_bytes, payload, max_audio_s, where=where), want)
    if "sampling_rate" not in item:
        raise ServeError(f'{where}missing "sampling_rate" (Hz) next to "speech_array"')
    samples = item["speech_array"]
    if not isinstance(samples, list):
        raise ServeError(f'{where}"speech_array" must be a list of numbers (or of [left, right, ...] frames)')
    rate = item["sampling_rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise ServeError(f'{where}"sampling_rate" must be a number, got {rate!r}')
    try:
        # JSON numbers are samples as given (floats); no integer PCM scaling.
        array = np.asarray(samples, dtype=np.float64)
    except (TypeError, ValueError):
        raise ServeError(f'{where}"speech_array" must contain only numbers, in rows of equal length') from None
    if any(isinstance(v, bool) for v in samples[:1]):
        raise ServeError(f'{where}"speech_array" must contain numbers, not true/false')
    return Clip(_clip(to_model_input, array.astype(np.float32), rate, where=where), want)


def _clip(fn, *args, where: str = "") -> np.ndarray:
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return fn(*args)
    except AudioTooLong as exc:
        raise ServeError(f"{where}{exc} (SERVE_MAX_AUDIO_S)", 413) from None
    except AudioError as exc:
        raise ServeError(f"{where}{exc}") from None


DECODERS = {kind: _audio for kind in AUDIO_TYPES}
DECODERS[JSON_TYPE] = _json
