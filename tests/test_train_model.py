"""train.model.load: fine-tuning starts from every architecture serving supports, with serving's loading rules."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

import checkpoints
from common import modeldir
from train.failure import TrainingError
from train.model import load

HP = SimpleNamespace(ctc_zero_infinity=True, mask_time_prob=0.05, mask_feature_prob=0.0, layerdrop=0.1,
                     hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                     final_dropout=0.0)
VOCAB = {c: i for i, c in enumerate("abcdefghij|")} | {"[UNK]": 11, "[PAD]": 12}


def _load(source, vocab=VOCAB, pad="[PAD]", size=None):
    lines = []
    size = len(vocab) + 2 if size is None else size
    model, pretrained = load(str(source), HP, vocab, size, vocab[pad], log=lines.append)
    return model, pretrained, "\n".join(lines)


def _same_encoder(model, source_dir) -> bool:
    ref = modeldir.load_checkpoint(source_dir).model
    base, ref_base = modeldir.base_model(model).state_dict(), modeldir.base_model(ref).state_dict()
    return base.keys() == ref_base.keys() and all(torch.equal(base[k], ref_base[k]) for k in base)


@pytest.mark.parametrize("kind", [k for k in checkpoints.KINDS if k != "mms"])
def test_every_architecture_is_a_starting_point(kind, checkpoint_dirs):
    root = checkpoint_dirs(kind)
    model, pretrained, log = _load(root)
    model_type = checkpoints.KINDS[kind][0] if checkpoints.KINDS[kind] else "wav2vec2"
    assert type(model).__name__ == modeldir.SUPPORTED[model_type]
    assert pretrained and "new CTC head for 15 tokens" in log
    assert model.lm_head.out_features == 15 and model.config.pad_token_id == 12
    assert model.config.ctc_loss_reduction == "mean" and model.config.mask_time_prob == 0.05
    assert _same_encoder(model, root)
    if kind == "blog":
        assert "pytorch_model.bin read with torch's weights_only unpickler" in log
        assert not list(root.rglob("UNPICKLED"))


def test_a_pretrained_base_starts_with_a_new_head(tmp_path):
    d = checkpoints.build_refused("pretrained-base", tmp_path / "base")
    model, pretrained, log = _load(d)
    assert type(model).__name__ == "Wav2Vec2ForCTC" and pretrained
    assert "weights of other heads not used (project_hid, project_q, quantizer)" in log


def test_hubert_weights_under_a_wav2vec2_config_are_refused(tmp_path):
    d = checkpoints.build_refused("hubert-weights-wav2vec2-config", tmp_path / "bad")
    with pytest.raises(TrainingError, match="holds a 'hubert' model"):
        _load(d)


def test_a_config_without_weights_starts_randomly_in_its_own_architecture(tmp_path, checkpoint_dirs):
    d = tmp_path / "config_only"
    d.mkdir()
    shutil.copy(checkpoint_dirs("sew-d") / "config.json", d / "config.json")
    model, pretrained, log = _load(d)
    assert type(model).__name__ == "SEWDForCTC" and not pretrained
    assert "RANDOMLY" in log and "sew-d has no layerdrop" in log


def test_one_folder_down_and_same_vocab_keeps_the_head(tmp_path, checkpoint_dirs):
    root = checkpoint_dirs("hubert", "folder")
    inner = modeldir.find(root)
    vocab = json.loads((inner / "vocab.json").read_text())
    model, _, log = _load(root, vocab=vocab, pad="<pad>", size=len(vocab))
    assert "keeping its CTC head" in log and f"using {inner}" in log
    ref = modeldir.load_checkpoint(root).model
    assert torch.equal(model.lm_head.weight, ref.lm_head.weight)


def test_a_non_ctc_model_type_is_refused(tmp_path):
    d = checkpoints.build_refused("whisper", tmp_path / "whisper")
    with pytest.raises(TrainingError, match="model_type 'whisper' is not a CTC speech recognition model"):
        _load(d)
