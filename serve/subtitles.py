"""Subtitles from word timestamps: words with times -> cues -> SRT or WebVTT text. Pure Python, no model.

`cues(words, ...)` fills lines of at most `max_line_chars` characters (a longer word gets a line of its own, never
cut) and cues of at most `max_lines` lines, in the words' order; a pause of `max_gap_s` or more between two
words starts a new cue, so a caption does not stay on screen over silence. A cue starts at its first word's
start and ends at its last word's end, kept inside [0, duration] and never past the next cue's start, so cues
never overlap and every word is in exactly one cue. `srt(cues)` and `vtt(cues)` write them (SubRip with
`HH:MM:SS,mmm` times; WebVTT with `HH:MM:SS.mmm` and `&`, `<`, `>` escaped).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

MAX_LINE_CHARS = 42  # the common broadcast and streaming caption limit
MAX_LINES = 2
MAX_GAP_S = 1.5
MIN_CUE_S = 0.001  # a cue's end is after its start (one millisecond at least, where the audio allows it)


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float
    lines: tuple[str, ...]


def cues(words: Iterable[tuple[str, float, float]], *, max_line_chars: int = MAX_LINE_CHARS,
         max_lines: int = MAX_LINES, max_gap_s: float = MAX_GAP_S, duration: float | None = None) -> list[Cue]:
    """Cues of (word, start s, end s) in time order; see the module docstring."""
    if max_line_chars < 1 or max_lines < 1:
        raise ValueError("max_line_chars and max_lines must be at least 1")
    groups: list[list[list[tuple[str, float, float]]]] = []  # cue -> lines -> words
    last_end = None
    for raw, start, end in words:
        word = " ".join(str(raw).split())
        if not word:
            continue
        item = (word, float(start), float(end))
        cue = groups[-1] if groups else None
        if cue is None or (last_end is not None and item[1] - last_end >= max_gap_s):
            groups.append([[item]])
        else:
            line = cue[-1]
            if len(" ".join(w for w, _, _ in line)) + 1 + len(word) <= max_line_chars:
                line.append(item)
            elif len(cue) < max_lines:
                cue.append([item])
            else:
                groups.append([[item]])
        last_end = item[2]
    out: list[Cue] = []
    for i, cue in enumerate(groups):
        start, end = cue[0][0][1], cue[-1][-1][2]
        if duration is not None:
            start, end = min(max(0.0, start), duration), min(end, duration)
        if out:
            start = max(start, out[-1].end)
        end = max(end, start + MIN_CUE_S)
        if i + 1 < len(groups):
            end = min(end, max(start, groups[i + 1][0][0][1]))
        if duration is not None:
            end = min(end, duration)
        out.append(Cue(round(start, 3), round(end, 3), tuple(" ".join(w for w, _, _ in line) for line in cue)))
    return out


def timestamp(seconds: float, separator: str = ",") -> str:
    """HH:MM:SS,mmm (SRT) or, with separator ".", HH:MM:SS.mmm (WebVTT)."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def srt(items: Sequence[Cue]) -> str:
    """SubRip: numbered cues, blank-line separated."""
    return "".join(f"{n}\n{timestamp(c.start)} --> {timestamp(c.end)}\n" + "\n".join(c.lines) + "\n\n"
                   for n, c in enumerate(items, start=1))


def _vtt_text(line: str) -> str:
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vtt(items: Sequence[Cue]) -> str:
    """WebVTT: the WEBVTT header, then the cues."""
    return "WEBVTT\n\n" + "".join(
        f"{timestamp(c.start, '.')} --> {timestamp(c.end, '.')}\n" + "\n".join(map(_vtt_text, c.lines)) + "\n\n"
        for c in items)


MEDIA_TYPES = {"srt": "application/x-subrip", "vtt": "text/vtt"}


def render(fmt: str, words: Iterable[tuple[str, float, float]], *, duration: float | None = None,
           max_line_chars: int = MAX_LINE_CHARS, max_lines: int = MAX_LINES) -> str:
    """The words as `fmt` ("srt" or "vtt") subtitles."""
    made = cues(words, max_line_chars=max_line_chars, max_lines=max_lines, duration=duration)
    return srt(made) if fmt == "srt" else vtt(made)
