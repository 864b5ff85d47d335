"""Beam search + KenLM (common/lm.py): equal to pyctcdecode and Wav2Vec2ProcessorWithLM, hotwords, options.

The LM directory is made here as the ecosystem makes one: lmplz on a few sentences, pyctcdecode's
build_ctcdecoder, Wav2Vec2ProcessorWithLM.save_pretrained.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import lm, modeldir, text  # noqa: E402

SENTENCES = [
    "the cat runs to the river", "the dog walks with the cat", "five red birds fly over the hill",
    "a very old king reads a book", "the queen gives bread to the farmer", "seven cats sleep near the door",
    "the farmer sees a big cat today", "we walk home in the evening",
]


def spell(sentence: str, labels: list[str], confusions: dict[str, str] | None = None) -> np.ndarray:
    """Logits that spell `sentence` (two frames per character, the second blank), each confused letter
    heard a little louder than the right one: greedy decoding writes the confusion."""
    confusions = confusions or {}
    index = {label: i for i, label in enumerate(labels)}
    blank = index[""]
    frames = []
    for c in sentence:
        row = np.zeros(len(labels), dtype=np.float32)
        if c in confusions:
            row[index[confusions[c]]] = 6.0
            row[index[c]] = 5.0
        else:
            row[index[c]] = 6.0
        frames.append(row)
        gap = np.zeros(len(labels), dtype=np.float32)
        gap[blank] = 6.0
        frames.append(gap)
    return np.stack(frames)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> Path:
    """A Wav2Vec2ProcessorWithLM directory with a 3-gram over SENTENCES (ARPA, as most checkpoints ship)."""
    from pyctcdecode import build_ctcdecoder
    from transformers import Wav2Vec2ProcessorWithLM

    from train.lm import estimate_arpa

    work = tmp_path_factory.mktemp("lm_work")
    arpa = estimate_arpa(SENTENCES, 3, work)
    processor = modeldir.make_processor(text.build_vocab(SENTENCES + ["rafi ravi"]))
    vocab = processor.tokenizer.get_vocab()
    decoder = build_ctcdecoder(sorted(vocab, key=vocab.get), kenlm_model_path=str(arpa))
    out = tmp_path_factory.mktemp("with_lm")
    Wav2Vec2ProcessorWithLM(feature_extractor=processor.feature_extractor, tokenizer=processor.tokenizer,
                            decoder=decoder).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def decoder(lm_dir) -> lm.BeamDecoder:
    return lm.load(lm_dir)


def random_logits(labels, frames: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(frames, len(labels))) * 4).astype(np.float32)


def test_layout_is_found_and_loaded(lm_dir, decoder):
    files = lm.find(lm_dir)
    assert files.kenlm.suffix == ".arpa" and files.unigrams.name == "unigrams.txt"
    assert decoder.has_lm and decoder.order == 3 and (decoder.alpha, decoder.beta) == (0.5, 1.5)
    assert decoder.labels[decoder.labels.index(" ")] == " " and "" in decoder.labels


@pytest.mark.parametrize("options", [
    lm.DecodeOptions(),
    lm.DecodeOptions(beam_width=4, alpha=0.3, beta=0.5),
    lm.DecodeOptions(beam_width=64, alpha=1.2, beta=-0.5, hotwords=("ravi", "old king"), hotword_weight=7.0),
], ids=["defaults", "narrow", "wide+hotwords"])
def test_equals_pyctcdecode_and_wav2vec2_processor_with_lm(lm_dir, decoder, options):
    from pyctcdecode import BeamSearchDecoderCTC
    from transformers import Wav2Vec2ProcessorWithLM

    processor = Wav2Vec2ProcessorWithLM.from_pretrained(str(lm_dir))
    reference = BeamSearchDecoderCTC.load_from_dir(str(lm_dir))
    clips = [random_logits(decoder.labels, 80, seed) for seed in range(3)]
    clips.append(spell("the dog sees rafi near the river", decoder.labels, {"c": "k", "v": "f"}))
    ours = decoder.decode_batch(clips, options, seconds_per_frame=0.02)
    alpha = decoder.alpha if options.alpha is None else options.alpha
    beta = decoder.beta if options.beta is None else options.beta
    for x, got in zip(clips, ours):
        want = processor.decode(x, beam_width=options.beam_width, alpha=alpha, beta=beta,
                                hotwords=list(options.hotwords) or None, hotword_weight=options.hotword_weight,
                                output_word_offsets=True)
        assert got.text == want.text
        assert got.logit_score == want.logit_score and got.score == want.lm_score
        assert got.words == [{"word": w["word"], "start": round(w["start_offset"] * 0.02, 3),
                              "end": round(w["end_offset"] * 0.02, 3)} for w in want.word_offsets]
        reference.reset_params(alpha=alpha, beta=beta)
        beams = reference.decode_beams(x, beam_width=options.beam_width, hotwords=list(options.hotwords) or None,
                                       hotword_weight=options.hotword_weight)
        assert (got.text, got.logit_score, got.score) == (beams[0][0], beams[0][3], beams[0][4])
    assert any(t.text for t in ours)


def test_the_lm_corrects_what_greedy_misspells(decoder):
    heard = spell("the farmer sees a big cat today", decoder.labels, {"c": "k", "b": "p"})
    ids = heard.argmax(-1)
    greedy = "".join(decoder.labels[i] for i, prev in zip(ids, [-1, *ids[:-1]]) if i != prev)
    assert " ".join(greedy.split()) == "the farmer sees a pig kat today"
    assert decoder.decode(heard).text == "the farmer sees a big cat today"
    assert decoder.decode(heard, lm.DecodeOptions(alpha=0.0, beta=0.0)).text != "the farmer sees a big cat today"


def test_hotwords_boost_the_words_they_name(decoder):
    heard = spell("the dog sees rafi near the river", decoder.labels, {"f": "v"})  # "f" heard as "v"
    assert decoder.decode(heard).text == "the dog sees ravi near the river"
    boosted = decoder.decode(heard, lm.DecodeOptions(hotwords=("rafi",)))
    assert boosted.text == "the dog sees rafi near the river"
    assert decoder.decode(heard, lm.DecodeOptions(hotwords=("rafi",), hotword_weight=0.0)).text == \
        "the dog sees ravi near the river"


def test_word_timestamps_match_the_greedy_path(lm_dir, decoder):
    """On logits greedy reads without doubt, beam search (with or without the LM) finds the same words at
    the same times as common.ctc.word_offsets."""
    import torch
    from transformers import Wav2Vec2CTCTokenizer

    from common import ctc

    tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(str(lm_dir))
    x = spell("seven cats sleep near the door", decoder.labels)
    x[3:9] = np.roll(x[3:9], 1, axis=0)  # runs of more than one frame, and blanks inside a word
    seq = ctc.greedy(torch.from_numpy(x)[None], blank_id=tokenizer.pad_token_id)[0]
    want = ctc.word_offsets(ctc.Vocabulary(tokenizer, decoder.vocab_size), seq, 0.02)
    got = decoder.decode(x, seconds_per_frame=0.02)
    assert got.text == ctc.decode_text(tokenizer, seq) and got.words == want


def test_alphabet_without_lm_and_no_decoder_files(lm_dir, tmp_path):
    assert lm.find(tmp_path) is None
    bare = tmp_path / "bare"
    shutil.copytree(lm_dir, bare)
    shutil.rmtree(bare / "language_model")
    assert lm.find(bare).kenlm is None
    beam_only = lm.load(bare)
    assert not beam_only.has_lm and beam_only.labels == lm.load(lm_dir).labels
    with pytest.raises(lm.OptionError, match="has none"):
        beam_only.decode(random_logits(beam_only.labels, 10, 0), lm.DecodeOptions(alpha=1.0))
    (bare / "alphabet.json").unlink()
    assert lm.find(bare) is None and not lm.load(bare).has_lm  # alphabet from vocab.json


def test_broken_layouts_are_refused(lm_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(lm_dir, broken)
    (broken / "language_model" / "extra.arpa").write_text("x")
    with pytest.raises(lm.LMError, match="exactly attrs.json, unigrams.txt and one KenLM file"):
        lm.find(broken)
    (broken / "language_model" / "extra.arpa").unlink()
    alphabet = json.loads((broken / "alphabet.json").read_text())
    alphabet["labels"][1], alphabet["labels"][2] = alphabet["labels"][2], alphabet["labels"][1]
    (broken / "alphabet.json").write_text(json.dumps(alphabet))
    with pytest.raises(lm.LMError, match="does not match the tokenizer's vocabulary.*first difference at id 1"):
        lm.load(broken)
    (broken / "alphabet.json").unlink()
    with pytest.raises(lm.LMError, match="no alphabet.json"):
        lm.find(broken)


@pytest.mark.parametrize("values, message", [
    ({"decoder": "beam"}, "unknown decoding option decoder; valid: beam_width, alpha"),
    ({"beam_width": 0}, "beam_width must be a whole number from 1 to 256, got 0"),
    ({"beam_width": "257"}, "beam_width must be a whole number from 1 to 256, got 257"),
    ({"beam_width": "wide"}, "beam_width must be a whole number from 1 to 256, got 'wide'"),
    ({"beam_width": 8.5}, "beam_width must be a whole number"),
    ({"beam_width": True}, "beam_width must be a whole number"),
    ({"alpha": "nan"}, "alpha must be a number from 0 to 10, got 'nan'"),
    ({"alpha": -0.1}, "alpha must be a number from 0 to 10"),
    ({"beta": "11"}, "beta must be a number from -10 to 10"),
    ({"hotword_weight": 1000}, "hotword_weight must be a number from 0 to 100"),
    ({"hotwords": ["w"] * 101}, "too many hotwords: 101, at most 100"),
    ({"hotwords": ["x" * 51]}, "hotwords\\[0\\] is 51 characters long, at most 50"),
    ({"hotwords": ["ok", "  "]}, "hotwords\\[1\\] is empty"),
    ({"hotwords": ["ok", 3]}, "hotwords\\[1\\] must be a string"),
    ({"hotwords": {"a": 1}}, "hotwords must be a list of strings"),
])
def test_bad_options_are_refused_by_name(values, message):
    with pytest.raises(lm.OptionError, match=message):
        lm.parse_options(values)


def test_options_from_strings_and_model_specific_checks(decoder):
    options = lm.parse_options({"beam_width": "8", "alpha": "0.7", "beta": "-1", "hotwords": "ravi, old king",
                                "hotword_weight": "4"})
    assert options == lm.DecodeOptions(beam_width=8, alpha=0.7, beta=-1.0, hotwords=("ravi", "old king"),
                                       hotword_weight=4.0)
    with pytest.raises(lm.OptionError, match=r"hotwords\[0\] 'Ravi' has characters the model cannot write: "
                                             r"'R' \(the model writes lower-case\)"):
        decoder.check(lm.DecodeOptions(hotwords=("Ravi",)))
    with pytest.raises(ValueError, match=r"logits\[0\] must be frames x \d+"):
        decoder.decode(np.zeros((5, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        decoder.decode(np.full((5, decoder.vocab_size), np.nan, dtype=np.float32))
    assert decoder.decode(np.zeros((0, decoder.vocab_size), dtype=np.float32)).text == ""


def test_process_pool_loads_once_per_process_and_decodes_alike(lm_dir, decoder):
    clips = [random_logits(decoder.labels, 50, seed) for seed in range(4)]
    options = lm.DecodeOptions(beam_width=8, hotwords=("ravi",))
    with lm.make_pool(lm_dir, processes=1) as pool:
        first = pool.submit(lm.pool_info).result(timeout=120)
        got = pool.submit(lm.pool_decode, clips, options, 0.02).result(timeout=120)
        again = pool.submit(lm.pool_info).result(timeout=120)
    assert first["has_lm"] and first["loads"] == again["loads"] == 1 and first["pid"] == again["pid"]
    want = decoder.decode_batch(clips, options, 0.02)
    assert [(t.text, t.words, t.score) for t in got] == [(t.text, t.words, t.score) for t in want]


def test_spelling_of_unigrams_by_an_alphabet():
    """The check serving and training make of an LM's words (MIN_SPELLABLE): special tokens spell nothing
    (an upper-case vocabulary's <s> does not make 's' writable), KenLM's own entries are not words."""
    upper = ["", "<s>", "</s>", "⁇", " ", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ'"]
    found = lm.spelling(["<s>", "</s>", "<unk>", "sss", "the", "cat"], upper)
    assert (found.words, found.spellable, found.outside, found.case) == (3, 0, "acehst", True)
    with pytest.raises(lm.LMError, match=r"3 of 3 words \(100%\) .*upper-case and the model lower-case"):
        lm.check_spelling(["sss", "the", "cat"], upper)
    assert lm.check_spelling(["THE", "CAT", "ÜBER"], upper).fraction == pytest.approx(2 / 3)
    with pytest.raises(lm.LMError, match=r"2 of 3 words .*characters 'ÖÜ'; at least 50%"):
        lm.check_spelling(["THE", "ÜBER", "ÖL"], upper)
    assert lm.spelling([], upper).fraction == 1.0


def test_a_literal_space_vocabulary_gets_one_word_gap_and_decodes_either_space_column(tmp_path):
    """A fairseq-style vocab.json (a literal " " and no "|"; the tokenizer adds "|" as its delimiter) has two
    columns that mean a word gap. Both became " " and pyctcdecode refused the duplicate, so the LM step of
    training and the server fell back to greedy decoding. The delimiter is the word gap, the literal space's
    column is folded into it: a model that writes either column gets its words split."""
    from pyctcdecode import build_ctcdecoder

    from checkpoints import VOCAB_SPACE
    from train.lm import estimate_arpa

    processor = modeldir.make_processor(VOCAB_SPACE)
    processor.save_pretrained(str(tmp_path))
    labels = lm.tokenizer_labels(tmp_path)
    assert labels.count(" ") == 1 and labels[processor.tokenizer.convert_tokens_to_ids("|")] == " "
    assert labels[VOCAB_SPACE[" "]] == lm.SPACE_TWIN
    assert lm.SPACE_TWIN not in lm.alphabet_letters(labels)
    arpa = estimate_arpa(SENTENCES, 3, tmp_path / "work")
    decoder = build_ctcdecoder(labels, kenlm_model_path=str(arpa))
    decoder.save_to_dir(str(tmp_path))
    beam = lm.load(tmp_path)
    assert beam.has_lm
    sentence = "the cat runs to the river"
    delimiter = spell(sentence, labels)
    literal = spell(sentence.replace(" ", lm.SPACE_TWIN), labels)
    for logits in (delimiter, literal):
        assert beam.decode(logits).text == sentence
    with pytest.raises(lm.OptionError, match="cannot write"):
        beam.decode(delimiter, lm.DecodeOptions(hotwords=("a" + lm.SPACE_TWIN + "b",)))
