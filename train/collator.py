"""CTC padding collator: audio padded with zeros, labels padded with -100 (ignored by the CTC loss)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

LABEL_PAD = -100


@dataclass
class CTCCollator:
    # Models with feat_extract_norm="group" (wav2vec2-base) were trained without an attention mask and
    # expect zero padding instead; layer-norm models (large, the tiny model) take the mask.
    attention_mask: bool = True
    pad_to_multiple_of: int = 1

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
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
        return batch
