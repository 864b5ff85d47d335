"""What /invocations answers: JSON (the body's own JSON type), text, or SRT / WebVTT subtitles, chosen by the
`response_format` option when the request gives one, else by `Accept` (an `Accept` naming none of them: 406)."""
from __future__ import annotations

from flask import Response

from . import bodies, contract, options, subtitles

# What /invocations can answer: Accept media type -> response_format.
ANSWERS = {"application/json": "json", bodies.JSON_LINES_TYPE: "json", "text/plain": "text", "text/vtt": "vtt",
           "application/x-subrip": "srt"}


def answer_format(clips: list[contract.Clip], accept: str | None, own: str, is_batch: bool) -> str:
    """json, text, srt, vtt or verbose_json: the response_format option when the request gives one, else what
    Accept prefers (the body's own JSON type first); 406 for an Accept that lists media types and none of ANSWERS,
    400 for subtitles of a batch."""
    given = {c.options.response_format for c in clips}
    if len(given) > 1:
        raise contract.BadRequest("the items of this batch ask for different response_format values; use one")
    fmt = given.pop()
    if fmt is None:
        offered = (own,) + tuple(t for t in ANSWERS if t != own)
        if not _satisfiable(accept, offered):
            raise contract.NotAcceptable(f"cannot answer Accept: {accept[:100]!r}; /invocations answers "
                                         f"{', '.join(offered)} (or set response_format)")
        fmt = ANSWERS[options.answer_type(accept, offered)]
    if fmt in ("srt", "vtt") and is_batch:
        message = f"response_format {fmt}: subtitles are of one clip; this request is a batch"
        # Asked for by Accept: that Accept cannot be answered; by the option: a bad request.
        raise contract.NotAcceptable(message) if clips[0].options.response_format is None else \
            contract.BadRequest(message)
    return fmt


def _satisfiable(accept: str | None, offered: tuple[str, ...]) -> bool:
    """False when Accept lists media ranges and none takes an offered type with q > 0 (RFC 9110 12.5.1); an
    absent or unparsable Accept takes anything."""
    ranges = []
    for part in (accept or "").split(","):
        kind, _, params = part.partition(";")
        kind = kind.strip().lower()
        if "/" not in kind:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranges.append((kind, q))
    if not ranges:
        return True
    return any(_quality(ranges, media) > 0 for media in offered)


def _quality(ranges: list[tuple[str, float]], media: str) -> float:
    best, score = -1, 0.0
    for kind, q in ranges:
        specificity = 2 if kind == media else 1 if kind == media.split("/")[0] + "/*" else 0 if kind == "*/*" else -1
        if specificity > best:
            best, score = specificity, q
    return score if best >= 0 else 0.0


def subtitle_response(t: contract.Transcript, o: options.Options, fmt: str) -> Response:
    """One transcript's words as SRT or WebVTT cues (serve/subtitles.py)."""
    text = subtitles.render(fmt, [(w.word, w.start, w.end) for w in t.words or []], duration=t.audio_seconds,
                            max_line_chars=o.max_line_chars, max_lines=o.max_lines)
    return Response(text, mimetype=subtitles.MEDIA_TYPES[fmt])
