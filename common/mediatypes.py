"""The one table of request content types: what the server decodes (serve/bodies.py) and what the launcher sends
for a file name (launcher/hosting.py). Standard library only, so that the launcher can import it without numpy.

Encoded audio is sniffed from its bytes (common/audio.py), so every audio type below means "an audio file": the
type only has to be one the server accepts. The aliases are the names clients and libraries really send:
Python's `mimetypes` (audio/x-wav, audio/x-aiff, audio/basic, video/webm, audio/mp4, video/mp4, audio/aac),
browsers (audio/wave, audio/opus; MediaRecorder's audio/webm; audio/x-m4a from macOS file pickers), the SageMaker
Hugging Face toolkit (audio/x-flac, audio/x-audio). A video type means its audio track.
"""
from __future__ import annotations

# Encoded audio files, in the order README lists them.
AUDIO = (
    "audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave",
    "audio/flac", "audio/x-flac",
    "audio/ogg", "audio/opus",
    "audio/mpeg", "audio/mp3",
    "audio/aiff", "audio/x-aiff",
    "audio/basic",
    "audio/webm", "video/webm",
    "audio/mp4", "audio/m4a", "audio/x-m4a", "video/mp4",
    "audio/aac",
    "audio/x-audio", "application/octet-stream",
)
JSON = "application/json"
# SageMaker batch transform with SplitType=Line and BatchStrategy=MultiRecord: several JSON objects, one a line.
JSON_LINES = "application/jsonlines"

ACCEPTED = AUDIO + (JSON, JSON_LINES)

# File name suffix -> the type the launcher sends it as (`launch invoke FILE`); every value is in ACCEPTED.
BY_SUFFIX = {
    ".wav": "audio/wav", ".wave": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg", ".oga": "audio/ogg", ".opus": "audio/opus",
    ".mp3": "audio/mpeg",
    ".aiff": "audio/aiff", ".aif": "audio/aiff", ".aifc": "audio/aiff",
    ".au": "audio/basic", ".snd": "audio/basic",
    ".webm": "video/webm", ".weba": "audio/webm",
    ".m4a": "audio/mp4", ".mp4": "video/mp4",
    ".aac": "audio/aac",
    ".json": JSON,
    ".jsonl": JSON_LINES,
}


def media_type(content_type: str | None) -> str:
    """The type/subtype of a Content-Type header value, lower case, without parameters ('' for none)."""
    return (content_type or "").split(";", 1)[0].strip().lower()
