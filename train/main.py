"""The training program: SageMaker's training contract in, a serving-ready model directory out.

Usage: train [train]   (SageMaker runs `docker run IMAGE train`); `train --help` lists hyperparameters.
Every /opt/ml path derives from $OPT_ML when set (native runs and tests), else /opt/ml.

One file because it is the program's top level: the contract checks, the choice of the starting model and the
order of the steps (index, train, save, LM) read as one flow, while each step lives in its own module.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from common.paths import OptML

from . import hyperparameters
from .failure import TrainingError, report
from .progress import say

USAGE = "usage: train [train] | train --help   (settings come from input/config/hyperparameters.json)"


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text() or "{}")
    except ValueError as exc:
        raise TrainingError(f"{path} is not valid JSON ({exc}); fix the {what}") from None
    if not isinstance(value, dict):
        raise TrainingError(f"{path} must hold a JSON object; fix the {what}")
    return value


def check_input_modes(config: dict) -> dict[str, str]:
    """{channel: TrainingInputMode} from inputdataconfig.json. File and FastFile channels are folders (FastFile:
    read-only, each file fetched from S3 when first read); Pipe gives FIFOs, which this program cannot read."""
    modes = {}
    for name, cfg in config.items():
        mode = str((cfg or {}).get("TrainingInputMode", "File")) if isinstance(cfg, dict) else "File"
        if mode.lower() == "pipe":
            raise TrainingError(f"channel {name} uses Pipe input mode, which this training image cannot read: give "
                                f"it TrainingInputMode File or FastFile (the estimator's input_mode)")
        modes[name] = mode
    return modes


def newest_checkpoint(checkpoints_dir: Path) -> tuple[Path, int] | None:
    """The checkpoint-N with the largest N that was completely written (train/checkpointing.py); newer ones cut
    short (a spot stop mid-write, a partial S3 sync) are logged and skipped."""
    from .checkpointing import newest_complete

    return newest_complete(checkpoints_dir, log=say)


def model_source(paths: OptML, hp) -> str:
    """The `model` channel's model folder (a model.tar.gz is unpacked once), else `model_name`."""
    from . import model_channel

    channel = paths.channel("model")
    if not channel.is_dir():
        return hp.model_name
    return str(model_channel.resolve(channel, paths.root / "input" / "unpacked" / "model", log=say))


def load_model(source: str, hp, vocab: dict, processor):
    """(model, precision): the model with its CTC head for `vocab`, prepared for this machine."""
    import torch

    from common import batching, modeldir
    from common.convs import convs_as_matmuls

    from . import model as models, precision as precisions

    tok = processor.tokenizer
    model, pretrained = models.load(source, hp, vocab, len(tok), tok.pad_token_id, log=say)
    # Layer-norm feature encoders take an attention mask; group-norm ones (wav2vec2-base) were trained on
    # zero-padded batches without one. The saved processor records the choice for serving.
    processor.feature_extractor.return_attention_mask = modeldir.feature_encoder_norm(model.config) == "layer"
    freeze = hp.freeze_feature_encoder == "true" or (hp.freeze_feature_encoder == "auto" and pretrained)
    if freeze:
        model.freeze_feature_encoder()
    if hp.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if not torch.cuda.is_available():
        convs_as_matmuls(model)  # same parameters and saved weights; CPU steps about twice as fast
    if not processor.feature_extractor.return_attention_mask:
        # A group-norm encoder normalises over time, so the zeros padding an evaluation batch would change
        # every clip's logits. Patched as serving patches it (common.batching.make_exact), it gives each clip
        # its one-clip logits when the batch carries the mask, which evaluation then passes; training still
        # runs without the mask, as these models were trained (no mask: the patch changes nothing).
        model.exact_evaluation = batching.make_exact(model)
    precision = precisions.for_this_machine(hp.precision)
    say(f"[model] {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, feature encoder "
        f"{'frozen' if freeze else 'trained'}, precision {precision}")
    return model, precision


def run(paths: OptML, hp, sagemaker_hyperparameters: dict | None = None, given: frozenset[str] = frozenset()) -> int:
    """Train, evaluate, save. `given`: the names hyperparameters.json set (a preset never changes them)."""
    import time

    from transformers import set_seed

    from common import batching, modeldir

    from . import data, distributed, lm as lm_step, model as models, outputs, trainer as trainers
    from .callbacks import ProgressCallback
    from . import reporting
    from .reporting import open_reporter
    from .stopping import SIGTERM_EXIT_CODE, StopCallback

    leader = distributed.is_leader()
    # 1. Outputs writable before hours are spent training; the checkpoint to resume from.
    outputs.check_writable(paths.checkpoints_dir, *((paths.model_dir, paths.output_data_dir) if leader else ()))
    # report_to's package and server checked now, not after training (first process only: it alone reports).
    reporter = open_reporter(hp.report_to, paths.output_dir) if leader else None
    set_seed(hp.seed)
    resume = newest_checkpoint(paths.checkpoints_dir)
    # The language model's settings and the `lm` channel checked before any training time is spent.
    lm_plan = lm_step.plan(hp.lm_order, hp.lm_tuning_seconds, paths.channel("lm"))

    # 2. Channels indexed: layout, transcripts, durations; no audio decoded yet.
    indexes = data.index_channels(paths.channel, hp, log=say)

    # 3. Vocabulary and label ids.
    train_texts = None if indexes["train"].processed else data.normalized_texts(indexes["train"], hp.chars_to_ignore)
    vocab, vocab_from = data.vocabulary(paths.channel("vocab"), resume[0] if resume else None, indexes["train"], hp,
                                        train_texts)
    processor = modeldir.make_processor(vocab)
    say(f"[data] vocabulary of {len(vocab)} tokens from {vocab_from}")
    lm_step.check_ready_words(lm_plan, vocab)
    labelled = data.label_examples(indexes, vocab, processor.tokenizer, hp, train_texts, log=say)

    # 4. Model; the preset for how it starts (train/hyperparameters.py FROM_SCRATCH) before anything uses hp's
    # learning-rate, schedule or SpecAugment values.
    source = model_source(paths, hp)
    hp, preset, changed = hyperparameters.resolve_preset(hp, given, models.starts_random(source),
                                                         models.layer_norm_encoder(source))
    say(f"[train] preset {preset}" + (" (random start): " + ", ".join(f"{k}={v}" for k, v in changed.items())
                                      if changed else ""))
    model, precision = load_model(source, hp, vocab, processor)

    # 5. Examples: filters (duration, CTC alignment, SpecAugment span), hold-out.
    prepared = data.select_examples(labelled, model.config, hp, log=say)

    # 6. Trainer.
    workers = trainers.auto_workers(hp.dataloader_num_workers)
    args = trainers.training_arguments(hp, paths.checkpoints_dir, precision, prepared.eval is not None, workers)
    skips = trainers.SkipTracker(indexes, hp.max_skipped_fraction)
    stop = StopCallback(hp.max_train_seconds)
    progress = ProgressCallback(len(prepared.train), prepared.train.seconds, hp.max_train_seconds, reporter)
    if reporter is not None:
        reporter.params(asdict(hp))
    trainer = trainers.build(model, processor, prepared.train, prepared.eval, hp, args, skips, [progress, stop],
                             min_samples=batching.min_samples(model.config))
    say(f"[data] {workers} DataLoader worker(s) per process decode audio as batches are drawn")

    # 7. Train, resuming from the newest checkpoint.
    if resume:
        say(f"[train] resuming from checkpoint {resume[0]} (step {resume[1]})")
    stop.install()
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
    train_seconds = time.monotonic() - started
    step = trainer.state.global_step
    if stop.reason == "sigterm":
        say(f"[train] stopped by SIGTERM at step {step}; checkpoint saved in {paths.checkpoints_dir}; "
            f"a restarted job resumes from it. Exiting {SIGTERM_EXIT_CODE}.")
        reporting.close_all("KILLED")
        return SIGTERM_EXIT_CODE
    if stop.reason:
        say(f"[train] max_train_seconds={hp.max_train_seconds:g} reached at step {step}")

    # 8. Final evaluation (every process), then model/ and output/data/ (first process only).
    if prepared.eval is not None and progress.last_eval_step != step:
        trainer.evaluate()
    skips.sync(args.device)  # files met in that evaluation count too
    if not leader:
        return 0
    final = progress.eval_history[-1] if progress.eval_history else {}
    trained = trainer.accelerator.unwrap_model(trainer.model)
    outputs.save_model(paths.model_dir, trained, processor)

    # 9. The language model beside the model (first process only), tuned and scored on the evaluation set.
    lm_metrics = {}
    if lm_plan is not None:
        try:
            lm_metrics = build_lm(lm_plan, paths.model_dir, trained, processor, prepared, hp, step)
        except Exception as exc:  # noqa: BLE001 - the trained model is saved: a failed add-on must not lose it
            lm_metrics = lm_failed(paths.model_dir, exc)
        outputs.declare_processor(paths.model_dir)  # AutoProcessor and the ASR pipeline load the LM with it
    if "wer_lm" in lm_metrics:
        reporter.scalars("eval", step, {k: lm_metrics[k] for k in ("wer_lm", "cer_lm")})
    reporting.close_all("FINISHED")
    epochs_done = float(trainer.state.epoch or 0.0)
    metrics = {
        "wer": final.get("wer"), "cer": final.get("cer"), "eval_loss": final.get("loss"),
        "steps": step, "epochs": round(epochs_done, 3),
        "train_seconds": round(train_seconds, 2),
        "train_audio_seconds": round(prepared.train.seconds, 2),
        "audio_seconds_per_second": round(epochs_done * prepared.train.seconds / max(train_seconds, 1e-9), 2),
        "train_loss": result.training_loss,
        "resumed_from_step": resume[1] if resume else None,
        "stopped_by": stop.reason, "precision": precision, "preset": preset,
        "processes": int(os.environ.get("WORLD_SIZE", "1")), "dataloader_workers": workers,
        "eval_history": progress.eval_history, "train_history": progress.train_history,
        "hyperparameters": asdict(hp), "sagemaker_hyperparameters": sagemaker_hyperparameters or {},
        "formats": {name: ix.format for name, ix in indexes.items()},
        "skipped_files": skips.summary(), **prepared.counts, **lm_metrics,
    }
    outputs.write_metrics(paths.output_data_dir, metrics)
    outputs.plot(paths.output_data_dir, progress.train_history, progress.eval_history,
                 {"step": step, **lm_metrics} if lm_metrics else None)
    with_lm = (f", with the LM wer_lm={_f(lm_metrics.get('wer_lm'))} cer_lm={_f(lm_metrics.get('cer_lm'))}"
               if "wer_lm" in lm_metrics else ", no language model (see [lm] above)" if lm_metrics else "")
    say(f"[train] done: step {step}, {train_seconds:.0f} s, greedy wer={_f(final.get('wer'))} "
        f"cer={_f(final.get('cer'))}{with_lm}; model in {paths.model_dir}, metrics in {paths.output_data_dir}")
    return 0


def build_lm(lm_plan, model_dir: Path, model, processor, prepared, hp, step: int) -> dict:
    """train/lm.py's step after the model is saved: the n-gram from the transcripts trained on (held-out ones
    never), alpha/beta tuned on the evaluation clips (decoded here, as evaluation decodes them). Returns
    metrics.json's wer_lm, cer_lm and lm; logs `[eval] step=N wer_lm=X cer_lm=Y` (METRIC_DEFINITIONS)."""
    from common import batching
    from common.audio import TARGET_RATE

    from . import data, lm as lm_step
    from .progress import line

    inputs, references = [], []
    if prepared.eval is not None:
        clips = data.SpeechDataset(prepared.eval, train=False, min_samples=batching.min_samples(model.config))
        for i in range(len(clips)):
            item = clips[i]
            if item["index"] >= 0:  # unreadable files are left out, as evaluation leaves them out
                inputs.append(item["input_values"])
                references.append(prepared.eval.references[item["index"]])
    result = lm_step.build(
        lm_plan, model_dir, train_texts=prepared.train.references, chars_to_ignore=hp.chars_to_ignore,
        model=model if inputs else None, eval_inputs=inputs, eval_references=references,
        attention_mask=processor.feature_extractor.return_attention_mask or getattr(model, "exact_evaluation", False),
        seconds_per_frame=batching.frame_samples(model.config) / TARGET_RATE, log=say)
    if result.wer_lm is not None:
        say(line("eval", step=step, wer_lm=result.wer_lm, cer_lm=result.cer_lm))
    return result.metrics


def lm_failed(model_dir: Path, exc: BaseException) -> dict:
    """The LM step failed after the model was saved: remove what it wrote (the model then serves greedy, as a
    model without an LM does), say why, and let the job succeed with the model. metrics.json's `lm.error`."""
    import shutil
    import traceback

    from common import lm as common_lm

    shutil.rmtree(model_dir / common_lm.LM_DIR, ignore_errors=True)
    (model_dir / common_lm.ALPHABET_FILE).unlink(missing_ok=True)
    reason = str(exc) if isinstance(exc, TrainingError) else f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, TrainingError):
        say("".join(traceback.format_exception(exc)).rstrip())
    say(f"[lm] WARNING: no language model: {reason}. The trained model is saved without one (greedy "
        f"decoding); fix the cause and train again, or set lm_order=0 to skip this step.")
    return {"lm": {"error": reason}}


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["--help"], ["-h"], ["train", "--help"]):
        print(__doc__.strip() + "\n\n" + USAGE + "\n\n" + hyperparameters.help_text())
        return 0
    if argv not in ([], ["train"]):
        print(f"unexpected arguments {argv}\n{USAGE}", file=sys.stderr)
        return 2
    paths = OptML.from_env()
    try:
        # Settings: hyperparameters (SageMaker's own names accepted and logged), channels' input modes.
        raw = read_json(paths.hyperparameters_file, "hyperparameters")
        hp = hyperparameters.parse(raw)
        reserved = hyperparameters.reserved(raw)
        modes = check_input_modes(read_json(paths.inputdataconfig_file, "input data config"))
        # Several GPUs or hosts: hand over to torchrun, which runs this program once per GPU.
        from . import distributed

        if not distributed.in_worker():
            distributed.launch(distributed.read_cluster(paths.resourceconfig_file), distributed.gpu_count())
        if reserved and distributed.is_leader():
            say("[train] SageMaker's own hyperparameters, accepted and not used: "
                + ", ".join(f"{k}={v}" for k, v in sorted(reserved.items())))
        for name, mode in sorted(modes.items()):
            if mode.lower() == "fastfile" and distributed.is_leader():
                say(f"[data] channel {name}: FastFile mode (read-only; each file is fetched when first read)")
        _quiet_libraries()
        return run(paths, hp, reserved, hyperparameters.given(raw))
    except Exception as exc:  # noqa: BLE001 - every failure must reach the failure file
        from .reporting import close_all

        try:
            close_all("FAILED")
        except Exception:  # noqa: BLE001 - the job's own failure is the one to report
            pass
        report(paths.failure_file, exc)
        return 1


def _quiet_libraries() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()  # our own lines say what happens; errors still show
    transformers.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
