"""The from-scratch preset: chosen for a random start, never overriding a value the job set."""
from __future__ import annotations

import pytest

from conftest import ROOT
from train import hyperparameters as H
from train.model import layer_norm_encoder, starts_random


def test_auto_preset_changes_only_unset_values_for_a_random_start():
    raw = {"learning_rate": "1e-3", "max_train_seconds": "600", "sagemaker_program": "x"}
    hp = H.parse(raw)
    tuned, preset, changed = H.resolve_preset(hp, H.given(raw), random_start=True)
    assert preset == "from_scratch"
    assert "learning_rate" not in changed and tuned.learning_rate == 1e-3 and tuned.max_train_seconds == 600
    assert changed == {k: v for k, v in H.FROM_SCRATCH.items() if k != "learning_rate"}
    assert all(getattr(tuned, k) == v for k, v in changed.items())
    assert "sagemaker_program" not in H.given(raw)


def test_a_pretrained_start_keeps_the_fine_tuning_defaults_unless_asked():
    hp = H.parse({})
    assert H.resolve_preset(hp, H.given({}), random_start=False) == (hp, "fine_tune", {})
    forced = H.parse({"preset": "from_scratch"})
    tuned, preset, changed = H.resolve_preset(forced, {"preset"}, random_start=False)
    assert preset == "from_scratch" and changed == H.FROM_SCRATCH and tuned.learning_rate == H.FROM_SCRATCH["learning_rate"]
    off = H.parse({"preset": "FINE_TUNE"})
    assert H.resolve_preset(off, {"preset"}, random_start=True) == (off, "fine_tune", {})
    with pytest.raises(H.TrainingError, match="preset='fast' must be one of auto, fine_tune, from_scratch"):
        H.parse({"preset": "fast"})


def test_a_layer_normed_encoder_from_scratch_also_gets_reverberation_unless_set():
    hp = H.parse({})
    tuned, _, changed = H.resolve_preset(hp, H.given({}), random_start=True, layer_norm_encoder=True)
    assert changed == {**H.FROM_SCRATCH, **H.FROM_SCRATCH_LAYER_NORM} and tuned.reverberation == 0.5
    _, _, group = H.resolve_preset(hp, H.given({}), random_start=True, layer_norm_encoder=False)
    assert "reverberation" not in group
    raw = {"reverberation": "0"}
    tuned, _, changed = H.resolve_preset(H.parse(raw), H.given(raw), random_start=True, layer_norm_encoder=True)
    assert "reverberation" not in changed and tuned.reverberation == 0.0
    assert H.resolve_preset(hp, H.given({}), random_start=False, layer_norm_encoder=True)[2] == {}


def test_a_layer_normed_encoder_from_scratch_gets_other_voices_and_a_group_normed_one_does_not():
    hp = H.parse({})
    tuned, _, changed = H.resolve_preset(hp, H.given({}), random_start=True, layer_norm_encoder=True)
    assert changed["voice_perturbation"] == 0.5 and tuned.voice_perturbation == 0.5
    group, _, changed = H.resolve_preset(hp, H.given({}), random_start=True, layer_norm_encoder=False)
    assert "voice_perturbation" not in changed and group.voice_perturbation == 0.0
    raw = {"voice_perturbation": "0"}
    tuned, _, changed = H.resolve_preset(H.parse(raw), H.given(raw), random_start=True, layer_norm_encoder=True)
    assert "voice_perturbation" not in changed and tuned.voice_perturbation == 0.0
    assert "`voice_perturbation` 0.5" in H.Hyperparameters.__dataclass_fields__["preset"].metadata["help"]


def test_the_feature_encoder_layout_is_read_from_the_model_folder(tmp_path):
    assert layer_norm_encoder(str(ROOT / "local_test" / "tiny_model"))
    assert not layer_norm_encoder(str(ROOT / "local_test" / "tiny_model_group"))
    (tmp_path / "release" / "model").mkdir(parents=True)
    (tmp_path / "release" / "model" / "config.json").write_text('{"feat_extract_norm": "layer"}')
    assert layer_norm_encoder(str(tmp_path / "release"))  # one folder down, as the loader finds it
    assert not layer_norm_encoder("facebook/wav2vec2-large-lv60") and not layer_norm_encoder(str(tmp_path / "missing"))


def test_every_from_scratch_value_is_valid_for_its_hyperparameter_and_differs_from_the_default():
    values = {**H.FROM_SCRATCH, **H.FROM_SCRATCH_LAYER_NORM}
    hp = H.parse({k: str(v) for k, v in values.items()})
    assert all(getattr(hp, k) == v for k, v in values.items())
    assert all(H.Hyperparameters().__getattribute__(k) != v for k, v in values.items())


def test_a_config_without_weights_is_a_random_start(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert starts_random(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert not starts_random(str(tmp_path))
    nested = tmp_path / "release"
    (nested / "model").mkdir(parents=True)
    (nested / "model" / "config.json").write_text("{}")
    assert starts_random(str(nested))  # one folder down, as the loader finds it
    assert not starts_random("facebook/wav2vec2-base")
    assert not starts_random(str(tmp_path / "missing"))
