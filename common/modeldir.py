"""A self-contained Wav2Vec2 CTC model directory: what training writes and serving loads.

Weights are read only from safetensors and no remote code is ever trusted.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from transformers import (
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
)

from .audio import TARGET_RATE
from .text import PAD, UNK, WORD_DELIMITER

WEIGHTS_FILE = "model.safetensors"


def has_weights(path: str | Path) -> bool:
    p = Path(path)
    return (p / WEIGHTS_FILE).is_file() or (p / "model.safetensors.index.json").is_file()


def make_processor(vocab: dict[str, int], *, attention_mask: bool = True) -> Wav2Vec2Processor:
    """Character tokenizer over `vocab` plus a 16 kHz feature extractor."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
        tokenizer = Wav2Vec2CTCTokenizer(
            str(vocab_file), unk_token=UNK, pad_token=PAD, word_delimiter_token=WORD_DELIMITER
        )
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=TARGET_RATE, padding_value=0.0, do_normalize=True,
        return_attention_mask=attention_mask,
    )
    return Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def tiny_config(vocab_size: int, pad_token_id: int, **overrides) -> Wav2Vec2Config:
    """A small Wav2Vec2 (hidden 192, 4 layers, conv dims 128) that trains on a CPU in minutes."""
    kwargs = dict(
        vocab_size=vocab_size, pad_token_id=pad_token_id,
        hidden_size=192, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768,
        conv_dim=(128,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        feat_extract_norm="layer", do_stable_layer_norm=True,
        num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=4,
        mask_time_prob=0.05, layerdrop=0.0, ctc_loss_reduction="mean", ctc_zero_infinity=True,
    )
    kwargs.update(overrides)
    return Wav2Vec2Config(**kwargs)


def save(model_dir: str | Path, model: Wav2Vec2ForCTC, processor: Wav2Vec2Processor) -> None:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    processor.save_pretrained(model_dir)
    # transformers writes the weights 0600; SageMaker keeps file modes when it unpacks model.tar.gz, so a
    # serving process that is not root could not read them.
    for f in model_dir.iterdir():
        if f.is_file():
            f.chmod(0o644)


def load(model_dir: str | Path, **model_kwargs) -> tuple[Wav2Vec2ForCTC, Wav2Vec2Processor]:
    """Load model and processor from a local directory (safetensors only, no remote code)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: not a Hugging Face model directory")
    if not has_weights(model_dir):
        raise FileNotFoundError(f"{model_dir} has no {WEIGHTS_FILE}: weights are loaded from safetensors only")
    processor = Wav2Vec2Processor.from_pretrained(model_dir, local_files_only=True)
    model = Wav2Vec2ForCTC.from_pretrained(
        model_dir, use_safetensors=True, local_files_only=True, **model_kwargs
    )
    return model, processor
