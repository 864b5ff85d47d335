"""A straightforward seed-style training script (bench only): what the seed's train.py did, on CPU.

A save_to_disk dataset with `audio` and `text`; the seed's preprocessing (datasets.map calling the
processor for input_values and the tokenizer for labels); the seed's padding collator (processor.pad);
a plain transformers Trainer with group_by_length. Prints one JSON line with its timings.

usage: python -m bench.lib.seed_train DATASET CONFIG_DIR OUT --steps N --batch B --lr LR --warmup W [--freeze]
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DataCollatorCTCWithPadding:
    """The seed's collator: processor.pad for inputs and labels, label padding replaced by -100."""
    processor: object
    padding: bool = True

    def __call__(self, features):
        input_features = [{"input_values": f["input_values"]} for f in features]
        label_features = [{"input_ids": f["labels"]} for f in features]
        batch = self.processor.pad(input_features, padding=self.padding, return_tensors="pt")
        labels_batch = self.processor.tokenizer.pad(label_features, padding=self.padding, return_tensors="pt")
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        batch["labels"] = labels
        return batch


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("dataset", type=Path)
    p.add_argument("config_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--freeze", action="store_true", help="freeze the feature encoder (the seed did, on a pretrained model)")
    args = p.parse_args(argv)
    started = time.perf_counter()

    import numpy as np
    import soundfile as sf
    import torch
    from datasets import load_from_disk
    from transformers import Trainer, TrainingArguments, Wav2Vec2Config, Wav2Vec2ForCTC, set_seed

    from common import modeldir, text

    set_seed(args.seed)
    ds = load_from_disk(str(args.dataset))
    vocab = text.build_vocab([text.normalize(t, text.DEFAULT_CHARS_TO_IGNORE) for t in ds["text"]])
    processor = modeldir.make_processor(vocab)

    def prepare_dataset(batch):
        # The seed's prepare_dataset (audio decoded with soundfile; the seed's datasets decoded it for it).
        speech, rate = sf.read(io.BytesIO(batch["audio"]["bytes"]), dtype="float32")
        batch["input_values"] = processor(speech, sampling_rate=rate).input_values[0]
        batch["labels"] = processor(text=text.normalize(batch["text"], text.DEFAULT_CHARS_TO_IGNORE)).input_ids
        batch["seconds"] = len(speech) / rate
        return batch

    ds = ds.map(prepare_dataset, remove_columns=ds.column_names)
    audio_seconds = float(np.sum(ds["seconds"]))
    ds = ds.remove_columns(["seconds"])
    prepared = time.perf_counter()

    config = Wav2Vec2Config.from_pretrained(args.config_dir, vocab_size=len(processor.tokenizer),
                                            pad_token_id=processor.tokenizer.pad_token_id, ctc_loss_reduction="mean")
    model = Wav2Vec2ForCTC(config)
    if args.freeze:
        model.freeze_feature_encoder()
    training_args = TrainingArguments(
        output_dir=str(args.out), train_sampling_strategy="group_by_length",  # 5.x name of group_by_length=True
        per_device_train_batch_size=args.batch,
        max_steps=args.steps, learning_rate=args.lr, warmup_steps=args.warmup, save_steps=10**6,
        logging_steps=max(1, args.steps // 4), seed=args.seed, report_to="none", disable_tqdm=True,
        fp16=torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=training_args, data_collator=DataCollatorCTCWithPadding(processor),
                      train_dataset=ds, processing_class=processor.feature_extractor)
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    epochs = float(trainer.state.epoch or 0.0)
    print(json.dumps({"steps": trainer.state.global_step, "epochs": epochs, "train_seconds": train_seconds,
                      "train_audio_seconds": audio_seconds, "prepare_seconds": prepared - started,
                      "audio_seconds_per_second": epochs * audio_seconds / train_seconds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
