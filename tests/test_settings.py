"""common/settings.py: one way to declare a setting, one boolean rule, one error wording and one table generator
for the serving settings (SERVE_*), the request options and the hyperparameters."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import pytest

from conftest import ROOT
from common import settings as common
from serve import options
from serve import settings as S
from serve.contract import BadRequest
from serve.settings import Settings, SettingsError
from train import hyperparameters as H
from train.failure import TrainingError


def serving(name: str, raw: str):
    """(value, None) or (None, message) for one SERVE_* variable."""
    try:
        return getattr(Settings.from_env({name: raw}), FIELD_OF[name]), None
    except SettingsError as exc:
        return None, str(exc)


FIELD_OF = {variable: spec.name for spec in S.SPECS.values() for variable in spec.names}


def hyperparameter(name: str, raw: str):
    try:
        return getattr(H.parse({name: raw}), name), None
    except TrainingError as exc:
        return None, str(exc).split("; ")[0]  # the program adds the hyperparameter's help after "; "


def request_option(name: str, raw: str, where: str = "query"):
    """From the query string, or the Custom-Attributes header."""
    try:
        got = options.request_level([(name, raw)], None) if where == "query" else \
            options.request_level([], f"{name}={raw}")
        return got[name], None
    except BadRequest as exc:
        return None, str(exc).split(": ", 1)[1]  # after "query string: " / the header's name


WORDS = [("on", True), ("off", False), ("yes", True), ("no", False), ("ON", True), ("Off", False), (" Yes ", True),
         ("1", True), ("0", False), ("true", True), ("FALSE", False)]


@pytest.mark.parametrize("word,want", WORDS)
def test_one_boolean_rule_for_a_setting_a_hyperparameter_and_a_request_option(word, want):
    assert serving("SERVE_METRICS", word) == (want, None)
    assert serving("SAGEMAKER_BATCH", word) == (want, None)
    assert hyperparameter("gradient_checkpointing", word) == (want, None)
    assert hyperparameter("ctc_zero_infinity", json.dumps(word)) == (want, None)  # JSON-quoted, as estimators send
    assert request_option("timestamps", word.strip()) == (want, None)
    assert request_option("timestamps", word.strip(), "header") == (want, None)
    # auto/true/false choices take the same words for true and false.
    assert serving("SERVE_CPU_BF16", word) == (str(want).lower(), None)
    assert hyperparameter("freeze_feature_encoder", word) == (str(want).lower(), None)


@pytest.mark.parametrize("word", ["maybe", "y", "enabled", "2"])
def test_other_words_are_refused_alike(word):
    tail = f"={word!r} is not a valid bool: expected {common.BOOL_EXPECTED}"
    assert serving("SERVE_METRICS", word) == (None, "SERVE_METRICS" + tail)
    assert hyperparameter("gradient_checkpointing", word) == (None, "hyperparameter gradient_checkpointing" + tail)
    assert request_option("timestamps", word) == (None, "option timestamps" + tail)


def test_word_and_words_are_declared_aliases_of_timestamps_only():
    assert options.SPECS["timestamps"].aliases == {"words": True, "word": True}
    assert request_option("timestamps", "words") == request_option("timestamps", "Word") == (True, None)
    assert serving("SERVE_METRICS", "words")[1].startswith("SERVE_METRICS='words' is not a valid bool")
    assert hyperparameter("gradient_checkpointing", "word")[1].startswith(
        "hyperparameter gradient_checkpointing='word' is not a valid bool")
    assert "(`words`, `word`: true)" in options.markdown_table()


def _range(spec: common.Spec) -> str:
    return f"from {spec.at_least:g} to {spec.at_most:g}"


def test_an_out_of_bounds_value_reads_the_same_in_all_three():
    step, mask, width = S.SPECS["stream_step_s"], H.SPECS["mask_time_prob"], options.SPECS["beam_width"]
    assert serving("SERVE_STREAM_STEP_S", "20") == (None, f"SERVE_STREAM_STEP_S=20.0 must be {_range(step)}")
    assert hyperparameter("mask_time_prob", "2") == (None, f"hyperparameter mask_time_prob=2.0 must be {_range(mask)}")
    assert request_option("beam_width", "0") == (None, f"option beam_width=0 must be {_range(width)}")
    assert request_option("alpha", "11", "header") == (None, "option alpha=11.0 must be from 0 to 10")
    # One-sided bounds, and a JSON value, the same way.
    assert serving("SERVE_THREADS", "0") == (None, "SERVE_THREADS=0 must be >= 1")
    assert hyperparameter("train_batch_size", "0") == (None, "hyperparameter train_batch_size=0 must be >= 1")
    with pytest.raises(BadRequest, match=r"^option beam_width=1000 must be from 1 to 256$"):
        options.from_json("beam_width", 1000)


def test_a_value_of_the_wrong_type_or_choice_reads_the_same_in_all_three():
    assert serving("SERVE_THREADS", "two") == (None, "SERVE_THREADS='two' is not a valid int (a whole number)")
    assert hyperparameter("seed", "two") == (None, "hyperparameter seed='two' is not a valid int (a whole number)")
    assert request_option("beam_width", "two") == (None, "option beam_width='two' is not a valid int (a whole number)")
    assert serving("SERVE_GPU_DTYPE", "int8") == (None, "SERVE_GPU_DTYPE='int8' must be one of float16, bfloat16, "
                                                        "float32")
    assert hyperparameter("lr_scheduler", "step") == (None, "hyperparameter lr_scheduler='step' must be one of "
                                                            "linear, cosine, constant_with_warmup")
    assert request_option("decoder", "wide") == (None, "option decoder='wide' must be one of greedy, beam")
    assert serving("SERVE_LANGUAGE", "fr a")[1] == request_option("language", "fr a")[1].removeprefix("option ") \
        .replace("language=", "SERVE_LANGUAGE=")


def test_unknown_names_get_the_closest_name():
    assert hyperparameter("epochz", "1") == (None, "unknown hyperparameter epochz: did you mean epochs?")
    assert request_option("timestamp", "1") == (None, "unknown option timestamp: did you mean timestamps?")


def test_the_three_tables_come_from_the_one_generator(monkeypatch):
    monkeypatch.setattr(common, "markdown_table", lambda table, first="name": first)
    assert (S.markdown_table(), H.markdown_table(), options.markdown_table()) == ("variable", "name", "option")


@dataclass(frozen=True)
class Example:
    ratio: float = common.setting(0.5, "A fraction.", at_least=0, below=1)
    mode: str | None = common.setting(None, "How.", choices=("fast", "exact"), shown="`fast` on a GPU")
    count: int = common.setting(3, "How many | at most.", names=("EXAMPLE_COUNT", "COUNT"), above=0)
    flag: bool = common.setting(False, "Whether.")


def test_one_field_declares_a_setting_its_checks_and_its_table_row():
    specs = common.specs(Example)
    assert [s.kind for s in specs.values()] == ["float", "str", "int", "bool"]
    assert specs["ratio"].read("0.25") == 0.25 and specs["count"].read(" 7 ", name="COUNT") == 7
    assert specs["flag"].read("on") is True and specs["mode"].check(None) is None
    with pytest.raises(common.SettingError, match=r"^ratio=1.0 must be >= 0 and < 1$"):
        specs["ratio"].read("1")
    with pytest.raises(common.SettingError, match=r"^COUNT=0 must be > 0$") as err:
        specs["count"].read("0", name="COUNT")
    assert (err.value.name, err.value.got, err.value.problem) == ("COUNT", 0, "must be > 0")
    with pytest.raises(common.SettingError, match=r"^ratio='inf' is not a valid float \(a finite number\)$"):
        specs["ratio"].read("inf")
    assert common.markdown_table(specs.values()).splitlines() == [
        "| name | type | default | meaning |", "| --- | --- | --- | --- |",
        "| `ratio` | number >= 0 and < 1 | `0.5` | A fraction. |",
        "| `mode` | `fast` \\| `exact` | `fast` on a GPU | How. |",
        "| `EXAMPLE_COUNT` or `COUNT` | integer > 0 | `3` | How many \\| at most. |",
        "| `flag` | true/false | `false` | Whether. |",
    ]


def test_the_settings_modules_load_no_torch_or_transformers():
    code = ("import sys, json, common.settings, serve.settings, serve.options, train.hyperparameters, train.progress\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers'})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []

