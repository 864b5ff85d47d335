"""CTC greedy collapse on the device against the tokenizer's own decoding of the argmax ids."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common import ctc, modeldir


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    _, proc = modeldir.load(tiny_model_dir)
    return proc


def _peaky_logits(generator, batch, frames, vocab, blank_id):
    """Random logits where blanks and repeats are frequent, as in a trained CTC model's output."""
    logits = torch.randn(batch, frames, vocab, generator=generator)
    logits[:, :, blank_id] += 1.5
    # Repeat some frames so that runs of the same token occur.
    repeat = torch.rand(batch, frames, generator=generator) < 0.4
    for t in range(1, frames):
        logits[:, t][repeat[:, t]] = logits[:, t - 1][repeat[:, t]]
    return logits


def test_collapse_equals_batch_decode_on_random_logits(processor):
    tok = processor.tokenizer
    g = torch.Generator().manual_seed(0)
    logits = _peaky_logits(g, 16, 200, len(tok), tok.pad_token_id)
    got = [ctc.decode_text(tok, s) for s in ctc.greedy(logits, tok.pad_token_id)]
    want = processor.batch_decode(logits.argmax(-1))
    assert got == want
    # Non-trivial: blanks separate equal characters somewhere, and words exist.
    assert any(" " in t for t in want)
    assert len(set(want)) == len(want)


def test_collapse_respects_lengths(processor):
    tok = processor.tokenizer
    g = torch.Generator().manual_seed(1)
    logits = _peaky_logits(g, 4, 120, len(tok), tok.pad_token_id)
    lengths = torch.tensor([120, 80, 31, 1])
    got = [ctc.decode_text(tok, s) for s in ctc.greedy(logits, tok.pad_token_id, lengths)]
    want = [processor.decode(logits[i, : lengths[i]].argmax(-1)) for i in range(4)]
    assert got == want


def test_word_offsets_match_tokenizer(processor):
    tok = processor.tokenizer
    g = torch.Generator().manual_seed(2)
    logits = _peaky_logits(g, 6, 300, len(tok), tok.pad_token_id)
    ids = logits.argmax(-1)
    step = 0.02
    for seq, row in zip(ctc.collapse(ids, tok.pad_token_id), ids):
        ref = tok.decode(row, output_word_offsets=True)
        want = [
            {"word": w["word"], "start": round(w["start_offset"] * step, 3), "end": round(w["end_offset"] * step, 3)}
            for w in ref.word_offsets
        ]
        got = ctc.word_offsets(tok, seq, step)
        assert got == want
        assert " ".join(w["word"] for w in got) == " ".join(ref.text.split())


def test_tiny_model_transcripts_equal_batch_decode(processor, tiny_model_dir, synthetic_data):
    from common.audio import load_file

    model, _ = modeldir.load(tiny_model_dir)
    model.eval()
    clips = [load_file(p) for p in sorted((synthetic_data / "test" / "audio").glob("*.wav"))[:3]]
    inputs = processor(clips, sampling_rate=16_000, return_tensors="pt", padding=True)
    with torch.inference_mode():
        logits = model(inputs.input_values, attention_mask=inputs.attention_mask).logits
    lengths = model._get_feat_extract_output_lengths(inputs.attention_mask.sum(-1))
    got = [ctc.decode_text(processor.tokenizer, s) for s in ctc.greedy(logits, processor.tokenizer.pad_token_id, lengths)]
    want = [processor.decode(logits[i, : lengths[i]].argmax(-1)) for i in range(len(clips))]
    assert got == want
    assert all(want)


def test_frame_seconds_is_total_conv_stride_over_16k(processor):
    cfg = modeldir.tiny_config(len(processor.tokenizer), processor.tokenizer.pad_token_id)
    assert ctc.frame_seconds(cfg) == pytest.approx(np.prod(cfg.conv_stride) / 16_000) == pytest.approx(0.02)


def test_empty_frames():
    assert ctc.collapse(torch.zeros(2, 0, dtype=torch.long), 0) == [ctc.Collapsed([], [], [])] * 2
