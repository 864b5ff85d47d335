"""Held-out scoring for the accuracy benchmarks: a manifest.jsonl channel in, corpus CER/WER out.

Every clip is transcribed alone (batch 1), as the serving program does on a CPU, so the figure is what a
deployed model gets, whatever batching, padding or masking the training program's own evaluation used.
`score_dir` goes through serve.model.ServingModel itself (its normalisation, its CPU preparation, its CTC
decode); `score_model` runs a model in memory the same way, for loops that evaluate while they train.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from common import audio, ctc, text


def _rows(channel: Path) -> list[dict]:
    return [json.loads(line) for line in (channel / "manifest.jsonl").read_text().splitlines() if line.strip()]


def read_manifest(channel: Path, chars_to_ignore: str = text.DEFAULT_CHARS_TO_IGNORE) -> list[tuple[np.ndarray, str]]:
    """(16 kHz float32 samples, normalised transcript) for every line of channel/manifest.jsonl."""
    rows = _rows(channel)
    return [(audio.load_file(channel / r["audio"]), text.normalize(r["text"], chars_to_ignore)) for r in rows]


def read_voices(channel: Path) -> list[str]:
    """The `voice` field of each line of channel/manifest.jsonl (local_test/make_dataset.py writes it), in
    read_manifest's order; "" where a line has none."""
    return [str(r.get("voice", "")) for r in _rows(channel)]


def cer_by_group(references: list[str], hypotheses: list[str], groups: list[str]) -> dict[str, float]:
    """Corpus CER within each group (e.g. voice) of clips, in the order groups first appear."""
    return {g: error_rates([r for r, k in zip(references, groups) if k == g],
                           [h for h, k in zip(hypotheses, groups) if k == g])["cer"] for g in dict.fromkeys(groups)}


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    from train.metrics import error_rates as rates  # the training program's own corpus WER/CER (jiwer)

    return rates(references, hypotheses)


@torch.inference_mode()
def score_model(model, tokenizer, clips: list[tuple[np.ndarray, str]], *, attention_mask: bool = False) -> dict:
    """Corpus CER/WER of `model` (any mode; put back as it was) on clips transcribed one at a time, and the
    mean per-clip CTC loss (the model's own, mean reduction), which still separates runs while CER is ~1.
    attention_mask: pass an all-ones mask (layer-norm feature encoders take one; it changes nothing for a
    single unpadded clip, but the model's code path is the serving one)."""
    was_training = model.training
    model.eval()
    hyps, losses = [], []
    for samples, reference in clips:
        x = torch.from_numpy(audio.normalize(samples))[None, :]
        kwargs = {"attention_mask": torch.ones_like(x, dtype=torch.long)} if attention_mask else {}
        out = model(x.to(next(model.parameters()).dtype), labels=_labels(tokenizer, reference), **kwargs)
        hyps.append(ctc.decode_text(tokenizer, ctc.greedy(out.logits.float(), tokenizer.pad_token_id)[0]))
        losses.append(float(out.loss))
    model.train(was_training)
    return {**error_rates([r for _, r in clips], hyps), "loss": float(np.mean(losses)), "clips": len(clips)}


def _labels(tokenizer, reference: str) -> torch.Tensor:
    return torch.tensor([tokenizer(reference).input_ids])


def score_dir(model_dir: Path, clips: list[tuple[np.ndarray, str]], *, bf16: bool = False) -> dict:
    """Corpus CER/WER of a saved model directory through the serving program's own ServingModel (greedy,
    fp32 or bf16, one clip per request as on a CPU), and the mean per-clip CTC loss of the same model. When
    the directory has an LM (language_model/, as train/lm.py writes it) also `wer_lm`/`cer_lm`: the same
    clips decoded as the server does by default then (beam search + LM, one decoding process). "hypotheses":
    the greedy transcripts, in the clips' order."""
    import time

    import transformers

    from common import modeldir
    from serve import contract
    from serve.model import ServingModel, beam_search
    from serve.options import Options

    transformers.logging.disable_progress_bar()
    checkpoint = modeldir.load_checkpoint(Path(model_dir))
    beam, _ = beam_search(checkpoint, 1)
    has_lm = beam is not None and beam.has_lm
    served = ServingModel(checkpoint, device=torch.device("cpu"),
                          dtype=torch.bfloat16 if bf16 else torch.float32, beam=beam).start()
    hyps, hyps_lm, losses = [], [], []
    try:
        for samples, reference in clips:
            deadline = time.monotonic() + 600
            hyps.append(served.transcribe([contract.Clip(samples, Options(decoder="greedy"))],
                                          deadline=deadline)[0].text)
            if has_lm:
                hyps_lm.append(served.transcribe([contract.Clip(samples, Options(decoder="beam"))],
                                                 deadline=deadline)[0].text)
            with torch.inference_mode():
                x = torch.from_numpy(audio.normalize(samples) if served.normalize else samples)[None, :]
                out = served.model(x.to(served.dtype), labels=_labels(checkpoint.tokenizer, reference))
                losses.append(float(out.loss))
    finally:
        served.close()
    references = [r for _, r in clips]
    figures = {**error_rates(references, hyps), "loss": float(np.mean(losses)), "clips": len(clips),
               "hypotheses": hyps}
    if has_lm:
        lm_rates = error_rates(references, hyps_lm)
        figures.update(wer_lm=lm_rates["wer"], cer_lm=lm_rates["cer"])
    return figures
