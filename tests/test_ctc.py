"""CTC greedy collapse on the device against the tokenizer's own decoding of the argmax ids."""
from __future__ import annotations

import json

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
    vocab = ctc.Vocabulary(tok, len(tok))
    g = torch.Generator().manual_seed(2)
    logits = _peaky_logits(g, 6, 300, len(tok), tok.pad_token_id)
    # transformers' offsets keep special tokens inside words; frames of them count as blank here.
    ids = logits.argmax(-1).masked_fill(torch.isin(logits.argmax(-1), torch.tensor(vocab.dropped)), tok.pad_token_id)
    step = 0.02
    for seq, row in zip(ctc.collapse(ids, tok.pad_token_id), ids):
        ref = tok.decode(row, output_word_offsets=True)
        want = [
            {"word": w["word"], "start": round(w["start_offset"] * step, 3), "end": round(w["end_offset"] * step, 3)}
            for w in ref.word_offsets
        ]
        got = ctc.word_offsets(vocab, seq, step)
        assert got == want
        assert " ".join(w["word"] for w in got) == " ".join(ref.text.split())


def _strip_special(tok, text: str) -> str:
    for special in sorted(set(tok.all_special_tokens) - {tok.word_delimiter_token}, key=len, reverse=True):
        text = text.replace(special, "")
    return text.strip()


@pytest.mark.parametrize("kind", ["wav2vec2-base", "xls-r", "unispeech", "wavlm", "blog"])
def test_published_vocabularies_decode_as_transformers_without_special_tokens(kind, checkpoint_dirs):
    """<pad>/<s>/</s>/<unk> upper case, [PAD]/[UNK], a literal space for "|", do_lower_case: the text is
    batch_decode's with the special tokens removed, and the words are the text's words."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(modeldir.find(checkpoint_dirs(kind)))
    head = json.loads((modeldir.find(checkpoint_dirs(kind)) / "config.json").read_text())["vocab_size"]
    vocab = ctc.Vocabulary(tok, head)
    g = torch.Generator().manual_seed(3)
    logits = _peaky_logits(g, 8, 200, head, tok.pad_token_id)
    logits[:, ::7, list(vocab.dropped)] += 4.0  # special tokens emitted often
    want = [_strip_special(tok, t) for t in tok.batch_decode(logits.argmax(-1))]
    assert any(s in t for t in tok.batch_decode(logits.argmax(-1)) for s in tok.all_special_tokens if s != "|")
    seqs = ctc.greedy(logits, vocab.blank_id, drop=vocab.dropped)
    got = [vocab.text(s) for s in seqs]
    assert got == want
    for text, seq in zip(got, seqs):
        assert [w for w, _, _ in vocab.words(seq)] == text.split()
        assert not any(s in text for s in tok.all_special_tokens if s != "|")
    assert len(vocab.labels()) == head and vocab.labels()[vocab.blank_id] == ""


def test_greedy_stream_equals_decoding_the_joined_frames(processor):
    """Pieces cut anywhere (inside a token's run, inside a word, on a space) decode to the same words."""
    from serve.decoding import GreedyDecoder

    tok = processor.tokenizer
    vocab = ctc.Vocabulary(tok, len(tok))
    g = torch.Generator().manual_seed(4)
    for row in _peaky_logits(g, 6, 400, len(tok), tok.pad_token_id):
        whole = GreedyDecoder().decode(row, vocab, words=True).words
        cuts = sorted(torch.randint(1, 399, (5,), generator=g).tolist())
        stream, words = GreedyDecoder().stream(vocab), []
        for a, b in zip([0] + cuts, cuts + [400]):
            words += stream.push(row[a:b])
        words += stream.finish()
        assert words == whole


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
