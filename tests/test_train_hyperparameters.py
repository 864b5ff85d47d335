"""hyperparameters.json as SageMaker writes it: strings, sometimes JSON-quoted (docs/hyperparameters.md's table:
tests/test_docs_tables.py)."""
from __future__ import annotations

import json
import math
import re

import pytest

from train_helpers import assert_ok, make_opt_ml, metrics, micro_model_dir, run_train

from train import hyperparameters as H  # noqa: E402  (train_helpers put the repo root on sys.path)
from train.failure import TrainingError  # noqa: E402


def test_defaults_when_empty():
    hp = H.parse({})
    assert hp == H.Hyperparameters()
    assert hp.freeze_feature_encoder == "auto" and hp.precision == "auto" and hp.max_steps == -1


@pytest.mark.parametrize("raw", [
    {"epochs": "3", "learning_rate": "5e-4", "train_batch_size": "8", "gradient_checkpointing": "true",
     "model_name": "facebook/wav2vec2-base", "warmup_steps": "0.2", "precision": "FP32"},
    {"epochs": "\"3\"", "learning_rate": "\"5e-4\"", "train_batch_size": "\"8\"",
     "gradient_checkpointing": "\"True\"", "model_name": "\"facebook/wav2vec2-base\"", "warmup_steps": "\"0.2\"",
     "precision": "\"fp32\""},
    {"epochs": 3, "learning_rate": 0.0005, "train_batch_size": 8, "gradient_checkpointing": True,
     "model_name": "facebook/wav2vec2-base", "warmup_steps": 0.2, "precision": "fp32"},
])
def test_strings_json_quoted_strings_and_json_values_parse_alike(raw):
    hp = H.parse(raw)
    assert (hp.epochs, hp.learning_rate, hp.train_batch_size, hp.gradient_checkpointing, hp.model_name,
            hp.warmup_steps, hp.precision) == (3.0, 5e-4, 8, True, "facebook/wav2vec2-base", 0.2, "fp32")
    assert isinstance(hp.train_batch_size, int) and isinstance(hp.epochs, float)


def test_integers_written_as_floats_are_accepted_but_fractions_are_not():
    assert H.parse({"max_steps": "100.0"}).max_steps == 100
    with pytest.raises(TrainingError, match=r"^hyperparameter max_steps='1.5' is not a valid int"):
        H.parse({"max_steps": "1.5"})


@pytest.mark.parametrize("raw,message", [
    ({"learning_rate": "nan"}, "hyperparameter learning_rate='nan' is not a valid float"),
    ({"test_split": "1"}, "hyperparameter test_split=1.0 must be >= 0 and < 1"),
    ({"mask_time_prob": "2"}, "hyperparameter mask_time_prob=2.0 must be from 0 to 1"),
    ({"gradient_checkpointing": "maybe"}, "hyperparameter gradient_checkpointing='maybe' is not a valid bool: "
                                          "expected true or false"),
    ({"min_duration_s": "5", "max_duration_s": "2"}, "hyperparameter min_duration_s=5.0 must be below"),
    ({"lr_scheduler": "step"}, "hyperparameter lr_scheduler='step' must be one of linear, cosine"),
    ({"bogus": "1", "epochz": "2"}, "unknown hyperparameter bogus: "),
])
def test_bad_values_name_the_hyperparameter(raw, message):
    with pytest.raises(TrainingError) as err:
        H.parse(raw)
    assert str(err.value).startswith(message)


def test_unknown_names_get_the_closest_name_and_a_short_first_line():
    with pytest.raises(TrainingError) as err:
        H.parse({"max_step": "3", "epochz": "2", "lerning_rate": "1", "bogusname": "1", "zzz": "1"})
    message = str(err.value)
    assert "epochz: did you mean epochs?" in message and "lerning_rate: did you mean learning_rate?" in message
    assert message.endswith("(and 2 more)") and len(message) < 300
    assert "valid names: " in err.value.details and "learning_rate" in err.value.details


def test_seed_names_are_kept():
    for name in ("epochs", "train_batch_size", "eval_batch_size", "learning_rate", "warmup_steps",
                 "weight_decay", "model_name", "max_steps", "seed", "gradient_checkpointing",
                 "freeze_feature_encoder", "min_duration_s", "max_duration_s", "chars_to_ignore", "test_split",
                 "ctc_zero_infinity", "eval_steps", "save_steps", "logging_steps", "precision"):
        assert name in H.names()


def test_json_quoted_hyperparameters_drive_a_real_run(tmp_path, synthetic_data):
    """hyperparameters.json exactly as a framework estimator writes it: every value a JSON-quoted string."""
    model = micro_model_dir(tmp_path / "model_src")
    raw = {"max_steps": "\"3\"", "train_batch_size": "\"4\"", "learning_rate": "\"1e-3\"",
           "test_split": "\"0.25\"", "logging_steps": "\"1\"", "save_steps": "\"1000\"",
           "freeze_feature_encoder": "\"true\"", "seed": "\"7\"", "chars_to_ignore": "\",.?\"",
           "lm_order": "\"0\""}
    opt = make_opt_ml(tmp_path / "opt", {"train": synthetic_data / "train", "model": model},
                      raw_hyperparameters=json.dumps(raw))
    proc = run_train(opt)
    assert_ok(proc)
    m = metrics(opt)
    assert m["steps"] == 3
    assert re.findall(r"\[metrics\] step=(\d+) ", proc.stdout) == ["1", "2", "3"]
    assert m["hyperparameters"]["learning_rate"] == 1e-3 and m["hyperparameters"]["seed"] == 7
    assert m["hyperparameters"]["chars_to_ignore"] == ",.?"
    assert "feature encoder frozen" in proc.stdout
    assert "held out 12 training utterances" in proc.stdout
    assert math.isfinite(m["cer"])
