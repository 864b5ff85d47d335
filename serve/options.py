"""Per-request options: one typed table, read the same way from every place a client can put them.

A request's options come from the `X-Amzn-SageMaker-Custom-Attributes` header (the only channel SageMaker's
InvokeEndpoint forwards), the query string (direct callers), and, for JSON bodies, fields of each item,
which override the first two for that item. The header holds `name=value` pairs separated by `;` or `&`,
values percent-encoded where needed (`timestamps=true;language=fra`). An unknown name, a malformed pair or
a bad value is a BadRequest (400) that names it; the same option given twice with different values is one too.

Each option is a field of `Options` with its type, default, bounds and help, declared with common.settings
(the same boolean words, error wording and table generator as the serving settings and the hyperparameters;
`word`/`words` are declared aliases of true for `timestamps` only); docs/requests.md's "Request options" table
is `markdown_table()` (a test checks they agree). To add one, add a field: the routes do not change.

The beam-search options (`beam_width`, `alpha`, `beta`, `hotwords`, `hotword_weight`) declare common/lm.py's
ranges, are checked here like any other, then normalised by common.lm.parse_options (whose messages the
hotwords keep); `hotwords` is a JSON list, or in the header and query string one value of comma-separated
words and phrases (`hotwords=kwame nkosi,ravi`).
Whether they apply to the model (an LM for alpha/beta, the decoder chosen) is the model's check.
"""
from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from common import lm
from common import settings as common

from .contract import BadRequest
from .settings import LANGUAGE_PATTERN, LANGUAGE_SAYS

HEADER = "X-Amzn-SageMaker-Custom-Attributes"
LABEL = "option "  # errors read "option timestamps='maybe' is not a valid bool: ..."


def _option(default, *, help: str, beam: bool = False, **declared):
    """One request option (common.settings.setting: bounds, choices, pattern, aliases, shown default). beam: a
    beam-search option, normalised by common.lm.parse_options after its type and bounds are checked here."""
    return common.setting(default, help, beam=beam, **declared)


@dataclass(frozen=True)
class Options:
    timestamps: bool = _option(
        False, aliases={"words": True, "word": True},  # as transformers' return_timestamps="word"
        help="Add `words`: each word with its `start` and `end` in seconds (CTC frame times).",
    )
    language: str | None = _option(
        None, pattern=LANGUAGE_PATTERN, says=LANGUAGE_SAYS, shown="`SERVE_LANGUAGE`",
        help="Adapter models (MMS: `adapter.<lang>.safetensors` files): the language to transcribe; an unknown "
             "one gets a 400 listing the model's languages. Models without adapters refuse it.",
    )
    decoder: str | None = _option(
        None, choices=("greedy", "beam"), shown="`beam` with an LM, else `greedy`",
        help="CTC decoding. `beam`: beam search (pyctcdecode) with the model's KenLM n-gram when its directory has "
             "one (`language_model/`), in processes beside the model; without an LM, beam search alone (hotwords "
             "still apply). `greedy`: best path, on the model's device; it takes none of the options below.",
    )
    beam_width: int | None = _option(
        None, beam=True, at_least=1, at_most=lm.MAX_BEAM_WIDTH, shown=f"`{lm.DEFAULT_BEAM_WIDTH}`",
        help="Beam search: hypotheses kept per frame. Wider is slower and rarely better past the default "
             "(bench/README.md, LM decoding).",
    )
    alpha: float | None = _option(
        None, beam=True, at_least=lm.ALPHA_RANGE[0], at_most=lm.ALPHA_RANGE[1],
        shown="the model's (`attrs.json`)",
        help="Beam search: weight of the LM's log-probability. Refused for a model without an LM.",
    )
    beta: float | None = _option(
        None, beam=True, at_least=lm.BETA_RANGE[0], at_most=lm.BETA_RANGE[1],
        shown="the model's (`attrs.json`)",
        help="Beam search: bonus per word (natural-log units). Refused for a model without an LM.",
    )
    hotwords: tuple[str, ...] = _option(
        (), beam=True, shown="none",
        help=f"Beam search: words or phrases to boost (product names, people), at most {lm.MAX_HOTWORDS} of at "
             f"most {lm.MAX_HOTWORD_CHARS} characters, only characters the model writes. JSON: a list of strings; "
             "header and query string: one comma-separated value (`hotwords=kwame nkosi,ravi`; a space may be "
             "sent as `%20`).",
    )
    hotword_weight: float | None = _option(
        None, beam=True, at_least=lm.HOTWORD_WEIGHT_RANGE[0], at_most=lm.HOTWORD_WEIGHT_RANGE[1],
        shown=f"`{lm.DEFAULT_HOTWORD_WEIGHT:g}`",
        help="Beam search: how much the hotwords are boosted (pyctcdecode's scale).",
    )
    prompt: str | None = _option(
        None, pattern=r"[^\x00-\x08\x0b-\x1f\x7f]{1,1000}", says="1 to 1000 characters, no control characters",
        shown="none",
        help="OpenAI's `prompt`: with beam search (the default for a model with an LM) each of its words that the "
             "model can spell becomes a hotword (as typed, else lower- or upper-cased to fit the alphabet); with "
             "greedy decoding it changes nothing.",
    )
    segments: bool = _option(
        False,
        help="Add `segments`: each chunk of the audio with its `start`, `end`, `text` and `avg_logprob` (the mean "
             "log posterior of each frame's best label).",
    )
    confidence: bool = _option(
        False,
        help="Add `words` with a `probability` each: the mean posterior of the frames that spell the word "
             "([OpenAI-compatible API](openai.md#segments-and-confidences)).",
    )
    response_format: str | None = _option(
        None, choices=("json", "text", "srt", "vtt", "verbose_json"), shown="by `Accept`",
        help="The answer: `json`, `text`, `srt` or `vtt` subtitles, `verbose_json` (JSON with segments and "
             "confidences). On `/invocations` `Accept` chooses when this is left out.",
    )
    max_line_chars: int = _option(
        42, at_least=10, at_most=200,
        help="Subtitles: most characters on a line of a cue (a longer word gets a line of its own).",
    )
    max_lines: int = _option(
        2, at_least=1, at_most=10,
        help="Subtitles: most lines in a cue.",
    )


SPECS = common.specs(Options)
NAMES = tuple(SPECS)
BEAM_NAMES = tuple(name for name, spec in SPECS.items() if spec.extra["beam"])


def beam_options_given(o: Options) -> list[str]:
    """The beam-search options this request set (they need decoder=beam)."""
    return [name for name in BEAM_NAMES if getattr(o, name) != SPECS[name].default]


def decode_options(o: Options) -> lm.DecodeOptions:
    """The request's beam-search options for common.lm (what it left out: common.lm's defaults)."""
    return lm.DecodeOptions(**{name: getattr(o, name) for name in beam_options_given(o)})


def _beam_value(name: str, value: Any, where: str) -> Any:
    """A beam-search option normalised (and, for hotwords, checked) by common.lm, its message kept."""
    try:
        return getattr(lm.parse_options({name: value}), name)
    except lm.OptionError as exc:
        raise BadRequest(f"{where}{exc}") from None


def _spec(name: str, where: str) -> common.Spec:
    spec = SPECS.get(name)
    if spec is None:
        raise BadRequest(where + common.unknown_name("option", name, NAMES, where="docs/requests.md lists them"))
    return spec


def _checked(spec: common.Spec, value: Any, where: str, *, typed: bool) -> Any:
    """The value read (text) or checked (JSON) by the declaration, then normalised by common.lm if beam."""
    try:
        value = spec.check(value, label=LABEL) if typed else spec.read(value, label=LABEL)
    except common.SettingError as exc:
        raise BadRequest(f"{where}{exc}") from None
    return _beam_value(spec.name, value, where) if spec.extra["beam"] else value


def from_text(name: str, raw: str, where: str = "") -> Any:
    """One option's value from text (query string, header): raises BadRequest naming it."""
    spec = _spec(name, where)
    if spec.kind == "list":
        return _beam_value(name, raw.strip(), where)
    return _checked(spec, raw.strip(), where, typed=False)


_JSON_TYPES = {"bool": ((bool,), "true or false"), "int": ((int, float), "an integer"),
               "float": ((int, float), "a number"), "str": ((str,), "a string")}


def from_json(name: str, value: Any, where: str = "") -> Any:
    """One option's value from a JSON field: JSON types must match (true/false, numbers, strings)."""
    spec = _spec(name, where)
    if spec.kind == "list":
        if not (isinstance(value, str) or isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise BadRequest(f'{where}"{name}" must be a list of strings, got {_short(value)}')
        return _beam_value(name, value, where)
    types, expected = _JSON_TYPES[spec.kind]
    if not isinstance(value, types) or spec.kind != "bool" and isinstance(value, bool) \
            or spec.kind == "int" and not float(value).is_integer():
        raise BadRequest(f'{where}"{name}" must be {expected}, got {_short(value)}')
    if spec.kind in ("int", "float"):
        value = int(value) if spec.kind == "int" else float(value)
    return _checked(spec, value, where, typed=True)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
        if "=" in value and name in SPECS:
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
    return common.markdown_table(SPECS.values(), first="option")


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
