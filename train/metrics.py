"""Word and character error rates of greedy CTC predictions."""
from __future__ import annotations

import jiwer
import numpy as np

from .collator import LABEL_PAD


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus WER and CER; empty references are dropped (jiwer cannot score them)."""
    pairs = [(r, h) for r, h in zip(references, hypotheses) if r.strip()]
    if not pairs:
        return {"wer": float("nan"), "cer": float("nan")}
    refs, hyps = zip(*pairs)
    return {"wer": float(jiwer.wer(list(refs), list(hyps))), "cer": float(jiwer.cer(list(refs), list(hyps)))}


def argmax_logits(logits, labels):
    """Keep only the best token per frame during evaluation (far less memory than the logits)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def make_compute_metrics(tokenizer):
    """compute_metrics for Trainer: greedy CTC decode of predicted ids vs the label ids."""

    def compute_metrics(eval_pred) -> dict[str, float]:
        pred_ids = np.asarray(eval_pred.predictions)
        # Padding between batches of different widths arrives as -100 too.
        pred_ids = np.where(pred_ids == LABEL_PAD, tokenizer.pad_token_id, pred_ids)
        label_ids = np.where(eval_pred.label_ids == LABEL_PAD, tokenizer.pad_token_id, eval_pred.label_ids)
        hyps = tokenizer.batch_decode(pred_ids)
        refs = tokenizer.batch_decode(label_ids, group_tokens=False)
        return error_rates(refs, hyps)

    return compute_metrics
