"""The transformers Trainer as this program uses it: arguments, samplers, skip accounting, the CTC decode.

- Training batches are grouped by the indexed lengths (no audio is read to sort them); evaluation runs
  longest clip first, one pass, in a fixed order on every process.
- Evaluation decodes as serving does: the logits each clip gets alone (padding masked; a group-norm encoder
  patched by common.batching.make_exact, as serving patches it), argmax, each clip cut to its own output
  frames, CTC collapse with special tokens read as blank (common.ctc.greedy, common.ctc.Vocabulary.dropped)
  on the device, then common.ctc.decode_text; WER/CER compare with
  the normalised transcripts. Only the collapsed tokens are gathered across processes.
- Unreadable files met by DataLoader workers arrive in their batches (`skipped`); SkipTracker counts each
  file once over the whole run, merges the counts of all processes (on the training device) and fails the
  job past max_skipped_fraction.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from common import ctc

from .collator import LABEL_PAD
from .collective import max_across_processes
from .data import Examples, SpeechDataset, output_frames
from .index import ChannelIndex, Strings, check_skipped
from .metrics import error_rates
from .progress import say
from .stopping import time_budget_scheduler

MAX_AUTO_WORKERS = 8


def auto_workers(setting: int, environ=os.environ) -> int:
    """DataLoader workers per training process: `setting` when >= 0, else one less than the CPUs each
    process has (the training loop needs one), between 1 and MAX_AUTO_WORKERS."""
    if setting >= 0:
        return setting
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cpus // max(1, int(environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_AUTO_WORKERS, per_process - 1))


def training_arguments(hp, checkpoints_dir, precision: str, has_eval: bool, workers: int) -> TrainingArguments:
    cuda = torch.cuda.is_available()
    eval_strategy = "no" if not has_eval else "steps" if hp.eval_steps > 0 else "no" if hp.max_steps > 0 else "epoch"
    multi_host = int(os.environ.get("WORLD_SIZE", "1")) > int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return TrainingArguments(
        output_dir=str(checkpoints_dir),
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
        dataloader_pin_memory=cuda,
        use_cpu=not cuda,  # also what makes accelerate run several CPU processes (gloo)
        optim="adamw_torch_fused",  # one kernel for all parameters: the optimizer step was ~20% of a CPU step
        train_sampling_strategy="group_by_length" if hp.group_by_length else "random",
        remove_unused_columns=False, label_names=["labels"], report_to="none", disable_tqdm=True,
        dataloader_num_workers=workers, dataloader_persistent_workers=workers > 0,
        ddp_find_unused_parameters=hp.layerdrop > 0,
    )


class SkipTracker(TrainerCallback):
    """Files found unreadable after indexing (by DataLoader workers, in training or evaluation).

    Each file counts once per run. After every step the processes max-reduce how many new files they found;
    when any did, they merge their per-entry flags, so every process holds the same counts and they all
    fail at the same step when a channel passes max_skipped_fraction (with the files found at indexing)."""

    def __init__(self, indexes: dict[str, ChannelIndex], max_skipped_fraction: float,
                 log: Callable[[str], None] = say):
        self.indexes, self.max_skipped_fraction, self.log = indexes, max_skipped_fraction, log
        self.found = {name: np.zeros(len(ix), dtype=np.uint8) for name, ix in indexes.items()}
        self.reasons: dict[tuple[str, int], str] = {}
        self.pending = 0

    def record(self, reports) -> None:
        for channel, entry, name, reason in reports or ():
            if not self.found[channel][entry]:
                self.found[channel][entry] = 1
                self.reasons[(channel, entry)] = reason
                self.pending += 1
                self.log(f"[data] skipped unreadable {channel}/{name}: {reason}")

    def sync(self, device) -> None:
        """Collective: every process calls it at the same point."""
        if max_across_processes([self.pending], device)[0] == 0:
            return
        self.pending = 0
        names = list(self.found)
        merged = max_across_processes(np.concatenate([self.found[n] for n in names]), device, torch.uint8)
        start = 0
        for n in names:
            self.found[n] = merged[start:start + len(self.found[n])].astype(np.uint8)
            start += len(self.found[n])
        for n, ix in self.indexes.items():
            files = self._files(n)
            check_skipped(n, len(files), ix.total, self.max_skipped_fraction,
                          tuple(files[0].split(": ", 1)) if files else None, " (counted over the whole run)")

    def on_step_end(self, args, state, control, **kwargs):
        self.sync(args.device)

    def _files(self, channel: str) -> list[str]:
        ix = self.indexes[channel]
        out = [f"{name}: {why}" for name, why in ix.skipped]
        for entry in np.flatnonzero(self.found[channel]).tolist():
            why = self.reasons.get((channel, entry), "unreadable (named in the log of the process that read it)")
            out.append(f"{ix.names[entry]}: {why}")
        return out

    def summary(self) -> dict:
        """metrics.json's skipped_files: per channel, count, of (entries listed) and the first 100 named."""
        return {n: {"count": len(ix.skipped) + int(self.found[n].sum()), "of": ix.total,
                    "files": self._files(n)[:100]} for n, ix in self.indexes.items()}


def collapsed_tokens(logits: torch.Tensor, frames: torch.Tensor, blank_id: int, drop=()) -> torch.Tensor:
    """Greedy CTC tokens of each clip (its own frames only; the ids in `drop`, special tokens, read as blank
    as serving reads them: common.ctc.Vocabulary.dropped), batch x longest, padded with -100, on the
    logits' device (so Trainer can gather them across processes)."""
    seqs = ctc.greedy(logits, blank_id, frames, drop)
    width = max([1] + [len(s.tokens) for s in seqs])
    out = torch.full((len(seqs), width), LABEL_PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s.tokens)] = torch.tensor(s.tokens, dtype=torch.long)
    return out.to(logits.device)


def make_compute_metrics(tokenizer, references: Strings):
    """compute_metrics: predictions are collapsed tokens, label_ids the example indices (-1: unreadable)."""

    def compute_metrics(eval_pred) -> dict[str, float]:
        tokens = np.asarray(eval_pred.predictions)
        rows = np.asarray(eval_pred.label_ids).reshape(len(tokens), -1)[:, 0]
        refs, hyps = [], []
        for seq, i in zip(tokens, rows.tolist()):
            if i < 0:
                continue
            hyps.append(ctc.decode_text(tokenizer, ctc.Collapsed([int(t) for t in seq if t >= 0], [], [])))
            refs.append(references[i])
        return error_rates(refs, hyps)

    return compute_metrics


class CTCTrainer(Trainer):
    """Trainer with length-grouped batches from indexed lengths, a time-budget schedule, the serving
    decode in evaluation, and the skip reports of each batch handed to `skips`."""

    def __init__(self, *args, hp, skips: SkipTracker, vocab: ctc.Vocabulary, train_mask: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.hp, self.skips, self.vocab, self.train_mask = hp, skips, vocab, train_mask

    def _get_train_sampler(self, train_dataset=None):
        if self.args.train_sampling_strategy == "group_by_length":
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=self.train_dataset.lengths)
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        # Longest first: little padding, and an out-of-memory shows in the first batch. Every process gets
        # the same order; accelerate gives each its share of the batches.
        return sorted(range(len(eval_dataset)), key=lambda i: -eval_dataset.lengths[i])

    def create_scheduler(self, num_training_steps, optimizer=None):
        if self.hp.max_train_seconds > 0 and self.lr_scheduler is None:
            self.lr_scheduler = time_budget_scheduler(
                optimizer or self.optimizer, kind=self.hp.lr_scheduler, warmup_steps=self.hp.warmup_steps,
                total_steps=num_training_steps, max_train_seconds=self.hp.max_train_seconds)
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.skips.record(inputs.pop("skipped", ()))
        inputs.pop("example_index", None)
        inputs.pop("input_lengths", None)
        if not self.train_mask:  # group-norm encoders train on zero-padded batches without a mask
            inputs.pop("attention_mask", None)
        return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        self.skips.record(inputs.pop("skipped", ()))
        index = inputs.pop("example_index")
        samples = inputs.pop("input_lengths")
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs)
        loss = outputs.loss.detach().mean() if outputs.loss is not None else None
        if prediction_loss_only:
            return loss, None, None
        config = self.accelerator.unwrap_model(model).config
        frames = torch.from_numpy(output_frames(config, samples.numpy())).to(outputs.logits.device)
        tokens = collapsed_tokens(outputs.logits, frames, self.vocab.blank_id, self.vocab.dropped)
        return loss, tokens, index.to(tokens.device)[:, None]


def build(model, processor, train: Examples, evaluation: Examples | None, hp, args: TrainingArguments,
          skips: SkipTracker, callbacks: list, min_samples: int) -> CTCTrainer:
    from transformers.trainer_callback import PrinterCallback

    from .callbacks import AugmentationStartCallback
    from .checkpointing import ManifestCallback
    from .collator import CTCCollator

    train_ds = SpeechDataset(train, train=True, min_samples=min_samples, speed_perturbation=hp.speed_perturbation,
                             reverberation=hp.reverberation, voice_perturbation=hp.voice_perturbation,
                             augmentation_start_step=hp.augmentation_start_step)
    eval_ds = SpeechDataset(evaluation, train=False, min_samples=min_samples) if evaluation is not None else None
    tok = processor.tokenizer
    # Training passes the attention mask to layer-norm encoders only; evaluation also to a group-norm encoder
    # made exact (train/main.py), so that each clip gets the logits serving gives it alone.
    train_mask = processor.feature_extractor.return_attention_mask
    trainer = CTCTrainer(
        model=model, args=args, hp=hp, skips=skips, vocab=ctc.Vocabulary(tok, model.lm_head.out_features),
        train_mask=train_mask,
        data_collator=CTCCollator(attention_mask=train_mask or getattr(model, "exact_evaluation", False)),
        train_dataset=train_ds, eval_dataset=eval_ds, processing_class=processor,
        compute_metrics=make_compute_metrics(tok, evaluation.references) if evaluation is not None else None,
        callbacks=[skips, *callbacks, ManifestCallback(),
                   *([AugmentationStartCallback(train_ds)] if train_ds.step is not None else [])],
    )
    trainer.remove_callback(PrinterCallback)  # our [metrics]/[eval] lines replace its dict dumps
    return trainer
