"""multipart/form-data request bodies (what OpenAI's API, its clients and `curl -F` send): one audio `file` part
plus fields, read with werkzeug's own form parser from a body already capped at SAGEMAKER_MAX_PAYLOAD_IN_MB.

Fields, as OpenAI's transcription API documents them: `file` (required), `model` (accepted, echoed, never
required to match), `language`, `prompt`, `response_format`, `timestamp_granularities[]` (`word`, `segment`),
`temperature` (0..1, accepted and ignored: CTC decoding samples nothing) and `stream`. Every other field is one
of this project's request options (serve/options.py: `decoder`, `beam_width`, `hotwords[]`, ...); a list option
may be sent as repeated `name[]` fields (as the `openai` client sends `extra_body` lists). An unknown field or a
bad value is a `FieldError` (a contract.BadRequest, 400) naming it (`param`), for the OpenAI error shape; a body
over the form limits is a PayloadTooLarge (413), one of another type an UnsupportedMediaType (415).

`language`: a model with language adapters (MMS) transcribes the adapter it names (an unknown one is a 400);
a model of one language takes it as OpenAI does, as a hint about the audio: kept for the answer, not sent to
the model (which would refuse it), since OpenAI clients send it routinely.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header

from common import settings

from . import contract, options

TYPE = "multipart/form-data"
OPENAI_FIELDS = ("file", "model", "language", "prompt", "response_format", "timestamp_granularities[]",
                 "temperature", "stream")
GRANULARITIES = ("word", "segment")
MAX_PARTS = 256  # hotwords[] may come as up to 100 parts
MAX_FIELD_BYTES = 256 * 1024  # all text fields together (the file part is bounded by the payload cap)


class FieldError(contract.BadRequest):
    """A bad multipart body or field (400), naming the field in `param` where there is one (OpenAI's error
    shape has a `param`: serve/openai_api.py)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class Form:
    """A transcription request's multipart body, checked."""
    audio: bytes
    filename: str | None
    model: str | None = None
    language_hint: str | None = None  # `language` for a model of one language (not sent to the model)
    granularities: tuple[str, ...] = ()
    temperature: float | None = None
    stream: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # request options (serve/options.py), checked


def parse(content_type: str | None, body: bytes, info: contract.ModelInfo) -> Form:
    """The form of a multipart/form-data body; FieldError for a malformed body, a missing file, an unknown
    field or a bad value."""
    mimetype, params = parse_options_header(content_type or "")
    if mimetype.lower() != TYPE:
        raise contract.UnsupportedMediaType(f"send the audio as {TYPE} with a `file` part (as OpenAI's API takes "
                                            f"it), not {mimetype or 'no content type'!r}")
    if not params.get("boundary"):
        raise FieldError(f"Content-Type {TYPE} needs its boundary parameter ({TYPE}; boundary=...)")
    parser = FormDataParser(stream_factory=lambda *a, **k: io.BytesIO(), max_form_memory_size=MAX_FIELD_BYTES,
                            max_form_parts=MAX_PARTS, silent=False)
    try:
        _, fields, files = parser.parse(io.BytesIO(body), TYPE, len(body), {"boundary": params["boundary"]})
    except RequestEntityTooLarge:
        raise contract.PayloadTooLarge(f"multipart body has more than {MAX_PARTS} parts or more than "
                                       f"{MAX_FIELD_BYTES // 1024} KiB of text fields") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise FieldError(f"body is not valid {TYPE}: {exc}") from None
    uploads = files.getlist("file")
    if "file" in fields:
        raise FieldError("`file` must be a file part (curl: -F file=@talk.wav), not a text field", "file")
    if len(uploads) != 1 or len(files) != 1:
        others = sorted(set(files) - {"file"})
        if others:
            raise FieldError(f"unknown file part {others[0]!r}; send the audio as the one `file` part", others[0])
        raise FieldError("missing the audio: send it as the `file` part" if not uploads else
                         "send one `file` part, not several", "file")
    audio = uploads[0].stream.read()
    if not audio:
        raise FieldError("the `file` part is empty", "file")
    form = Form(audio, uploads[0].filename)
    project: dict[str, list[str]] = {}
    for name, value in fields.items(multi=True):
        key = name[:-2] if name.endswith("[]") else name
        if key == "model":
            form.model = _once(form.model, value[:256], "model")
        elif key == "timestamp_granularities":
            if value not in GRANULARITIES:
                raise FieldError(f"timestamp_granularities[]={value[:40]!r}: use word and/or segment",
                                 "timestamp_granularities[]")
            form.granularities += () if value in form.granularities else (value,)
        elif key == "temperature":
            form.temperature = _temperature(value)
        elif key == "stream":
            form.stream = _flag(value, "stream")
        elif key == "language" and not info.languages:
            form.language_hint = _check("language", value)
        elif key in options.NAMES:
            project.setdefault(key, []).append(value)
        else:
            own = ", ".join(n for n in options.NAMES if n not in OPENAI_FIELDS)
            raise FieldError(f"unknown field {name[:60]!r}; fields are {', '.join(OPENAI_FIELDS)} and the request "
                             f"options {own}", name[:60])
    for key, values in project.items():
        form.options[key] = _option(key, values)
    return form


def _once(old, new, name: str):
    if old is not None and old != new:
        raise FieldError(f"{name} is given twice with different values", name)
    return new


def _flag(value: str, name: str) -> bool:
    """The one boolean rule of every setting (common/settings.py)."""
    flag = settings.parse_bool(value)
    if flag is None:
        raise FieldError(f"{name}={value[:40]!r}: use {settings.BOOL_EXPECTED}", name)
    return flag


def _temperature(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0.0 <= number <= 1.0:
        raise FieldError(f"temperature={value[:40]!r}: a number from 0 to 1 (accepted and ignored: CTC decoding "
                         f"does not sample)", "temperature")
    return number


def _check(name: str, value: str):
    try:
        return options.from_text(name, value)
    except contract.BadRequest as exc:
        raise FieldError(exc.message, name) from None


def _option(name: str, values: list[str]):
    """A project option from its field(s): a list option from repeated fields, any other from one."""
    kind = options.SPECS[name].kind
    try:
        if kind == "list" and len(values) > 1:
            return options.from_json(name, values)
        if len(set(values)) > 1:
            raise FieldError(f"option {name} is given twice with different values", name)
        return options.from_text(name, values[0])
    except contract.BadRequest as exc:
        raise FieldError(exc.message, name) from None
