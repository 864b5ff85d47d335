"""serve/subtitles.py: words with times -> SRT / WebVTT cues, checked with third-party parsers (srt, webvtt-py)."""
from __future__ import annotations

import html
import io

import pytest
import srt
import webvtt
from hypothesis import given, settings, strategies as st

from serve import subtitles


def parsed_srt(text: str) -> list[tuple[float, float, list[str]]]:
    return [(c.start.total_seconds(), c.end.total_seconds(), c.content.split("\n")) for c in srt.parse(text)]


def _s(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def parsed_vtt(text: str) -> list[tuple[float, float, list[str]]]:
    """Cue text as shown (WebVTT escapes &, < and >)."""
    return [(_s(c.start), _s(c.end), html.unescape(c.text).split("\n"))
            for c in webvtt.from_buffer(io.StringIO(text))]


def timed(words: list[str], step: float = 0.5, gap: float = 0.1) -> list[tuple[str, float, float]]:
    return [(w, round(i * step, 3), round(i * step + step - gap, 3)) for i, w in enumerate(words)]


@st.composite
def word_lists(draw):
    n = draw(st.integers(0, 60))
    words, t = [], draw(st.floats(0, 2))
    for _ in range(n):
        word = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz'&<>", min_size=1, max_size=draw(
            st.sampled_from([8, 8, 8, 60]))))
        t += draw(st.floats(0.0, 3.0))
        length = draw(st.floats(0.0, 1.0))
        words.append((word, round(t, 3), round(t + length, 3)))
        t += length
    return words


@settings(max_examples=150, deadline=None)
@given(word_lists(), st.integers(10, 60), st.integers(1, 3))
def test_cues_cover_every_word_once_in_order_never_overlap_and_parse(words, chars, lines):
    duration = (words[-1][2] if words else 0.0) + 0.5
    for fmt, parse in (("srt", parsed_srt), ("vtt", parsed_vtt)):
        text = subtitles.render(fmt, words, duration=duration, max_line_chars=chars, max_lines=lines)
        cues = parse(text)
        assert [w for _, _, ls in cues for line in ls for w in line.split()] == [w for w, _, _ in words]
        for (s0, e0, _), (s1, _, _) in zip(cues, cues[1:]):
            assert e0 <= s1, (fmt, cues)
        for start, end, ls in cues:
            assert 0 <= start <= end <= duration + 1e-9
            assert 1 <= len(ls) <= lines
            assert all(len(line) <= chars or " " not in line for line in ls)


def test_defaults_are_42_characters_and_2_lines():
    words = timed(["word"] * 40)
    cues = subtitles.cues(words)
    assert all(len(c.lines) <= 2 and all(len(line) <= 42 for line in c.lines) for c in cues)
    # "word " * 8 + "word" = 44 > 42: eight words a line, two lines a cue.
    assert cues[0].lines == ("word " * 7 + "word", "word " * 7 + "word")
    assert len(cues) == 3 and cues[-1].lines == ("word " * 7 + "word",)


def test_cue_times_come_from_the_word_times_and_a_pause_starts_a_cue():
    words = [("hello", 0.2, 0.6), ("world", 0.7, 1.1), ("again", 4.0, 4.5)]
    cues = subtitles.cues(words)
    assert [(c.start, c.end, c.lines) for c in cues] == [(0.2, 1.1, ("hello world",)), (4.0, 4.5, ("again",))]
    assert subtitles.srt(cues) == ("1\n00:00:00,200 --> 00:00:01,100\nhello world\n\n"
                                   "2\n00:00:04,000 --> 00:00:04,500\nagain\n\n")
    assert subtitles.vtt(cues).startswith("WEBVTT\n\n00:00:00.200 --> 00:00:01.100\nhello world\n\n")


def test_times_stay_inside_the_audio_and_zero_length_words_get_a_millisecond():
    cues = subtitles.cues([("a", 0.5, 0.5), ("b", 9.0, 12.0)], duration=10.0)
    assert cues[0].end == pytest.approx(0.501) and cues[1].end == 10.0


def test_hours_in_timestamps_and_no_words():
    assert subtitles.timestamp(3723.456) == "01:02:03,456"
    assert subtitles.timestamp(3723.456, ".") == "01:02:03.456"
    assert subtitles.srt([]) == "" and subtitles.vtt([]) == "WEBVTT\n\n"
    assert parsed_vtt(subtitles.vtt([])) == []
    escaped = subtitles.vtt(subtitles.cues([("a", 0, 1), ("&", 1, 2), ("b", 2, 3), ("<c>", 3, 4)]))
    assert "a &amp; b &lt;c&gt;" in escaped


def test_a_word_longer_than_a_line_gets_a_line_of_its_own():
    long = "x" * 50
    cues = subtitles.cues(timed(["a", long, "b"]), max_line_chars=10)
    assert [c.lines for c in cues] == [("a", long)] + [("b",)]
