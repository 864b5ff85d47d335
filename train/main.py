"""The training program: SageMaker's training contract in, a serving-ready model directory out.

Usage: train [train]   (SageMaker runs `docker run IMAGE train`); `train --help` lists hyperparameters.
Every /opt/ml path derives from $OPT_ML when set (native runs and tests), else /opt/ml.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.paths import OptML

from . import hyperparameters
from .failure import TrainingError, report
from .progress import say

USAGE = "usage: train [train] | train --help   (settings come from input/config/hyperparameters.json)"


@dataclass
class Prepared:
    """Everything training needs, with the bookkeeping metrics.json reports."""
    processor: object
    vocab: dict
    train_ds: object
    eval_ds: object | None
    counts: dict = field(default_factory=dict)


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


def newest_checkpoint(checkpoints_dir: Path) -> tuple[Path, int] | None:
    """The checkpoint-N with the largest N that was completely written (trainer_state.json comes last)."""
    found = []
    for d in checkpoints_dir.glob("checkpoint-*") if checkpoints_dir.is_dir() else []:
        step = d.name.rpartition("-")[2]
        if step.isdigit() and (d / "trainer_state.json").is_file():
            found.append((int(step), d))
    if not found:
        return None
    step, path = max(found)
    return path, step


def read_vocab(channel_dir: Path) -> dict[str, int]:
    from common.text import PAD, UNK

    files = [channel_dir / "vocab.json"] if (channel_dir / "vocab.json").is_file() else sorted(channel_dir.glob("*.json"))
    if len(files) != 1:
        raise TrainingError(f"channel vocab ({channel_dir}) must hold one vocab.json, found "
                            f"{[f.name for f in files] or 'none'}")
    vocab = read_json(files[0], "vocab channel")
    if not vocab or not all(isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()):
        raise TrainingError(f"{files[0]} must map characters to integer ids, like the vocab.json of a "
                            f"Wav2Vec2CTCTokenizer")
    missing = [t for t in (PAD, UNK) if t not in vocab]
    if missing:
        raise TrainingError(f"{files[0]} lacks {', '.join(missing)}: the vocab needs [PAD] (the CTC blank) and [UNK]")
    return vocab


def choose_precision(setting: str) -> str:
    import torch

    cuda = torch.cuda.is_available()
    if setting == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if setting == "fp16" and not cuda:
        raise TrainingError("hyperparameter precision=fp16 needs a GPU; use fp32 (or bf16) on CPU")
    return setting


def prepare_data(paths: OptML, hp, checkpoint: Path | None) -> Prepared:
    """Steps 4-6: channels, vocabulary, label ids, duration filter, hold-out split."""
    from common import audio, modeldir, text

    from . import data

    train_ch = data.load_channel(paths.channel("train"), "train", max_skipped_fraction=hp.max_skipped_fraction)
    test_dir = paths.channel("test")
    test_ch = (data.load_channel(test_dir, "test", max_skipped_fraction=hp.max_skipped_fraction)
               if test_dir.is_dir() and any(test_dir.iterdir()) else None)
    counts = {"skipped_files": {ch.name: {"count": len(ch.skipped), "of": ch.total,
                                          "files": [f"{n}: {why}" for n, why in ch.skipped[:100]]}
                                for ch in (train_ch, test_ch) if ch is not None},
              "formats": {ch.name: ch.format for ch in (train_ch, test_ch) if ch is not None}}

    # Vocabulary: vocab channel, else the checkpoint being resumed, else built from the training text.
    vocab_dir = paths.channel("vocab")
    if vocab_dir.is_dir() and any(vocab_dir.iterdir()):
        vocab, vocab_from = read_vocab(vocab_dir), "vocab channel"
    elif checkpoint is not None and (checkpoint / "vocab.json").is_file():
        vocab, vocab_from = read_vocab(checkpoint), f"checkpoint {checkpoint.name}"
    elif train_ch.processed:
        raise TrainingError("channel train holds processed input_values/labels: add a vocab channel with the "
                            "vocab.json that made the labels")
    else:
        texts = [text.normalize(u.text, hp.chars_to_ignore) for u in train_ch.utterances]
        if not any(texts):
            raise TrainingError(f"transcripts in channel train have no usable characters after normalisation "
                                f"(lower-case, chars_to_ignore={hp.chars_to_ignore!r}): check the `text` values")
        vocab, vocab_from = text.build_vocab(texts), "training text"
    processor = modeldir.make_processor(vocab)  # attention mask settled once the model is known
    tok = processor.tokenizer
    say(f"[data] vocabulary of {len(vocab)} tokens from {vocab_from}")

    def encode(ch, is_train: bool):
        inputs, labels, unknown = [], [], {}
        dropped = {"empty_transcript": 0, "too_short": 0, "too_long": 0}
        for u in ch.utterances:
            if is_train and not (hp.min_duration_s <= u.seconds <= hp.max_duration_limit):
                dropped["too_short" if u.seconds < hp.min_duration_s else "too_long"] += 1
                continue
            if u.labels is not None:
                ids, x = u.labels, u.input_values
            else:
                t = text.normalize(u.text, hp.chars_to_ignore)
                if not t:
                    dropped["empty_transcript"] += 1
                    continue
                for c, n in text.unknown_chars([t], vocab).items():
                    unknown[c] = unknown.get(c, 0) + n
                ids, x = tok(t).input_ids, audio.normalize(u.input_values)
            inputs.append(x)
            labels.append(ids)
        if unknown:
            say(f"[data] channel {ch.name}: characters outside the vocabulary map to [UNK]: "
                + ", ".join(f"{c!r}x{n}" for c, n in sorted(unknown.items(), key=lambda kv: -kv[1])[:20]))
        if any(dropped.values()):
            say(f"[data] channel {ch.name}: dropped " + ", ".join(f"{n} {k}" for k, n in dropped.items() if n))
        return inputs, labels, unknown, dropped

    tr_in, tr_lab, tr_unk, tr_drop = encode(train_ch, True)
    if not tr_in:
        raise TrainingError(f"no training utterances left after filtering ({tr_drop}); check transcripts and "
                            f"min_duration_s={hp.min_duration_s}/max_duration_s={hp.max_duration_s}")
    unusable = {tok.unk_token_id, tok.convert_tokens_to_ids(tok.word_delimiter_token)}
    if all(set(ids) <= unusable for ids in tr_lab):
        raise TrainingError("transcripts in channel train have no usable characters: none is in the vocabulary")
    counts["dropped"] = {"train": tr_drop}
    counts["unknown_characters"] = {"train": tr_unk}
    train_ds = data.SpeechDataset(tr_in, tr_lab)
    eval_ds = None
    if test_ch is not None:
        te_in, te_lab, te_unk, te_drop = encode(test_ch, False)
        counts["dropped"]["test"], counts["unknown_characters"]["test"] = te_drop, te_unk
        eval_ds = data.SpeechDataset(te_in, te_lab) if te_in else None
    elif hp.test_split > 0:
        pairs = list(zip(tr_in, tr_lab))
        order = __import__("numpy").random.default_rng(hp.seed).permutation(len(pairs))
        n_test = min(len(pairs) - 1, max(1, round(len(pairs) * hp.test_split))) if len(pairs) > 1 else 0
        if n_test:
            test_idx = set(order[:n_test].tolist())
            train_ds = data.SpeechDataset([p[0] for i, p in enumerate(pairs) if i not in test_idx],
                                          [p[1] for i, p in enumerate(pairs) if i not in test_idx])
            eval_ds = data.SpeechDataset([p[0] for i, p in enumerate(pairs) if i in test_idx],
                                         [p[1] for i, p in enumerate(pairs) if i in test_idx])
            say(f"[data] no test channel: held out {n_test} training utterances (test_split={hp.test_split})")
    train_ds.speed_perturbation = hp.speed_perturbation
    say(f"[data] training on {len(train_ds)} utterances ({train_ds.seconds / 60:.1f} min of audio), "
        f"evaluating on {len(eval_ds) if eval_ds else 0}")
    return Prepared(processor, vocab, train_ds, eval_ds, counts)


def run(paths: OptML, hp) -> int:
    import time

    import torch
    from transformers import Trainer, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from common.convs import convs_as_matmuls

    from . import distributed, model as model_source, outputs
    from .collator import CTCCollator
    from .metrics import argmax_logits, make_compute_metrics
    from .progress import ProgressCallback
    from .stopping import SIGTERM_EXIT_CODE, StopCallback, time_budget_scheduler

    leader = distributed.is_leader()
    # 3. Outputs must be writable before hours are spent training.
    outputs.check_writable(paths.checkpoints_dir, *((paths.model_dir, paths.output_data_dir) if leader else ()))
    set_seed(hp.seed)
    resume = newest_checkpoint(paths.checkpoints_dir)

    # 4-6. Data and vocabulary.
    source = str(paths.channel("model")) if paths.channel("model").is_dir() else hp.model_name
    prep = prepare_data(paths, hp, resume[0] if resume else None)
    tok = prep.processor.tokenizer

    # 7. Model.
    model, pretrained = model_source.load(source, hp, prep.vocab, len(tok), tok.pad_token_id, log=say)
    # Layer-norm feature encoders take an attention mask; group-norm ones (wav2vec2-base) were trained on
    # zero-padded batches without one. The saved processor records the choice for serving.
    prep.processor.feature_extractor.return_attention_mask = model.config.feat_extract_norm == "layer"
    freeze = hp.freeze_feature_encoder == "true" or (hp.freeze_feature_encoder == "auto" and pretrained)
    if freeze:
        model.freeze_feature_encoder()
    if hp.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if not torch.cuda.is_available():
        # Same parameters and saved weights; CPU steps about twice as fast (common/convs.py).
        convs_as_matmuls(model)
    precision = choose_precision(hp.precision)
    say(f"[model] {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, feature encoder "
        f"{'frozen' if freeze else 'trained'}, precision {precision}")

    # 8. Trainer.
    has_eval = prep.eval_ds is not None
    eval_strategy = "no" if not has_eval else "steps" if hp.eval_steps > 0 else "no" if hp.max_steps > 0 else "epoch"
    multi_host = int(os.environ.get("WORLD_SIZE", "1")) > int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    args = TrainingArguments(
        output_dir=str(paths.checkpoints_dir),
        per_device_train_batch_size=hp.train_batch_size, per_device_eval_batch_size=hp.eval_batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate, weight_decay=hp.weight_decay, max_grad_norm=hp.max_grad_norm,
        warmup_steps=hp.warmup_steps, lr_scheduler_type=hp.lr_scheduler,
        num_train_epochs=hp.epochs, max_steps=hp.max_steps,
        logging_steps=hp.logging_steps, eval_strategy=eval_strategy,
        eval_steps=hp.eval_steps if hp.eval_steps > 0 else None,
        eval_on_start=hp.eval_on_start and has_eval,
        save_strategy="steps", save_steps=hp.save_steps, save_total_limit=hp.save_total_limit,
        save_on_each_node=multi_host,  # each host keeps its own /opt/ml/checkpoints
        seed=hp.seed, bf16=precision == "bf16", fp16=precision == "fp16",
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # also what makes accelerate run several CPU processes (gloo)
        optim="adamw_torch_fused",  # one kernel for all parameters: the optimizer step was ~20% of a CPU step
        train_sampling_strategy="group_by_length" if hp.group_by_length else "random",
        remove_unused_columns=False, label_names=["labels"], report_to="none", disable_tqdm=True,
        dataloader_num_workers=hp.dataloader_num_workers,
        ddp_find_unused_parameters=hp.layerdrop > 0,
    )
    stop = StopCallback(hp.max_train_seconds)
    progress = ProgressCallback()
    lengths = prep.train_ds.lengths

    class CTCTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            if self.args.train_sampling_strategy == "group_by_length":  # lengths precomputed at load
                return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                            lengths=lengths)
            return super()._get_train_sampler(train_dataset)

        def _get_eval_sampler(self, eval_dataset):
            return torch.utils.data.SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

        def create_scheduler(self, num_training_steps, optimizer=None):
            if hp.max_train_seconds > 0 and self.lr_scheduler is None:
                self.lr_scheduler = time_budget_scheduler(
                    optimizer or self.optimizer, kind=hp.lr_scheduler, warmup_steps=hp.warmup_steps,
                    total_steps=num_training_steps, max_train_seconds=hp.max_train_seconds)
                return self.lr_scheduler
            return super().create_scheduler(num_training_steps, optimizer)

    trainer = CTCTrainer(
        model=model, args=args, data_collator=CTCCollator(attention_mask=prep.processor.feature_extractor.return_attention_mask),
        train_dataset=prep.train_ds, eval_dataset=prep.eval_ds, processing_class=prep.processor,
        compute_metrics=make_compute_metrics(tok) if has_eval else None,
        preprocess_logits_for_metrics=argmax_logits if has_eval else None,
        callbacks=[progress, stop],
    )
    trainer.remove_callback(PrinterCallback)  # our [metrics]/[eval] lines replace its dict dumps

    # 9. Train, resuming from the newest checkpoint.
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
        return SIGTERM_EXIT_CODE
    if stop.reason:
        say(f"[train] max_train_seconds={hp.max_train_seconds:g} reached at step {step}")

    # 10. Final evaluation, then model/ and output/data/ (first process only).
    if has_eval and progress.last_eval_step != step:
        trainer.evaluate()
    final = progress.eval_history[-1] if progress.eval_history else {}
    if not leader:
        return 0
    outputs.save_model(paths.model_dir, trainer.accelerator.unwrap_model(trainer.model), prep.processor)
    epochs_done = float(trainer.state.epoch or 0.0)
    metrics = {
        "wer": final.get("wer"), "cer": final.get("cer"), "eval_loss": final.get("loss"),
        "steps": step, "epochs": round(epochs_done, 3),
        "train_seconds": round(train_seconds, 2),
        "train_audio_seconds": round(prep.train_ds.seconds, 2),
        "audio_seconds_per_second": round(epochs_done * prep.train_ds.seconds / max(train_seconds, 1e-9), 2),
        "train_loss": result.training_loss,
        "resumed_from_step": resume[1] if resume else None,
        "stopped_by": stop.reason, "precision": precision,
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
        "eval_history": progress.eval_history, "train_history": progress.train_history,
        "hyperparameters": asdict(hp), **prep.counts,
    }
    outputs.write_metrics(paths.output_data_dir, metrics)
    outputs.plot(paths.output_data_dir, progress.train_history, progress.eval_history)
    say(f"[train] done: step {step}, {train_seconds:.0f} s, wer={_f(final.get('wer'))} cer={_f(final.get('cer'))}; "
        f"model in {paths.model_dir}, metrics in {paths.output_data_dir}")
    return 0


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
        # 1. Settings.
        hp = hyperparameters.parse(read_json(paths.hyperparameters_file, "hyperparameters"))
        read_json(paths.inputdataconfig_file, "input data config")  # validated; channels are read from disk
        # 2. Several GPUs or hosts: hand over to torchrun, which runs this program once per GPU.
        from . import distributed

        if not distributed.in_worker():
            distributed.launch(distributed.read_cluster(paths.resourceconfig_file), distributed.gpu_count())
        _quiet_libraries()
        return run(paths, hp)
    except Exception as exc:  # noqa: BLE001 - every failure must reach the failure file
        report(paths.failure_file, exc)
        return 1


def _quiet_libraries() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()  # our own lines say what happens; errors still show
    transformers.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
