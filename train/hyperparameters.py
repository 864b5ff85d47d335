"""Hyperparameters: every name, type, default and meaning in one place.

SageMaker passes every value as a string, sometimes JSON-quoted (`"\\"8\\""`); `parse` turns the
hyperparameters.json mapping into one typed, validated `Hyperparameters`. Each field is declared with
common.settings (the serving settings' boolean words, error wording and table generator);
docs/hyperparameters.md's table is `markdown_table()` and a test checks that the page carries exactly it.
Imports no torch or transformers: the launcher and `train --help` read it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from typing import Any, Iterable, Mapping

from common import settings as common
from common.suggest import did_you_mean
from common.text import DEFAULT_CHARS_TO_IGNORE

from .failure import TrainingError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
FREEZE_CHOICES = ("auto", "true", "false")
SCHEDULERS = ("linear", "cosine", "constant_with_warmup")
PRESETS = ("auto", "fine_tune", "from_scratch")
REPORT_TO = ("none", "tensorboard", "mlflow")
# preset=from_scratch: a model trained from random weights (a `model` channel with config.json and no weights),
# often small, on little data, under a time budget. The table's defaults are the fine-tuning ones (after
# transformers' run_speech_recognition_ctc.py). Why these values: bench/README.md, "Training accuracy".
FROM_SCRATCH = {"learning_rate": 5e-4, "lr_scheduler": "constant_with_warmup", "warmup_steps": 0.0,
                "weight_decay": 0.01, "speed_perturbation": 0.1}
# ...and, when the feature encoder is layer-normed (config.json `feat_extract_norm` "layer"), synthetic rooms:
# such an encoder, trained from a random start, learnt the training audio's (dry) acoustics and failed on voices
# with an echo; a group-normed one did not, and the augmentation kept it on the all-blank plateau ~300 steps
# longer (bench/README.md, "Training accuracy: why the layer-norm layout failed on new voices"). Also other
# voices (pitch and formants, `voice_perturbation`): CER on three unseen-voice sets 0.218 / 0.225 / 0.316 ->
# 0.121 / 0.149 / 0.211 step for step; the group-normed model stayed all blank with it (bench/README.md,
# "Training accuracy on voices no tuning run saw").
FROM_SCRATCH_LAYER_NORM = {"reverberation": 0.5, "voice_perturbation": 0.5}


_BOUNDS = {"min": "at_least", "max": "at_most", "gt": "above", "lt": "below"}


def _hp(default, help: str, **checks):
    """A hyperparameter: bounds min/max (closed), gt/lt (open), or choices (any case)."""
    declared = {_BOUNDS.get(k, k): v for k, v in checks.items()}
    return common.setting(default, help, fold_case="choices" in checks, **declared)


@dataclass(frozen=True)
class Hyperparameters:
    # Model
    model_name: str = _hp("facebook/wav2vec2-base",
                          "Model to start from when there is no `model` channel: a Hugging Face hub id or a local "
                          "directory. A directory with config.json but no weights starts from random weights.")
    freeze_feature_encoder: str = _hp("auto", "Freeze the convolutional feature encoder: `true`, `false`, or `auto` "
                                      "(frozen when starting from pretrained weights, trained from a random start).",
                                      choices=FREEZE_CHOICES)
    preset: str = _hp("auto", "Defaults for how training starts: `fine_tune` (this table's defaults), `from_scratch` "
                      "(" + ", ".join(f"`{k}` {v:g}" if isinstance(v, float) else f"`{k}` {v}"
                                      for k, v in FROM_SCRATCH.items())
                      + " instead; with a layer-normed feature encoder also "
                      + ", ".join(f"`{k}` {v:g}" for k, v in FROM_SCRATCH_LAYER_NORM.items())
                      + ") or `auto`: from_scratch when the model starts from random weights (a model "
                      "folder with config.json and no weights), else fine_tune. Values you set always win.",
                      choices=PRESETS)
    gradient_checkpointing: bool = _hp(False, "Recompute activations in the backward pass: less memory, ~30% slower.")
    ctc_zero_infinity: bool = _hp(True, "Zero infinite CTC losses (audio too short for its transcript) instead of "
                                  "letting them break training.")
    mask_time_prob: float = _hp(0.05, "SpecAugment: fraction of time steps masked during training.", min=0.0, max=1.0)
    mask_feature_prob: float = _hp(0.0, "SpecAugment: fraction of feature channels masked during training.",
                                   min=0.0, max=1.0)
    layerdrop: float = _hp(0.0, "Probability of skipping each transformer layer during training.", min=0.0, max=1.0)
    hidden_dropout: float = _hp(0.0, "Dropout in the transformer's fully connected layers and embeddings.",
                                min=0.0, lt=1.0)
    attention_dropout: float = _hp(0.0, "Dropout on the attention probabilities.", min=0.0, lt=1.0)
    activation_dropout: float = _hp(0.0, "Dropout after the feed-forward activation.", min=0.0, lt=1.0)
    feat_proj_dropout: float = _hp(0.0, "Dropout after the feature projection.", min=0.0, lt=1.0)
    final_dropout: float = _hp(0.0, "Dropout before the CTC head.", min=0.0, lt=1.0)
    # Schedule
    epochs: float = _hp(10.0, "Passes over the training set (ignored when `max_steps` > 0).", gt=0.0)
    max_steps: int = _hp(-1, "Optimizer steps to run; overrides `epochs` when > 0.")
    max_train_seconds: float = _hp(0.0, "Stop training (then evaluate and save as usual) after this many seconds "
                                   "of training; 0 = no limit.", min=0.0)
    train_batch_size: int = _hp(8, "Utterances per device per step.", min=1)
    eval_batch_size: int = _hp(8, "Utterances per device per evaluation batch.", min=1)
    gradient_accumulation_steps: int = _hp(1, "Batches accumulated per optimizer step.", min=1)
    learning_rate: float = _hp(1e-4, "Peak learning rate (AdamW).", gt=0.0)
    lr_scheduler: str = _hp("linear", "Learning-rate schedule after warm-up.", choices=SCHEDULERS)
    warmup_steps: float = _hp(0.1, "Linear warm-up: a number of steps (>= 1) or a fraction of all steps (< 1).",
                              min=0.0)
    weight_decay: float = _hp(0.0, "AdamW weight decay.", min=0.0)
    max_grad_norm: float = _hp(1.0, "Gradient clipping norm.", gt=0.0)
    seed: int = _hp(42, "Random seed (weights, shuffling, `test_split`).")
    precision: str = _hp("auto", "`auto` (bf16 on GPUs that support it, else fp16 on GPU; on a CPU bf16 where it is "
                         "native, AVX512-BF16 or AMX, else fp32), `fp32`, `fp16` (GPU only) or `bf16`.",
                         choices=PRECISIONS)
    # Data
    audio_column: str = _hp("", "Column (or JSON field) holding each utterance's audio in any tabular layout: "
                            "manifests, NeMo, AudioFolder, Common Voice TSVs, save_to_disk. Empty: the layout's own "
                            "(`audio`, `audio_filepath`, `file_name`, `path`).")
    text_column: str = _hp("", "Column (or JSON field) holding the transcript, as `audio_column`. Empty: the layout's "
                           "own (`text`; `sentence` in Common Voice; in AudioFolder the first of `transcription`, "
                           "`text`, `sentence`, `transcript`).")
    train_tsv: str = _hp("", "Common Voice layout: the TSV the train channel reads (e.g. `validated.tsv`). Empty: "
                         "`train.tsv`.")
    test_tsv: str = _hp("", "Common Voice layout: the TSV the test channel reads (e.g. `dev.tsv`). Empty: `test.tsv`.")
    min_duration_s: float = _hp(0.0, "Drop training utterances shorter than this (seconds).", min=0.0)
    max_duration_s: float = _hp(20.0, "Drop training utterances longer than this (seconds); 0 = no limit.", min=0.0)
    chars_to_ignore: str = _hp(DEFAULT_CHARS_TO_IGNORE, "Characters removed from transcripts before training "
                               "(after lower-casing).")
    test_split: float = _hp(0.1, "Fraction of `train` held out for evaluation when there is no `test` channel "
                            "(seeded); 0 = no evaluation.", min=0.0, lt=1.0)
    max_skipped_fraction: float = _hp(0.05, "Fail the job when more than this fraction of a channel's files cannot "
                                      "be read (fewer are skipped, named in the log and counted).", min=0.0, max=1.0)
    speed_perturbation: float = _hp(0.0, "Augmentation: play each training utterance at a random speed in "
                                    "[1 - x, 1 + x] every time it is drawn (tempo and pitch change); 0 = off.",
                                    min=0.0, lt=0.5)
    reverberation: float = _hp(0.0, "Augmentation: the fraction of training draws heard in a synthetic room (a "
                               "random reverberation time of 0.2-0.8 s and direct-to-reverberant ratio of 5-20 dB); "
                               "0 = off.", min=0.0, max=1.0)
    voice_perturbation: float = _hp(0.0, "Augmentation: the fraction of training draws spoken by another voice: "
                                    "pitch moved to a random median of 80-250 Hz with the formants kept, then the "
                                    "formants scaled by a random 0.9-1.25 (Praat's PSOLA, through praat-parselmouth; "
                                    "duration kept); 0 = off.", min=0.0, max=1.0)
    augmentation_start_step: int = _hp(0, "Augmentation: the optimizer step from which `voice_perturbation` and "
                                       "`reverberation` apply (`speed_perturbation` applies from the start), so that a "
                                       "model from a random start first leaves the all-blank plateau on the audio as "
                                       "recorded; 0 = from the start. DataLoader workers read ahead, so it begins a few "
                                       "batches later.", min=0)
    group_by_length: bool = _hp(True, "Batch utterances of similar length together (less padding).")
    # Cadence
    logging_steps: int = _hp(25, "Print a `[metrics]` line every this many steps.", min=1)
    report_to: str = _hp("none", "Also send the `[metrics]`/`[eval]` values to `tensorboard` (event files in "
                         "/opt/ml/output/tensorboard, which the job's TensorBoard output config syncs to S3) or "
                         "`mlflow` (a run on the server named by the MLFLOW_TRACKING_URI environment variable, e.g. "
                         "a SageMaker managed MLflow ARN); `none` = the log only.", choices=REPORT_TO)
    eval_steps: int = _hp(0, "Evaluate every this many steps; 0 = once per epoch (or once at the end with "
                          "`max_steps`).", min=0)
    save_steps: int = _hp(500, "Save a checkpoint to /opt/ml/checkpoints every this many steps.", min=1)
    save_total_limit: int = _hp(2, "Checkpoints kept in /opt/ml/checkpoints (oldest deleted).", min=1)
    eval_on_start: bool = _hp(False, "Also evaluate before the first step (a baseline in metrics.json).")
    dataloader_num_workers: int = _hp(-1, "Worker processes decoding audio for each training process; -1 = one "
                                      "less than the CPUs per process, 1 to 8; 0 decodes in the training loop.",
                                      min=-1)
    # Language model (train/lm.py)
    lm_order: int = _hp(3, "Order of the n-gram language model (KenLM) estimated after training from the training "
                        "transcripts plus the `lm` channel's text, saved beside the model for beam-search decoding; "
                        "0 = no language model.", min=0, max=6)
    lm_tuning_seconds: float = _hp(300.0, "Time limit for tuning the LM weight (alpha) and word bonus (beta) on the "
                                   "evaluation set after training (a grid search, each point logged); 0 = keep "
                                   "pyctcdecode's defaults (0.5, 1.5).", min=0.0)

    @property
    def max_duration_limit(self) -> float:
        return self.max_duration_s if self.max_duration_s > 0 else math.inf


_FIELDS = {f.name: f for f in fields(Hyperparameters)}
SPECS = common.specs(Hyperparameters)


def names() -> list[str]:
    return list(_FIELDS)


def _unquote(raw: Any) -> Any:
    """SageMaker sends strings; framework estimators JSON-encode them once more ("\\"8\\"")."""
    value = raw
    for _ in range(2):
        if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                break
    return value


def _convert(name: str, raw: Any):
    """The typed, checked value of one hyperparameter; TrainingError naming it, what was expected and its help."""
    spec = SPECS[name]
    try:
        # Integers may arrive as whole floats ("100.0") from tuning jobs and JSON-writing estimators.
        return spec.read(_unquote(raw), label="hyperparameter ", whole_floats=True)
    except common.SettingError as exc:
        raise TrainingError(f"{exc}; {spec.help}") from None


# Names SageMaker adds on its own: Automatic Model Tuning's `_tuning_objective_metric` (and other `_tuning_*`),
# the SDK's `sagemaker_*` (program, submit_directory, region, job_name, container_log_level, ...).
RESERVED_PREFIXES = ("_tuning_", "sagemaker_")


def reserved(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The SageMaker-reserved entries of hyperparameters.json: accepted, logged, not used."""
    return {k: _unquote(v) for k, v in raw.items() if k.startswith(RESERVED_PREFIXES)}


def parse(raw: Mapping[str, Any]) -> Hyperparameters:
    """Typed, validated settings from hyperparameters.json's mapping (values as strings or JSON).
    SageMaker-reserved names (`reserved`) are left out; any other unknown name is an error."""
    raw = {k: v for k, v in raw.items() if not k.startswith(RESERVED_PREFIXES)}
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        # One short first line (SageMaker's FailureReason keeps 1,024 characters); the full list goes to the log.
        where = "docs/hyperparameters.md"
        hints = "; ".join([common.unknown_name("hyperparameter", unknown[0], _FIELDS, where)]
                          + [f"{name}: {did_you_mean(name, _FIELDS, where=where)}" for name in unknown[1:3]])
        more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise TrainingError(f"{hints}{more}",
                            details=f"valid names: {', '.join(_FIELDS)}")
    values = {}
    for name, value in raw.items():
        values[name] = _convert(name, value)
    hp = Hyperparameters(**values)
    if hp.max_duration_s and hp.min_duration_s >= hp.max_duration_s:
        raise TrainingError(f"hyperparameter min_duration_s={hp.min_duration_s} must be below "
                            f"max_duration_s={hp.max_duration_s}")
    return hp


def given(raw: Mapping[str, Any]) -> frozenset[str]:
    """The names hyperparameters.json sets (SageMaker's reserved ones left out): a preset never changes them."""
    return frozenset(k for k in raw if not k.startswith(RESERVED_PREFIXES))


def resolve_preset(hp: Hyperparameters, given: Iterable[str], random_start: bool,
                   layer_norm_encoder: bool = False) -> tuple[Hyperparameters, str, dict]:
    """(settings, the preset used, the values it changed). `from_scratch` replaces the values of FROM_SCRATCH's
    names (and FROM_SCRATCH_LAYER_NORM's, for a layer-normed feature encoder) that `given` (the names
    hyperparameters.json set) does not hold; `fine_tune` changes nothing."""
    preset = hp.preset if hp.preset != "auto" else "from_scratch" if random_start else "fine_tune"
    if preset == "fine_tune":
        return hp, preset, {}
    values = {**FROM_SCRATCH, **(FROM_SCRATCH_LAYER_NORM if layer_norm_encoder else {})}
    changed = {k: v for k, v in values.items() if k not in set(given)}
    return replace(hp, **changed), preset, changed


def markdown_table() -> str:
    """docs/hyperparameters.md's table, generated from the dataclass above."""
    return common.markdown_table(SPECS.values(), first="name")


def help_text() -> str:
    lines = ["Hyperparameters (input/config/hyperparameters.json; every value may be a string):", ""]
    for spec in SPECS.values():
        lines.append(f"  {spec.name} (default {spec.default!r})")
        lines.append(f"      {spec.help}")
    return "\n".join(lines)
