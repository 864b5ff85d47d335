"""Request bodies -> 16 kHz mono float32 clips: a dispatch table keyed by content type.

JSON items may carry request options next to the audio (`"timestamps": true`, `"language": "fra"`), checked
against the option table (serve/options.py); each clip's `Options` are its item's over the request's
(`options.build`). Refusals are serve/contract.py's errors: BadRequest (400), PayloadTooLarge (413),
UnsupportedMediaType (415), with a message naming the problem.

`speech_array` shapes: a list of numbers is mono. A list of equal-length lists is a 2-D array whose shorter
side is the channels, when that side has at most MAX_JSON_CHANNELS entries and the longer side is longer:
`[[l, r], [l, r], ...]` (frames x channels, as soundfile returns) and `[[l, l, ...], [r, r, ...]]`
(channels x frames, as torchaudio and librosa return) both mean stereo. Anything else (a square array, both
sides over MAX_JSON_CHANNELS, deeper nesting) is refused, saying which shapes are accepted.
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Mapping

import numpy as np

from common import mediatypes
from common.audio import DEFAULT_MAX_DECODED_BYTES, AudioError, AudioTooLarge, AudioTooLong, decode_bytes, to_model_input

from . import options
from .contract import BadRequest, Clip, PayloadTooLarge, UnsupportedMediaType

# Encoded audio: the container is sniffed from the bytes, so the exact type only has to be one we accept. One
# table for the server and the launcher (common/mediatypes.py).
AUDIO_TYPES = mediatypes.AUDIO
JSON_TYPE = mediatypes.JSON
JSON_LINES_TYPE = mediatypes.JSON_LINES
AUDIO_FIELDS = ("speech_array", "sampling_rate", "audio")
MAX_JSON_CHANNELS = 8
SHAPES = (f'"speech_array" must be a list of numbers (mono), a list of [left, right, ...] frames (frames x '
          f'channels) or a list of per-channel lists (channels x frames), with at most {MAX_JSON_CHANNELS} channels '
          f'and more samples than channels')

_Item = tuple[np.ndarray, dict[str, Any]]  # 16 kHz mono float32 samples, and the item's own options (JSON fields)


media_type = mediatypes.media_type


def decode(content_type: str | None, body: bytes, max_audio_s: float | None = None,
           max_decoded_bytes: int | None = DEFAULT_MAX_DECODED_BYTES,
           request_options: Mapping[str, Any] | None = None) -> tuple[list[Clip], bool]:
    """Clips in request order, and whether the request was a batch (a JSON list, or JSON lines). Each clip's
    options are its JSON item's fields over `request_options` (options.request_level: query string and
    header). Encoded audio longer than max_audio_s is refused (413) while it is decoded; audio whose float32
    samples (channels x rate x duration) pass max_decoded_bytes is refused (413) from its header, before it is
    decoded."""
    kind = media_type(content_type)
    decoder = DECODERS.get(kind)
    if decoder is None:
        shown = kind or "none"
        raise UnsupportedMediaType(
            f"unsupported content type {shown!r}; send audio as one of {', '.join(AUDIO_TYPES)}, "
            f"or {JSON_TYPE}, or {JSON_LINES_TYPE}, or multipart/form-data with a `file` part (OpenAI's body)",
        )
    if not body:
        raise BadRequest("request body is empty")
    items, is_batch = decoder(body, (max_audio_s, max_decoded_bytes))
    shared = request_options or {}
    return [Clip(audio, options.build(shared, own)) for audio, own in items], is_batch


def _audio(body: bytes, limits) -> tuple[list[_Item], bool]:
    return [(_clip(decode_bytes, body, *limits), {})], False


def _json(body: bytes, limits=(None, DEFAULT_MAX_DECODED_BYTES)) -> tuple[list[_Item], bool]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        # The parser recurses once per nesting level; a valid request nests at most 3 deep.
        raise BadRequest("body is JSON nested too deeply; send an object or a list of objects") from None
    if isinstance(doc, list):
        if not doc:
            raise BadRequest("batch is an empty list; send at least one item")
        return [_json_item(item, f"item {i}: ", limits) for i, item in enumerate(doc)], True
    return [_json_item(doc, "", limits)], False


def _json_lines(body: bytes, limits=(None, DEFAULT_MAX_DECODED_BYTES)) -> tuple[list[_Item], bool]:
    """application/jsonlines (batch transform, SplitType=Line with MultiRecord): one JSON object per line, each an
    item as in a JSON batch; blank lines are skipped. A bad line refuses the whole request, naming its line
    number (counted from 1 over every line), so that no answer line can belong to another input line."""
    clips = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"line {number}: "
        try:
            item = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"{where}not valid JSON: {exc}") from None
        except RecursionError:
            raise BadRequest(f"{where}JSON nested too deeply; send one object per line") from None
        clips.append(_json_item(item, where, limits))
    if not clips:
        raise BadRequest("JSON lines body holds no line; send one JSON object per line")
    return clips, True


def _json_item(item, where: str, limits=(None, DEFAULT_MAX_DECODED_BYTES)) -> _Item:
    if not isinstance(item, dict):
        raise BadRequest(f'{where}expected an object with "speech_array" and "sampling_rate", or "audio" (base64)')
    item_options = {}
    for name, value in item.items():
        if name in AUDIO_FIELDS:
            continue
        if name not in options.NAMES:
            raise BadRequest(f"{where}unknown field {name!r}; an item holds {', '.join(AUDIO_FIELDS)} and the request "
                             f"options {', '.join(options.NAMES)}")
        item_options[name] = options.from_json(name, value, where)
    has_array, has_audio = "speech_array" in item, "audio" in item
    if has_array == has_audio:
        raise BadRequest(
            f'{where}give exactly one of "speech_array" (with "sampling_rate") or "audio" (a base64 encoded file)'
        )
    if has_audio:
        if "sampling_rate" in item:
            raise BadRequest(f'{where}"sampling_rate" goes with "speech_array"; an encoded "audio" file carries its own')
        encoded = item["audio"]
        if not isinstance(encoded, str):
            raise BadRequest(f'{where}"audio" must be a base64 string of an encoded audio file')
        try:
            payload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(f'{where}"audio" is not valid base64: {exc}') from None
        return _clip(decode_bytes, payload, *limits, where=where), item_options
    if "sampling_rate" not in item:
        raise BadRequest(f'{where}missing "sampling_rate" (Hz) next to "speech_array"')
    samples = item["speech_array"]
    if not isinstance(samples, list):
        raise BadRequest(f"{where}{SHAPES}")
    rate = item["sampling_rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise BadRequest(f'{where}"sampling_rate" must be a number, got {rate!r}')
    first = samples[0] if samples else None
    if isinstance(first, bool) or (isinstance(first, list) and first and isinstance(first[0], bool)):
        raise BadRequest(f'{where}"speech_array" must contain numbers, not true/false')
    try:
        # JSON numbers are samples as given (floats); no integer PCM scaling.
        array = np.asarray(samples, dtype=np.float64)
    except (TypeError, ValueError):
        raise BadRequest(f'{where}"speech_array" must contain only numbers, in rows of equal length. {SHAPES}') \
            from None
    return _clip(to_model_input, frames_by_channels(array, where).astype(np.float32), rate, where=where), item_options


def frames_by_channels(array: np.ndarray, where: str = "") -> np.ndarray:
    """A JSON speech_array as 1-D (mono) or frames x channels, by the shape rule in this module's docstring."""
    if array.ndim == 1:
        return array
    if array.ndim != 2:
        raise BadRequest(f"{where}{SHAPES}; got a {array.ndim}-D array")
    rows, cols = array.shape
    if cols < rows and cols <= MAX_JSON_CHANNELS:
        return array  # frames x channels
    if rows < cols and rows <= MAX_JSON_CHANNELS:
        return array.T  # channels x frames
    raise BadRequest(f"{where}{SHAPES}; got {rows} x {cols}, which could be either")


def _clip(fn, *args, where: str = "") -> np.ndarray:
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return fn(*args)
    except AudioTooLong as exc:
        raise PayloadTooLarge(f"{where}{exc} (SERVE_MAX_AUDIO_S)") from None
    except AudioTooLarge as exc:
        raise PayloadTooLarge(f"{where}{exc} (SERVE_MAX_DECODED_MB)") from None
    except AudioError as exc:
        raise BadRequest(f"{where}{exc}") from None


DECODERS = {kind: _audio for kind in AUDIO_TYPES}
DECODERS[JSON_TYPE] = _json
DECODERS[JSON_LINES_TYPE] = _json_lines
