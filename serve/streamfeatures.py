"""A live stream's feature-encoder frames, computed once (serve/streaming.py's sliding windows reuse them).

Each window of a stream used to run the whole model over L + S + R frames to commit S of them: the
convolutional feature encoder (about half of a tiny model's pass on a CPU, bench/README.md) recomputed 6x the
audio. Its receptive field is local: frame k of Wav2Vec2's encoder sees samples [320k, 320k + 400) and nothing
else (no padding), except through normalisation:

- a LAYER-norm encoder (feat_extract_norm="layer": wav2vec2-large-lv60, XLS-R, MMS) normalises each frame over
  its channels, so frames computed from a piece of audio are exactly (to float rounding) the frames a longer
  input gives. EXACT: only the new audio's frames are computed, then feature projection + transformer run
  over the window's frames, cached and new.
- a GROUP-norm encoder (wav2vec2-base layout) normalises each channel of its first layer over the whole input.
  Here a channel is normalised over the stream's RUNNING statistics (its mean and variance over the stream's
  frames so far, older frames fading past RUNNING_S) instead of over each window. An APPROXIMATION, measured:
  bench/streaming compares streamed finals with /invocations (bench/README.md, Live streaming);
  SERVE_STREAM_FEATURE_CACHE=exact keeps such models on whole-window passes.

Input normalisation (the feature extractor's do_normalize, zero mean and unit variance) likewise uses the
stream's running statistics of its samples (`RunningStats`), applied by serve/streaming.py to each new piece
of audio, instead of each window's own. serve/streaming.py runs a stream's first seconds (WARMUP_S) as whole
windows, so that no kept frame is normalised with the statistics of a second of audio.

Wav2Vec2ForCTC only (wav2vec2, XLS-R, MMS; other architectures keep whole-window passes), without the
downsampling adapter (add_adapter). `forward` calls Wav2Vec2Model's parts the way its forward does
(feature_extractor.conv_layers, feature_projection, encoder, then lm_head; transformers 5.23), with no
attention mask: the windows of one pass have equal lengths (serve/model.py's batcher key).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

EXACT, RUNNING = "exact", "running"
RUNNING_S = 30.0  # statistics older than about this many seconds fade out (a long stream's level changes)


def mode(model, setting: str = "auto") -> str | None:
    """How `model` (a prepared Hugging Face CTC model) caches stream frames: EXACT, RUNNING or None (whole-window
    passes). setting: SERVE_STREAM_FEATURE_CACHE, "auto" (EXACT or RUNNING), "exact" (EXACT only) or "off"."""
    config = model.config
    if setting == "off" or type(model).__name__ != "Wav2Vec2ForCTC" or getattr(config, "add_adapter", False):
        return None
    if config.feat_extract_norm == "layer":
        return EXACT
    if config.feat_extract_norm == "group" and setting == "auto":
        return RUNNING
    return None


class RunningStats:
    """Mean and variance of values seen so far, per channel, with older values fading past `horizon` values
    (sums scaled down so that they count `horizon` values). Sums in float64."""

    def __init__(self, horizon: float, channels: int = 1):
        self.horizon = horizon
        self.sum = np.zeros(channels)
        self.sumsq = np.zeros(channels)
        self.count = 0.0

    def add(self, values: np.ndarray) -> None:
        """values: (n,) for one channel, or (channels, n)."""
        values = np.asarray(values, np.float64)
        n = values.shape[-1]
        if not n:
            return
        self.sum = self.sum + values.sum(-1)
        self.sumsq = self.sumsq + (values * values).sum(-1)
        self.count += n
        if self.count > self.horizon:
            fade = self.horizon / self.count
            self.sum, self.sumsq, self.count = self.sum * fade, self.sumsq * fade, self.horizon

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1.0)

    @property
    def var(self) -> np.ndarray:
        return np.maximum(self.sumsq / max(self.count, 1.0) - self.mean ** 2, 0.0)

    def normalize(self, audio: np.ndarray) -> np.ndarray:
        """The feature extractor's zero-mean unit-variance normalisation (its 1e-7 inside the square root),
        with these statistics (one channel)."""
        return ((audio - self.mean[0]) / np.sqrt(self.var[0] + 1e-7)).astype(np.float32)


@dataclass
class Window:
    """One stream window, as the batcher carries it. audio: the normalised samples of the window's new frames
    (frames [known, end): samples [known * F, (end - 1) * F + RF)), or none when every frame is cached;
    cached: the features of frames [first, known) (frames x conv channels, on the device, model dtype; None
    for none);
    stats: the stream's RunningStats of first-layer channels (RUNNING mode; updated by `forward`)."""
    audio: np.ndarray
    cached: torch.Tensor | None
    stats: RunningStats | None = None

    def __len__(self) -> int:  # the batcher orders clips by length
        return len(self.audio)

    @property
    def cached_frames(self) -> int:
        return 0 if self.cached is None else len(self.cached)


@dataclass(frozen=True)
class Output:
    logits: torch.Tensor    # the window's frames x vocabulary, on the device
    features: torch.Tensor  # the new frames' features (frames x conv channels), to cache


@torch.inference_mode()
def forward(model, mode_: str, windows: list[Window], *, device, dtype) -> list[Output]:
    """One pass for windows of equal shapes (the same number of new samples and of cached frames). RUNNING mode
    adds each window's first-layer values to its stats before normalising with them."""
    convs = model.wav2vec2.feature_extractor.conv_layers
    new = None
    if len(windows[0].audio):
        h = torch.from_numpy(np.stack([w.audio for w in windows])).to(device).to(dtype)[:, None]
        layers = convs
        if mode_ == RUNNING:
            first = convs[0]
            pre = first.conv(h).float()  # (batch, channels, frames)
            means, scales = [], []
            for w, values in zip(windows, pre):
                w.stats.add(values.double().cpu().numpy())
                means.append(w.stats.mean)
                scales.append(1.0 / np.sqrt(w.stats.var + first.layer_norm.eps))
            mean = torch.as_tensor(np.stack(means), dtype=torch.float32, device=device)[:, :, None]
            scale = torch.as_tensor(np.stack(scales), dtype=torch.float32, device=device)[:, :, None]
            norm = first.layer_norm
            h = (pre - mean) * scale * norm.weight.float()[:, None] + norm.bias.float()[:, None]
            h = first.activation(h.to(dtype))
            layers = convs[1:]
        for layer in layers:
            h = layer(h)
        new = h.transpose(1, 2)  # (batch, frames, channels)
    if windows[0].cached_frames:
        cached = torch.stack([w.cached for w in windows])
        features = cached if new is None else torch.cat([cached, new], dim=1)
    else:
        features = new
    w2v = model.wav2vec2
    hidden, _ = w2v.feature_projection(features)
    hidden = w2v.encoder(hidden).last_hidden_state
    logits = model.lm_head(hidden)
    empty = features[:, :0]
    return [Output(logits[i], empty[i] if new is None else new[i]) for i in range(len(windows))]
