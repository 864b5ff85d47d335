"""The decoder stage: a clip's frame logits -> text and words, after the forward pass.

A decoder takes the logits of one clip (frames x vocabulary, on the model's device, chunk strides already
dropped) and the language's `common.ctc.Vocabulary`, and returns a `Hypothesis` whose word times are in
frames. `ServingModel` picks one by name (today only "greedy"; the `decoder` request option of a later
change adds "beam", which can run on host copies of the logits in a process pool, off the model thread).

A decoder may also offer `stream(vocab)`: an incremental decoder fed chunk by chunk that returns words as
soon as they are complete, for results of long audio chunk by chunk (`ServingModel.transcribe_iter`).
Decoders without it are run once on the whole clip at its end.

Live streams (serve/streaming.py) show partials with the greedy stream (fast, frame by frame, and its
committed words never change) and decode each utterance's `final` from its committed logits with the decoder
the session's options choose (`ServingModel.decoder(options)`): a beam decoder registered here serves finals
of streams with no change to the streaming code.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from common import ctc


@dataclass
class Hypothesis:
    text: str
    words: list[tuple[str, int, int]] = field(default_factory=list)  # (word, first frame, end frame)


class GreedyDecoder:
    """Best path: argmax per frame, repeats merged, blanks and special tokens dropped, on the device."""
    name = "greedy"

    def decode(self, logits: torch.Tensor, vocab: ctc.Vocabulary, *, words: bool = False) -> Hypothesis:
        seq = ctc.greedy(logits[None], vocab.blank_id, drop=vocab.dropped)[0]
        return Hypothesis(vocab.text(seq), vocab.words(seq) if words else [])

    def stream(self, vocab: ctc.Vocabulary) -> "GreedyStream":
        return GreedyStream(vocab)


class GreedyStream:
    """Greedy decoding of consecutive pieces of one clip's frames, equal to decoding them joined: a token
    whose frames run over a piece's edge is merged, and a word is returned once a space follows it."""

    def __init__(self, vocab: ctc.Vocabulary):
        self.vocab = vocab
        self.frames = 0  # frames pushed so far
        self.last_id: int | None = None  # argmax of the last frame pushed (as collapse saw it)
        self.pending = ctc.Collapsed([], [], [])  # tokens after the last space, in absolute frames

    def push(self, logits: torch.Tensor) -> list[tuple[str, int, int]]:
        """Feed the next frames (frames x vocabulary); the words completed by them."""
        v = self.vocab
        ids = logits.argmax(dim=-1)
        if len(v.dropped):
            ids = ids.masked_fill(torch.isin(ids, torch.as_tensor(v.dropped, device=ids.device)), v.blank_id)
        seq = ctc.collapse(ids[None], v.blank_id)[0]
        offset, p = self.frames, self.pending
        tokens, starts, ends = seq.tokens, seq.starts, seq.ends
        if tokens and starts[0] == 0 and tokens[0] == self.last_id:
            # The previous piece ended inside this token's run: one token, not two.
            if p.tokens and p.tokens[-1] == tokens[0]:
                p.ends[-1] = offset + ends[0]
            tokens, starts, ends = tokens[1:], starts[1:], ends[1:]
        p.tokens.extend(tokens)
        p.starts.extend(offset + s for s in starts)
        p.ends.extend(offset + e for e in ends)
        self.frames += len(ids)
        if len(ids):
            self.last_id = int(ids[-1])
        cut = max((i for i, t in enumerate(p.tokens) if v.is_space(t)), default=None)
        if cut is None:
            return []
        done = ctc.Collapsed(p.tokens[:cut], p.starts[:cut], p.ends[:cut])
        self.pending = ctc.Collapsed(p.tokens[cut:], p.starts[cut:], p.ends[cut:])
        return v.words(done)

    def fork(self) -> "GreedyStream":
        """An independent copy (to decode tentative frames without committing them)."""
        other = GreedyStream(self.vocab)
        other.frames, other.last_id = self.frames, self.last_id
        p = self.pending
        other.pending = ctc.Collapsed(list(p.tokens), list(p.starts), list(p.ends))
        return other

    def finish(self) -> list[tuple[str, int, int]]:
        words, self.pending = self.vocab.words(self.pending), ctc.Collapsed([], [], [])
        return words


DECODERS = {"greedy": GreedyDecoder()}
