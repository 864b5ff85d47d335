"""Word and character error rates (jiwer), as training reports them and the tests compute them for serving."""
from __future__ import annotations

import jiwer


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus WER and CER; empty references are dropped (jiwer cannot score them)."""
    pairs = [(r, h) for r, h in zip(references, hypotheses) if r.strip()]
    if not pairs:
        return {"wer": float("nan"), "cer": float("nan")}
    refs, hyps = zip(*pairs)
    return {"wer": float(jiwer.wer(list(refs), list(hyps))), "cer": float(jiwer.cer(list(refs), list(hyps)))}
