"""Model directories for the benchmarks: wav2vec2-base-sized or tiny, random weights, saved like training."""
from __future__ import annotations

import os
from pathlib import Path

from common import modeldir, text

# Lower-case letters, apostrophe and space: the synthetic set's characters.
ALPHABET = "abcdefghijklmnopqrstuvwxyz' "


def config(size: str, vocab_size: int, pad_token_id: int):
    from transformers import Wav2Vec2Config

    if size == "base":
        # Wav2Vec2Config() defaults are wav2vec2-base: hidden 768, 12 layers, group-norm feature encoder.
        return Wav2Vec2Config(vocab_size=vocab_size, pad_token_id=pad_token_id, ctc_loss_reduction="mean")
    if size == "tiny":
        return modeldir.tiny_config(vocab_size, pad_token_id)
    raise ValueError(f"model size {size!r}: use base or tiny")


def build(size: str):
    """(model in eval mode, processor): random weights from a fixed seed."""
    import torch
    from transformers import Wav2Vec2ForCTC

    torch.manual_seed(0)
    vocab = text.build_vocab([ALPHABET])
    probe = modeldir.make_processor(vocab)
    cfg = config(size, len(probe.tokenizer), probe.tokenizer.pad_token_id)
    # As training saves it: layer-norm feature encoders take an attention mask, group-norm ones do not.
    processor = modeldir.make_processor(vocab, attention_mask=cfg.feat_extract_norm == "layer")
    model = Wav2Vec2ForCTC(cfg).eval()
    # A trained CTC head never emits the tokenizer's special tokens (<s>, </s>, [UNK]); random weights do, and
    # transformers' decoders disagree on them (batch_decode keeps them, the ASR pipeline drops them before
    # merging repeats, our server after), which would make the systems' transcripts differ for no reason the
    # benchmarks measure.
    with torch.no_grad():
        for i in special_ids(processor.tokenizer, cfg.vocab_size):
            model.lm_head.bias[i] = -100.0
    return model, processor


def special_ids(tokenizer, size: int) -> tuple[int, ...]:
    """Ids of the head's outputs that never reach a transcript (common.ctc.Vocabulary.dropped)."""
    from common.ctc import Vocabulary

    return Vocabulary(tokenizer, size).dropped


def without_special_tokens(text: str, tokenizer, size: int) -> str:
    """`text` from transformers' batch_decode less the special tokens' strings, as our server writes it:
    the benchmarks compare systems on what they transcribe, not on how they print tokens no transcript keeps."""
    for i in special_ids(tokenizer, size):
        text = text.replace(tokenizer.convert_ids_to_tokens(i), "")
    return " ".join(text.split())


def save(out: Path, size: str) -> Path:
    """Write (once) a model directory of this size; files world-readable for containers' users."""
    out = Path(out)
    if not (out / "config.json").is_file():
        model, processor = build(size)
        modeldir.save(out, model, processor)
        for f in out.iterdir():
            os.chmod(f, 0o644)
        os.chmod(out, 0o755)
    return out
