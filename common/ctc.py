"""CTC greedy decoding: argmax, merge repeats and drop blanks on the device; only tokens go to the host.

Transcripts are what transformers' `tokenizer.batch_decode(argmax_ids)` gives, less the special tokens
(`<s>`, `</s>`, `<unk>`/`[UNK]`, pad): a frame whose argmax is one of them counts as a blank, which
drops the token after repeats are merged, exactly as deleting it from the decoded text would. The tokenizer
is asked not to group again (the repeats are already merged: two equal characters split by a blank stay
two characters).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

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


def collapse(ids: torch.Tensor, blank_id: int, lengths: torch.Tensor | None = None,
             drop: Sequence[int] = ()) -> list[Collapsed]:
    """Collapse argmax ids (batch x frames, on any device); frames at or past `lengths`, and frames whose
    id is in `drop`, count as blank."""
    if ids.ndim != 2:
        raise ValueError(f"ids must be batch x frames, got shape {tuple(ids.shape)}")
    batch, frames = ids.shape
    if frames == 0:
        return [Collapsed([], [], []) for _ in range(batch)]
    if lengths is not None:
        lengths = torch.as_tensor(lengths, device=ids.device)
        past_end = torch.arange(frames, device=ids.device)[None, :] >= lengths[:, None]
        ids = ids.masked_fill(past_end, blank_id)
    if len(drop):
        ids = ids.masked_fill(torch.isin(ids, torch.as_tensor(list(drop), device=ids.device)), blank_id)
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


class Vocabulary:
    """What decoding needs of one language's CTC tokenizer (Wav2Vec2CTCTokenizer) and head.

    size: the CTC head's outputs; blank_id: the tokenizer's pad token; dropped: ids of special tokens
    (never in a transcript); words are split where the tokenizer puts a space (its word delimiter, or a
    literal space token), and lower-cased when the tokenizer does (do_lower_case)."""

    def __init__(self, tokenizer: Any, size: int):
        self.tokenizer = tokenizer
        self.size = size
        self.blank_id = int(tokenizer.pad_token_id)
        self.delimiter = tokenizer.word_delimiter_token
        self.space = getattr(tokenizer, "replace_word_delimiter_char", " ")
        self.lower = bool(getattr(tokenizer, "do_lower_case", False))
        self.strings = tokenizer.convert_ids_to_tokens(list(range(size)))
        keep = {self.delimiter, tokenizer.pad_token}
        special = set(tokenizer.all_special_tokens) - keep
        vocab_ids = set(tokenizer.encoder.values())
        # Special tokens, and tokens transformers added beyond vocab.json (<s>, </s>) that the head can emit.
        self.dropped = tuple(i for i, s in enumerate(self.strings)
                             if i != self.blank_id and (s in special or (i not in vocab_ids and s != self.delimiter)))

    def text(self, seq: Collapsed) -> str:
        return self.tokenizer.decode(seq.tokens, group_tokens=False)

    def chars(self, tokens: Sequence[int]) -> list[str]:
        """Each token as it appears in text: the word delimiter as a space."""
        return [self.space if self.strings[t] == self.delimiter else self.strings[t] for t in tokens]

    def words(self, seq: Collapsed) -> list[tuple[str, int, int]]:
        """(word, first frame, end frame) for each word, split as transformers' word offsets split them."""
        words: list[tuple[str, int, int]] = []
        current: list[str] = []
        first = last = 0
        for char, start, end in zip(self.chars(seq.tokens), seq.starts, seq.ends):
            if char == self.space:
                if current:
                    words.append(self._word(current, first, last))
                    current = []
                continue
            if not current:
                first = start
            current.append(char)
            last = end
        if current:
            words.append(self._word(current, first, last))
        return words

    def is_space(self, token: int) -> bool:
        return self.strings[token] == self.delimiter or self.strings[token] == self.space

    def not_spelling(self) -> tuple[int, ...]:
        """Ids that spell no character of a word: dropped special tokens and the word delimiter (the blank aside)."""
        return tuple(self.dropped) + tuple(i for i in range(self.size) if i != self.blank_id and self.is_space(i))

    def labels(self) -> list[str]:
        """id -> text for decoders that work on characters (beam search): "" for the blank and dropped
        tokens, " " for the word delimiter."""
        dropped = set(self.dropped) | {self.blank_id}
        return ["" if i in dropped else c for i, c in enumerate(self.chars(range(self.size)))]

    def _word(self, chars: list[str], start: int, end: int) -> tuple[str, int, int]:
        word = "".join(chars)
        return (word.lower() if self.lower else word), start, end


def greedy(logits: torch.Tensor, blank_id: int, lengths: torch.Tensor | None = None,
           drop: Sequence[int] = ()) -> list[Collapsed]:
    """argmax over the vocabulary (batch x frames x vocab) then `collapse`, all on the logits' device."""
    return collapse(logits.argmax(dim=-1), blank_id, lengths, drop)


def decode_text(tokenizer, seq: Collapsed) -> str:
    return tokenizer.decode(seq.tokens, group_tokens=False)


def word_offsets(vocab: Vocabulary, seq: Collapsed, seconds_per_frame: float) -> list[dict]:
    """Words with start and end in seconds."""
    return [{"word": w, "start": round(s * seconds_per_frame, 3), "end": round(e * seconds_per_frame, 3)}
            for w, s, e in vocab.words(seq)]


# Confidences from the posteriors ------------------------------------------------------------------------------
def word_probabilities(logits: torch.Tensor, spans: Sequence[tuple[int, int]], blank_id: int,
                       not_spelling: Sequence[int] = ()) -> list[float]:
    """Each word's probability from one clip's frame logits (frames x vocabulary, any device): the mean, over
    the frames of its span [first, end) whose argmax is a character (not the blank, a dropped token or the word
    delimiter: `not_spelling`), of that argmax's posterior. Under greedy decoding those are exactly the frames
    that spell the word. A span from beam search with no such frame (the LM put a word where the acoustic
    model heard only blanks) gets the mean of 1 - P(blank) over its frames instead. Spans are clamped to the
    frames there are; an empty one is its first frame."""
    frames = logits.shape[0]
    if not spans:
        return []
    if frames == 0:
        return [0.0] * len(spans)
    probs = logits.float().softmax(dim=-1)
    top, ids = probs.max(dim=-1)
    dropped = torch.as_tensor(sorted({blank_id, *not_spelling}), device=ids.device)
    spelled = ~torch.isin(ids, dropped)
    zero = torch.zeros(1, device=probs.device)
    spelled_sum = torch.cat([zero, torch.cumsum(top * spelled, 0)])
    spelled_n = torch.cat([zero, torch.cumsum(spelled.float(), 0)])
    voiced = torch.cat([zero, torch.cumsum(1 - probs[:, blank_id], 0)])
    first = torch.as_tensor([min(max(s, 0), frames - 1) for s, _ in spans], device=probs.device)
    end = torch.maximum(torch.as_tensor([min(e, frames) for _, e in spans], device=probs.device), first + 1)
    n = spelled_n[end] - spelled_n[first]
    mean_spelled = (spelled_sum[end] - spelled_sum[first]) / n.clamp(min=1)
    mean_voiced = (voiced[end] - voiced[first]) / (end - first)
    return [round(float(p), 4) for p in torch.where(n > 0, mean_spelled, mean_voiced).cpu().tolist()]


def mean_logprobs(logits: torch.Tensor, ranges: Sequence[tuple[int, int]]) -> list[float | None]:
    """For each frame range [start, end) of one clip's logits (frames x vocabulary): the mean over its frames of
    the log posterior of the frame's argmax (the best path's log-probability per frame; natural log, <= 0).
    None for an empty range."""
    if not ranges:
        return []
    top = torch.log_softmax(logits.float(), dim=-1).max(dim=-1).values
    sums = torch.cat([torch.zeros(1, device=top.device), torch.cumsum(top, 0)]).cpu().tolist()
    out: list[float | None] = []
    for start, end in ranges:
        start, end = max(0, start), min(end, len(sums) - 1)
        out.append(round((sums[end] - sums[start]) / (end - start), 4) if end > start else None)
    return out
