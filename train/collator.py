"""CTC padding collator: audio padded with zeros, labels padded with -100 (ignored by the CTC loss).

Besides the model's inputs a batch carries `example_index` (which examples, -1 for an unreadable
evaluation file), `input_lengths` (samples per clip, for trimming each clip's output frames as serving
does) and `skipped` (files found unreadable while the batch was made, in a DataLoader worker: this is how
those reports reach the training process). The Trainer removes the three before the forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

LABEL_PAD = -100
EXTRA_KEYS = ("example_index", "input_lengths", "skipped")


@dataclass
class CTCCollator:
    # Group-norm feature encoders (modeldir.feature_encoder_norm; wav2vec2-base) were trained without a mask and
    # expect zero padding instead; layer-norm models (large, the tiny model) take the mask.
    attention_mask: bool = True
    pad_to_multiple_of: int = 1

    def __call__(self, features: list[dict]) -> dict:
        lengths = [len(f["input_values"]) for f in features]
        width = -(-max(lengths) // self.pad_to_multiple_of) * self.pad_to_multiple_of
        inputs = np.zeros((len(features), width), dtype=np.float32)
        mask = np.zeros((len(features), width), dtype=np.int64)
        for i, f in enumerate(features):
            inputs[i, : lengths[i]] = f["input_values"]
            mask[i, : lengths[i]] = 1
        label_width = max(len(f["labels"]) for f in features)
        labels = np.full((len(features), label_width), LABEL_PAD, dtype=np.int64)
        for i, f in enumerate(features):
            labels[i, : len(f["labels"])] = f["labels"]
        batch = {"input_values": torch.from_numpy(inputs), "labels": torch.from_numpy(labels)}
        if self.attention_mask:
            batch["attention_mask"] = torch.from_numpy(mask)
        batch["example_index"] = torch.tensor([f.get("index", -1) for f in features], dtype=torch.long)
        batch["input_lengths"] = torch.tensor(lengths, dtype=torch.long)
        batch["skipped"] = [s for f in features for s in f.get("skipped", ())]
        return batch
