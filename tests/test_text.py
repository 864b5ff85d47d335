"""Text meets a vocabulary in one form (common/text.py): NFC in training's vocabulary and LM, and in hotwords."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import lm as common_lm, modeldir, text  # noqa: E402

NFC = "le caf\u00e9 est pr\u00eat"  # é and ê as one code point each
NFD = "le cafe\u0301 est pre\u0302t"  # the same words, each accent a combining mark


def test_nfc_and_nfd_transcripts_give_one_vocabulary():
    assert NFC != NFD and text.normalize(NFD) == text.normalize(NFC) == NFC
    vocab = text.build_vocab([text.normalize(t) for t in (NFC, NFD, "CAFE\u0301")])
    assert "\u00e9" in vocab and "\u00ea" in vocab
    assert not {"\u0301", "\u0302"} & set(vocab)  # no combining accent as a character of its own
    # chars_to_ignore in either form removes the letter in either form (and not the plain e).
    assert text.normalize("caf\u00e9 cafe\u0301 de", "e\u0301") == "caf caf de"


def test_lm_unigrams_in_one_form(tmp_path):
    from train import lm

    model_dir = tmp_path / "model"
    modeldir.make_processor(text.build_vocab([NFC])).save_pretrained(model_dir)
    lm.build(lm.plan(2, 0.0, None), model_dir, train_texts=[NFC, NFD, NFD.upper()], chars_to_ignore="",
             log=lambda _: None)
    unigrams = (model_dir / "language_model" / "unigrams.txt").read_text(encoding="utf-8").split()
    assert "caf\u00e9" in unigrams and "pr\u00eat" in unigrams
    assert not any("\u0301" in w or "\u0302" in w for w in unigrams)


LABELS = ["", "<s>", "</s>", common_lm.UNK_LABEL, " ", *"acdefilnoprst\u00e9\u00ea"]


def test_hotwords_are_read_in_nfc():
    options = common_lm.parse_options({"hotwords": ["cafe\u0301", "pre\u0302t"]})
    assert options.hotwords == ("caf\u00e9", "pr\u00eat")
    common_lm.check_options(options, LABELS, has_lm=True)  # the model writes é: accepted


@pytest.mark.parametrize("word, token", [("<s>", "<s>"), ("the </s>", "</s>"), ("caf<s>e", "<s>"),
                                         (common_lm.UNK_LABEL, common_lm.UNK_LABEL)])
def test_special_tokens_are_refused_in_hotwords(word, token):
    with pytest.raises(common_lm.OptionError) as raised:
        common_lm.check_options(common_lm.parse_options({"hotwords": [word]}), LABELS, has_lm=True)
    assert f"hotwords[0] {word!r} contains {token!r}, a special token" in str(raised.value)
