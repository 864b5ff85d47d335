"""Per-request options: one typed table, read the same way from every place a client can put them.

A request's options come from the `X-Amzn-SageMaker-Custom-Attributes` header (the only channel SageMaker's
InvokeEndpoint forwards), the query string (direct callers), and, for JSON bodies, fields of each item,
which override the first two for that item. The header holds `name=value` pairs separated by `;` or `&`,
values percent-encoded where needed (`timestamps=true;language=fra`). An unknown name, a malformed pair or
a bad value is a BadRequest (400) that names it; the same option given twice with different values is one too.

Each option is a field of `Options` with its type, default, bounds and help; README's "Request options"
table is `markdown_table()` (a test checks they agree). To add one, add a field: the routes do not change.

The beam-search options (`beam_width`, `alpha`, `beta`, `hotwords`, `hotword_weight`) are checked by
common.lm.parse_options, so their ranges and messages are common/lm.py's; `hotwords` is a JSON list, or in
the header and query string one value of comma-separated words and phrases (`hotwords=kwame nkosi,ravi`).
Whether they apply to the model (an LM for alpha/beta, the decoder chosen) is the model's check.
"""
from __future__ import annotations

import dataclasses
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from common import lm

from .contract import BadRequest

HEADER = "X-Amzn-SageMaker-Custom-Attributes"
_TRUE = {"1", "true", "yes", "on", "words", "word"}  # "word(s)": as transformers' return_timestamps="word"
_FALSE = {"0", "false", "no", "off", ""}


def _option(default, *, help: str, kind: str, pattern: str | None = None, shown: str | None = None,
            low: float | None = None, high: float | None = None, choices: tuple[str, ...] | None = None,
            beam: bool = False):
    """beam: a beam-search option, checked by common.lm.parse_options (low/high only show its range)."""
    return field(default=default, metadata={"help": help, "kind": kind, "pattern": pattern, "shown": shown,
                                            "low": low, "high": high, "choices": choices, "beam": beam})


@dataclass(frozen=True)
class Options:
    timestamps: bool = _option(
        False, kind="bool",
        help="Add `words`: each word with its `start` and `end` in seconds (CTC frame times).",
    )
    language: str | None = _option(
        None, kind="str", pattern=r"[A-Za-z0-9_-]{1,64}", shown="`SERVE_LANGUAGE`",
        help="Adapter models (MMS: `adapter.<lang>.safetensors` files): the language to transcribe; an unknown "
             "one gets a 400 listing the model's languages. Models without adapters refuse it.",
    )
    decoder: str | None = _option(
        None, kind="str", choices=("greedy", "beam"), shown="`beam` with an LM, else `greedy`",
        help="CTC decoding. `beam`: beam search (pyctcdecode) with the model's KenLM n-gram when its directory has "
             "one (`language_model/`), in processes beside the model; without an LM, beam search alone (hotwords "
             "still apply). `greedy`: best path, on the model's device; it takes none of the options below.",
    )
    beam_width: int | None = _option(
        None, kind="int", beam=True, low=1, high=lm.MAX_BEAM_WIDTH, shown=f"`{lm.DEFAULT_BEAM_WIDTH}`",
        help="Beam search: hypotheses kept per frame. Wider is slower and rarely better past the default "
             "(bench/README.md, LM decoding).",
    )
    alpha: float | None = _option(
        None, kind="float", beam=True, low=lm.ALPHA_RANGE[0], high=lm.ALPHA_RANGE[1],
        shown="the model's (`attrs.json`)",
        help="Beam search: weight of the LM's log-probability. Refused for a model without an LM.",
    )
    beta: float | None = _option(
        None, kind="float", beam=True, low=lm.BETA_RANGE[0], high=lm.BETA_RANGE[1],
        shown="the model's (`attrs.json`)",
        help="Beam search: bonus per word (natural-log units). Refused for a model without an LM.",
    )
    hotwords: tuple[str, ...] = _option(
        (), kind="list", beam=True, shown="none",
        help=f"Beam search: words or phrases to boost (product names, people), at most {lm.MAX_HOTWORDS} of at "
             f"most {lm.MAX_HOTWORD_CHARS} characters, only characters the model writes. JSON: a list of strings; "
             "header and query string: one comma-separated value (`hotwords=kwame nkosi,ravi`; a space may be "
             "sent as `%20`).",
    )
    hotword_weight: float | None = _option(
        None, kind="float", beam=True, low=lm.HOTWORD_WEIGHT_RANGE[0], high=lm.HOTWORD_WEIGHT_RANGE[1],
        shown=f"`{lm.DEFAULT_HOTWORD_WEIGHT:g}`",
        help="Beam search: how much the hotwords are boosted (pyctcdecode's scale).",
    )
    prompt: str | None = _option(
        None, kind="str", pattern=r"[^\x00-\x08\x0b-\x1f\x7f]{1,1000}", shown="none",
        help="OpenAI's `prompt`: with beam search (the default for a model with an LM) each of its words that the "
             "model can spell becomes a hotword (as typed, else lower- or upper-cased to fit the alphabet); with "
             "greedy decoding it changes nothing.",
    )
    segments: bool = _option(
        False, kind="bool",
        help="Add `segments`: each chunk of the audio with its `start`, `end`, `text` and `avg_logprob` (the mean "
             "log posterior of each frame's best label).",
    )
    confidence: bool = _option(
        False, kind="bool",
        help="Add `words` with a `probability` each: the mean posterior of the frames that spell the word "
             "([OpenAI-compatible API](openai.md#segments-and-confidences)).",
    )
    response_format: str | None = _option(
        None, kind="str", choices=("json", "text", "srt", "vtt", "verbose_json"), shown="by `Accept`",
        help="The answer: `json`, `text`, `srt` or `vtt` subtitles, `verbose_json` (JSON with segments and "
             "confidences). On `/invocations` `Accept` chooses when this is left out.",
    )
    max_line_chars: int = _option(
        42, kind="int", low=10, high=200,
        help="Subtitles: most characters on a line of a cue (a longer word gets a line of its own).",
    )
    max_lines: int = _option(
        2, kind="int", low=1, high=10,
        help="Subtitles: most lines in a cue.",
    )


NAMES = tuple(f.name for f in dataclasses.fields(Options))
_FIELDS = {f.name: f for f in dataclasses.fields(Options)}
BEAM_NAMES = tuple(f.name for f in dataclasses.fields(Options) if f.metadata["beam"])


def beam_options_given(o: Options) -> list[str]:
    """The beam-search options this request set (they need decoder=beam)."""
    return [name for name in BEAM_NAMES if getattr(o, name) != _FIELDS[name].default]


def decode_options(o: Options) -> lm.DecodeOptions:
    """The request's beam-search options for common.lm (what it left out: common.lm's defaults)."""
    return lm.DecodeOptions(**{name: getattr(o, name) for name in beam_options_given(o)})


def _beam_value(name: str, value: Any, where: str) -> Any:
    """A beam-search option checked (and normalised) by common.lm, its message kept."""
    try:
        return getattr(lm.parse_options({name: value}), name)
    except lm.OptionError as exc:
        raise BadRequest(f"{where}{exc}") from None


def _unknown(name: str, where: str) -> BadRequest:
    return BadRequest(f"{where}unknown option {name!r}; request options are: {', '.join(NAMES)}")


def from_text(name: str, raw: str, where: str = "") -> Any:
    """One option's value from text (query string, header): raises BadRequest naming it."""
    f = _FIELDS.get(name)
    if f is None:
        raise _unknown(name, where)
    meta, value = f.metadata, raw.strip()
    if meta["beam"]:
        return _beam_value(name, value, where)
    if meta["kind"] == "bool":
        low = value.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise BadRequest(f"{where}option {name}={raw!r}: use true or false")
    if meta["kind"] in ("int", "float"):
        try:
            number = int(value) if meta["kind"] == "int" else float(value)
        except ValueError:
            raise BadRequest(f"{where}option {name}={raw!r}: not a{'n integer' if meta['kind'] == 'int' else ' number'}") \
                from None
        return _check(name, number, where)
    return _check(name, value, where)


def from_json(name: str, value: Any, where: str = "") -> Any:
    """One option's value from a JSON field: JSON types must match (true/false, numbers, strings)."""
    f = _FIELDS.get(name)
    if f is None:
        raise _unknown(name, where)
    kind = f.metadata["kind"]
    if kind == "list":
        if not (isinstance(value, str) or isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise BadRequest(f'{where}"{name}" must be a list of strings, got {_short(value)}')
        return _beam_value(name, value, where)
    if kind == "bool":
        if not isinstance(value, bool):
            raise BadRequest(f'{where}"{name}" must be true or false, got {value!r}')
        return value
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "int" and not float(value).is_integer()):
            raise BadRequest(f'{where}"{name}" must be a{"n integer" if kind == "int" else " number"}, got {value!r}')
        value = int(value) if kind == "int" else float(value)
        return _beam_value(name, value, where) if f.metadata["beam"] else _check(name, value, where)
    if not isinstance(value, str):
        raise BadRequest(f'{where}"{name}" must be a string, got {value!r}')
    return _check(name, value, where)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check(name: str, value, where: str):
    meta = _FIELDS[name].metadata
    if meta["kind"] in ("int", "float"):
        if value != value or value in (float("inf"), float("-inf")):
            raise BadRequest(f"{where}option {name}={value!r}: not a finite number")
        if meta["low"] is not None and value < meta["low"] or meta["high"] is not None and value > meta["high"]:
            raise BadRequest(f"{where}option {name}={value!r}: must be between {meta['low']:g} and {meta['high']:g}")
    if meta["kind"] == "str":
        if meta["choices"] and value not in meta["choices"]:
            raise BadRequest(f"{where}option {name}={value!r}: use one of {', '.join(meta['choices'])}")
        if meta["pattern"] and not re.fullmatch(meta["pattern"], value):
            raise BadRequest(f"{where}option {name}={value[:80]!r} is malformed (expected {meta['pattern']})")
    return value


def _merge(into: dict, name: str, value, where: str) -> None:
    if name in into and into[name] != value:
        raise BadRequest(f"{where}option {name} is given twice with different values ({into[name]!r}, {value!r})")
    into[name] = value


def from_query(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Options from the query string's (name, value) pairs (already percent-decoded)."""
    out: dict[str, Any] = {}
    for name, raw in pairs:
        _merge(out, name, from_text(name, raw, "query string: "), "query string: ")
    return out


def from_header(header: str | None) -> dict[str, Any]:
    """Options from X-Amzn-SageMaker-Custom-Attributes: `name=value` pairs separated by `;` or `&`."""
    out: dict[str, Any] = {}
    where = f"{HEADER}: "
    for part in re.split(r"[;&]", header or ""):
        if not part.strip():
            continue
        name, eq, raw = part.partition("=")
        name = name.strip()
        if not eq or not name:
            raise BadRequest(f"{where}{part.strip()[:80]!r} is not name=value; send e.g. "
                             f"'timestamps=true;language=fra' (pairs separated by ';')")
        try:
            value = urllib.parse.unquote(raw.strip(), errors="strict")
        except UnicodeDecodeError:
            raise BadRequest(f"{where}the value of {name} is not valid percent-encoded UTF-8") from None
        if "=" in value and _FIELDS.get(name) is not None:
            raise BadRequest(f"{where}option {name}={value[:80]!r} holds another '='; separate pairs with ';'")
        _merge(out, name, from_text(name, value, where), where)
    return out


def request_level(query: Iterable[tuple[str, str]], header: str | None) -> dict[str, Any]:
    """The options a whole request carries: query string and header together (a conflict is a 400)."""
    out = from_query(query)
    for name, value in from_header(header).items():
        _merge(out, name, value, f"{HEADER} and query string: ")
    return out


def build(request: Mapping[str, Any], item: Mapping[str, Any] | None = None) -> Options:
    """Options for one clip: the item's own (JSON fields) over the request's."""
    return Options(**{**request, **(item or {})})


def markdown_table() -> str:
    """The options as a Markdown table: option, type, default, meaning."""
    rows = ["| option | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(Options):
        meta = f.metadata
        kind = {"bool": "true/false", "str": "string", "int": "integer", "float": "number",
                "list": "list of strings"}[meta["kind"]]
        if meta["choices"]:
            kind = " \\| ".join(f"`{c}`" for c in meta["choices"])
        if meta["low"] is not None:
            kind += f" {meta['low']:g}..{meta['high']:g}"
        default = meta["shown"] or ("none" if f.default is None else
                                    str(f.default).lower() if isinstance(f.default, bool) else f"`{f.default}`")
        rows.append(f"| `{f.name}` | {kind} | {default} | {meta['help']} |")
    return "\n".join(rows) + "\n"


# ---- The answer's type (Accept) -----------------------------------------------------------------------------

def answer_type(accept: str | None, offered: tuple[str, ...]) -> str:
    """Which of `offered` (media types, the default first) an Accept header asks for (RFC 9110 12.5.1): each
    offered type takes the q-value of the most specific range that matches it (type/subtype over type/* over
    */*); parameters other than q (`text/plain; charset=utf-8`) do not change the match. The highest q wins,
    ties go to the earlier offered type; no Accept, an unparsable one, or one that matches nothing (or only with
    q=0) gets offered[0], as a 406 would help no SageMaker client."""
    ranges = []
    for part in (accept or "").split(","):
        fields = [f.strip() for f in part.split(";")]
        kind = fields[0].lower()
        if "/" not in kind:
            continue
        q = 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value.strip())))
                except ValueError:
                    q = 0.0
        ranges.append((kind, q))

    def quality(media: str) -> float:
        main = media.split("/", 1)[0]
        best, score = -1, 0.0
        for kind, q in ranges:
            specificity = 2 if kind == media else 1 if kind == f"{main}/*" else 0 if kind == "*/*" else -1
            if specificity > best:
                best, score = specificity, q
        return score if best >= 0 else 0.0

    scores = [quality(m) for m in offered]
    top = max(scores, default=0.0)
    return offered[scores.index(top)] if top > 0 else offered[0]
