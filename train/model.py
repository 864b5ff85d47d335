"""The model to fine-tune: from the `model` channel or `model_name`, with a CTC head sized to the vocab.

A source directory with config.json but no weights is initialised randomly from that config (how the
quickstart, tests and benchmarks train the tiny model with no download). Weights load from safetensors
only and remote code is never trusted.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from common import modeldir

from .failure import TrainingError


def _overrides(hp, vocab_size: int, pad_token_id: int) -> dict:
    return dict(vocab_size=vocab_size, pad_token_id=pad_token_id, ctc_loss_reduction="mean",
                ctc_zero_infinity=hp.ctc_zero_infinity, mask_time_prob=hp.mask_time_prob,
                mask_feature_prob=hp.mask_feature_prob, layerdrop=hp.layerdrop,
                hidden_dropout=hp.hidden_dropout, attention_dropout=hp.attention_dropout,
                activation_dropout=hp.activation_dropout, feat_proj_dropout=hp.feat_proj_dropout,
                final_dropout=hp.final_dropout)


def _same_vocab(source: Path, vocab: dict[str, int]) -> bool:
    try:
        return json.loads((source / "vocab.json").read_text()) == vocab
    except (OSError, ValueError):
        return False


def load(source: str, hp, vocab: dict[str, int], vocab_size: int, pad_token_id: int,
         log=print) -> tuple[Wav2Vec2ForCTC, bool]:
    """(model, pretrained): `source` is a local directory or a hub id; vocab_size = len(tokenizer)."""
    kwargs = _overrides(hp, vocab_size, pad_token_id)
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TrainingError(f"model source {path} has no config.json: give a directory written by "
                                f"save_pretrained (model channel or model_name)")
        if not modeldir.has_weights(path):
            if any(path.glob("*.bin")):
                raise TrainingError(f"model source {path} has only PyTorch .bin weights: weights are loaded from "
                                    f"safetensors only; re-save it with save_pretrained(safe_serialization=True)")
            config = Wav2Vec2Config.from_pretrained(path, local_files_only=True, **kwargs)
            log(f"[model] {path} has config.json but no weights: initialising RANDOMLY from its config "
                f"(hidden {config.hidden_size}, {config.num_hidden_layers} layers)")
            return Wav2Vec2ForCTC(config), False
    try:
        model = Wav2Vec2ForCTC.from_pretrained(
            source, use_safetensors=True, trust_remote_code=False, ignore_mismatched_sizes=True,
            local_files_only=path.is_dir(), **kwargs)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot load model {source!r}: {str(exc).splitlines()[0]}; give a `model` channel "
                            f"with a save_pretrained directory (safetensors) or a reachable hub id in model_name") \
            from None
    if path.is_dir() and _same_vocab(path, vocab):
        log(f"[model] loaded {source}; its vocab.json matches, keeping its CTC head")
    else:
        # A new CTC head: the old one (if any) maps to another vocabulary.
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, model.config.initializer_range)
            model.lm_head.bias.zero_()
        log(f"[model] loaded {source}; new CTC head for {vocab_size} tokens")
    return model, True

