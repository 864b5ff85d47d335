"""Chunk planning for long audio: where a clip is cut, and which frames of each chunk are kept.

Pure arithmetic on sample counts (numpy only: no torch, no model). serve/model.py builds one `Geometry` per
model from its feature encoder (frame hop, receptive field) and the chunk settings, then calls `plan` once per
clip: the chunks' forward passes are batched, and each chunk's logits cut with `Chunk.kept` join into the
clip's frames.

    |<------------------------ chunk_samples ------------------------>|
    | left (stride before) |        kept samples       | right (after) |
                           ^ start + left              ^ start + len(audio) - right

Every edge is on a frame boundary (a multiple of `frame_samples`), so frame k of a chunk starting at sample s
is frame s / frame_samples + k of the whole clip, and cutting by sample position keeps each frame once: the
kept frames of the chunks join into exactly the whole clip's frames, without overlap or gap. A chunk's last
frames need samples past its end (the receptive field is wider than a frame), so a chunk followed by another
reaches past its kept part by at least that much even with no stride (`Geometry.right_samples`); the last
chunk reaches back as far as a whole chunk would, so a short tail still gets full left context and is never
shorter than the receptive field.

`plan_speech` is the other plan (SERVE_CHUNKING=vad, serve/vad.py finds the regions): the same chunks, but of
each region of speech only. What lies between regions is never sent to the model; a chunk says how many
samples of such silence follow its kept part (`after`: up to the next chunk's kept part, or the clip's end),
and the first chunk how many come before (`before`); serve/model.py puts that many frames of silence logits
there, so the joined frames still tile the whole clip.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """How one model cuts long audio, in samples. chunk_samples, stride_samples and right_samples are
    multiples of frame_samples; chunk_samples is at least the receptive field."""
    frame_samples: int   # input samples per output frame (320 for wav2vec2)
    receptive_field: int  # the fewest samples that give a frame (common.batching.min_samples)
    chunk_samples: int   # the longest chunk; a clip no longer than this is one chunk
    stride_samples: int  # context on each side of a chunk's kept part (dropped after the forward pass)
    right_samples: int   # context after the kept part of a chunk that is not the last (>= stride_samples)

    @classmethod
    def of(cls, frame_samples: int, receptive_field: int, chunk_length_s: float, chunk_stride_s: float,
           rate: int) -> "Geometry":
        """The geometry of a model with this frame hop and receptive field (samples), for chunks of
        `chunk_length_s` with `chunk_stride_s` of context each side (seconds at `rate` Hz), rounded to whole
        frames; chunks are never shorter than one frame or than the receptive field."""
        align = frame_samples
        chunk = max(align, round(chunk_length_s * rate / align) * align, math.ceil(receptive_field / align) * align)
        stride = round(chunk_stride_s * rate / align) * align
        # A chunk's last frames need samples past its end: with no stride a chunk still reaches that far into
        # the next one, and those frames are dropped.
        right = max(stride, math.ceil((receptive_field - align) / align) * align)
        return cls(frame_samples, receptive_field, chunk, stride, right)

    @property
    def reach_samples(self) -> int:
        """Samples past a kept part that its last frame needs (a frame sees more samples than its hop)."""
        align = self.frame_samples
        return max(0, math.ceil((self.receptive_field - align) / align) * align)

    def __post_init__(self):
        # Each chunk after the first moves on by at least chunk - stride - right samples: none would never end
        # (SERVE_CHUNK_STRIDE_S is refused from a third of SERVE_CHUNK_LENGTH_S on, serve/settings.py).
        if self.chunk_samples <= self.stride_samples + self.right_samples:
            raise ValueError(f"chunks of {self.chunk_samples} samples leave nothing to keep between "
                             f"{self.stride_samples} samples of context before and {self.right_samples} after")


@dataclass(frozen=True)
class Chunk:
    """One window of a clip: audio[start : start + len(audio)], of which the `left` samples at its start and
    the `right` samples at its end are context only (strides, dropped from its logits)."""
    audio: np.ndarray
    left: int   # samples at the start that overlap the previous chunk (or extra left context)
    right: int  # samples at the end that overlap the next chunk (0 for the last chunk)
    start: int = 0  # where the chunk starts in the clip, in samples
    frame_samples: int = 1  # the geometry's frame hop (the frame arithmetic below)
    before: int = 0  # samples of silence before the kept part that were not sent (plan_speech, first chunk)
    after: int = 0   # ... and after it, up to the next chunk's kept part or the clip's end

    @property
    def kept_samples(self) -> tuple[int, int]:
        """The clip's samples [begin, end) this chunk's kept frames stand for (without the silence around)."""
        return self.start + self.left, self.start + len(self.audio) - self.right

    @property
    def first_frame(self) -> int:
        """The clip frame of the chunk's first frame as joined: its first kept frame, or the first frame of
        the silence before it."""
        return (self.start + self.left - self.before) // self.frame_samples

    @property
    def silence_frames(self) -> tuple[int, int]:
        """Frames of silence not sent, before and after the kept frames (0, 0 for fixed chunks)."""
        return self.before // self.frame_samples, self.after // self.frame_samples

    @property
    def kept_frames(self) -> slice:
        """The chunk's own frames that are kept: from its left stride's end to its right stride's start, or
        to its last frame for the last chunk (stop None)."""
        stop = (len(self.audio) - self.right) // self.frame_samples if self.right else None
        return slice(self.left // self.frame_samples, stop)

    def kept(self, logits):
        """The chunk's frame logits (frames x ..., any sliceable: a tensor, an array) without its strides."""
        return logits[self.kept_frames]


def padded(audio: np.ndarray, receptive_field: int) -> np.ndarray:
    """`audio` padded with silence at the end to the receptive field (shorter audio gives zero frames)."""
    if len(audio) < receptive_field:
        return np.pad(audio, (0, receptive_field - len(audio)))
    return audio


def plan(audio: np.ndarray, geometry: Geometry) -> list[Chunk]:
    """The chunks of one clip (1-D samples, already normalised as the model wants): one chunk with no
    strides when the clip is no longer than `geometry.chunk_samples`, else overlapping chunks whose kept parts
    tile the clip. Audio shorter than the receptive field is padded with silence first (serve/model.py pads
    before normalising, so it never is here)."""
    audio = padded(audio, geometry.receptive_field)
    g = geometry
    n, size, stride, align = len(audio), g.chunk_samples, g.stride_samples, g.frame_samples
    if n <= size:
        return [Chunk(audio, 0, 0, 0, align)]
    out, kept, right = [], 0, g.right_samples
    while True:
        start = max(0, kept - stride)
        end = start + size
        if end >= n:
            start = max(0, -(-(n - size) // align) * align)  # aligned, at most `size` before the end
            out.append(Chunk(audio[start:], kept - start, 0, start, align))
            return out
        out.append(Chunk(audio[start:end], kept - start, right, start, align))
        kept = end - right


def plan_speech(audio: np.ndarray, regions: Sequence[tuple[int, int]], geometry: Geometry) -> list[Chunk]:
    """The chunks of one clip (1-D samples, already normalised and padded as the model wants) that cover its
    speech `regions` ([(start, end)] in samples, sorted) and nothing else but the context a frame needs: each
    region widened to frame boundaries (regions that then touch are one); one chunk per region no longer than
    `chunk_samples`, with its reach past the region (`Geometry.reach_samples`); a longer region split as `plan`
    splits a clip (strides of `stride_samples`, the last chunk reaching back a whole chunk, never before the
    region). Every chunk is at most chunk_samples long and at least the receptive field (when the clip is).
    The first chunk's `before` and every chunk's `after` are the silence not sent, so that silence, kept parts
    and silence tile the clip's whole frames. No regions: no chunks."""
    g, n = geometry, len(audio)
    align = g.frame_samples
    merged: list[list[int]] = []
    for start, end in regions:
        a = max(0, start // align * align)
        b = min(-(-end // align) * align, n)
        if b <= a:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    out: list[Chunk] = []
    for a, b in merged:
        chunks = [Chunk(audio[s:e], left, right, s, align) for s, e, left, right in _split(a, b, n, g)]
        if out:  # the silence between the previous region's kept end and this one's start
            out[-1] = replace(out[-1], after=a - out[-1].kept_samples[1])
        else:
            chunks[0] = replace(chunks[0], before=a)
        out.extend(chunks)
    if out:
        out[-1] = replace(out[-1], after=max(0, n // align * align - out[-1].kept_samples[1]))
    return out


def _split(a: int, b: int, n: int, g: Geometry) -> list[tuple[int, int, int, int]]:
    """(start, end, left, right) of chunks whose kept parts tile the region [a, b) (aligned) of a clip of n."""
    size, align = g.chunk_samples, g.frame_samples
    end_all = min(n, b + g.reach_samples)  # the audio the last frame of the region needs
    out, kept = [], a
    while True:
        start = max(a, kept - g.stride_samples)
        end = start + size
        if end >= end_all or end - g.right_samples <= kept:
            # The last chunk of the region: back as far as a whole chunk would reach (aligned), never before
            # the region, and long enough for the feature encoder where the clip allows.
            start = min(max(a, -(-(end_all - size) // align) * align), kept)
            if end_all - start < g.receptive_field:
                start = max(0, (end_all - g.receptive_field) // align * align)
            out.append((start, end_all, kept - start, end_all - b))
            return out
        out.append((start, end, kept - start, g.right_samples))
        kept = end - g.right_samples
