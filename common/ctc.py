"""CTC greedy decoding: argmax, merge repeats and drop blanks on the device; only tokens go to the host.

`decode_text` equals `tokenizer.batch_decode(argmax_ids)` (the repeats are already merged, so the
tokenizer is asked not to group again: two equal characters split by a blank stay two characters).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .audio import TARGET_RATE


@dataclass(frozen=True)
class Collapsed:
    """One sequence after CTC collapse: token ids with the frame span [start, end) of each."""
    tokens: list[int]
    starts: list[int]
    ends: list[int]


def frame_seconds(config) -> float:
    """Seconds per output frame: the feature encoder's total stride over 16 kHz input."""
    return math.prod(config.conv_stride) / TARGET_RATE


def collapse(ids: torch.Tensor, blank_id: int, lengths: torch.Tensor | None = None) -> list[Collapsed]:
    """Collapse argmax ids (batch x frames, on any device); frames at or past `lengths` count as blank."""
    if ids.ndim != 2:
        raise ValueError(f"ids must be batch x frames, got shape {tuple(ids.shape)}")
    batch, frames = ids.shape
    if frames == 0:
        return [Collapsed([], [], []) for _ in range(batch)]
    if lengths is not None:
        lengths = torch.as_tensor(lengths, device=ids.device)
        past_end = torch.arange(frames, device=ids.device)[None, :] >= lengths[:, None]
        ids = ids.masked_fill(past_end, blank_id)
    previous = torch.nn.functional.pad(ids[:, :-1], (1, 0), value=-1)
    row, start = (ids != previous).nonzero(as_tuple=True)  # every run of equal ids, row-major order
    token = ids[row, start]
    # A run ends where the next run of the same row starts, or at the last frame.
    next_start = torch.roll(start, -1)
    same_row = torch.roll(row, -1) == row
    same_row[-1] = False
    end = torch.where(same_row, next_start, torch.full_like(start, frames))
    keep = token != blank_id
    host = torch.stack([row[keep], token[keep], start[keep], end[keep]]).cpu().tolist()
    out = [Collapsed([], [], []) for _ in range(batch)]
    for r, t, s, e in zip(*host):
        out[r].tokens.append(t)
        out[r].starts.append(s)
        out[r].ends.append(e)
    return out


def greedy(logits: torch.Tensor, blank_id: int, lengths: torch.Tensor | None = None) -> list[Collapsed]:
    """argmax over the vocabulary (batch x frames x vocab) then `collapse`, all on the logits' device."""
    return collapse(logits.argmax(dim=-1), blank_id, lengths)


def decode_text(tokenizer, seq: Collapsed) -> str:
    return tokenizer.decode(seq.tokens, group_tokens=False)


def word_offsets(tokenizer, seq: Collapsed, seconds_per_frame: float) -> list[dict]:
    """Words (split at the tokenizer's word delimiter) with start and end in seconds."""
    delimiter = tokenizer.word_delimiter_token
    words: list[dict] = []
    current: list[str] = []
    first = last = 0
    for token, start, end in zip(tokenizer.convert_ids_to_tokens(seq.tokens), seq.starts, seq.ends):
        if token == delimiter:
            if current:
                words.append(_word(current, first, last, seconds_per_frame))
                current = []
            continue
        if not current:
            first = start
        current.append(token)
        last = end
    if current:
        words.append(_word(current, first, last, seconds_per_frame))
    return words


def _word(chars: list[str], start: int, end: int, seconds_per_frame: float) -> dict:
    return {
        "word": "".join(chars),
        "start": round(start * seconds_per_frame, 3),
        "end": round(end * seconds_per_frame, 3),
    }
