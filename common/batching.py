"""Exact batching: a zero-padded batch gives every clip the logits it gets alone.

Hugging Face's CTC audio models let padding reach real frames, so a clip's transcript can depend on which
clips shared its forward pass. Where, in transformers 5.23 (each place proven by tests/test_batching.py):

- group-norm feature encoders (wav2vec2-base, HuBERT/WavLM/UniSpeech(-SAT)/SEW/SEW-D base, conformer): the
  first convolution's output is normalised over the whole padded time axis, an attention mask or not;
- without an attention mask, padded frames are attended to and feed the positional convolution;
- convolutions over time after the encoder zeroed the padded frames read frames that are no longer zero
  where a clip alone sees the convolution's zero padding: HuBERT's positional convolution after
  `conv_pos_batch_norm`, Data2VecAudio's stack of positional convolutions, the conformer's depthwise
  convolutions, SEW-D's `ConvLayer` (`conv_kernel_size`) and the Wav2Vec2 adapter (`add_adapter`);
- SEW and SEW-D pool frames by `squeeze_factor`: the batch's pooled mask (max-pooled) counts a clip's last,
  partly padded window as a frame the clip alone does not have (every real frame attends to it), and the
  upsampled output keeps values there where the clip alone has zeros;
- batch norms in training mode (conformer, HuBERT `conv_pos_batch_norm`) take statistics over padding.

`make_exact(model)` patches a *ForCTC model in place so that every such place sees each clip's own frames
only: group norms take per-clip statistics over the clip's own frames (ClipGroupNorm), every convolution over
time reads zeros past a clip's end (a forward pre-hook), SEW's pooled attention mask counts whole windows only,
its upsampled tail is zeroed, and batch norms in training take statistics over real frames (ClipBatchNorm1d).
The lengths come from the attention mask the model is called with, so a patched model must be called with
one (`padded_forward` always passes it). Parameters, buffers and their names are unchanged, so state dicts
and saved weights are too; without an attention mask the model computes exactly what transformers computes.

Results: float32 batched logits equal one-clip logits to float rounding (different matrix shapes sum in
different orders; tests/test_batching.py bounds it), and argmax transcripts are identical; bfloat16 and
float16 differ from their own one-clip pass by their own rounding (tolerances in the tests).

A patched model keeps the lengths of the forward pass in progress on the model (so that gradient
checkpointing's recomputation sees them): run one forward pass at a time per model instance, as serving's
batcher thread and training do.

One file because every patch above is chosen by one plan of the model's modules (`_plan`) and reads the same
per-forward lengths (`_state`), which come from the frame arithmetic at the top (`output_frames`,
`min_samples`); split, the modules would share private state.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .convs import ChannelNorm

# model_type of every architecture whose exactness tests/test_batching.py proves.
EXACT_MODEL_TYPES = frozenset({
    "wav2vec2", "wav2vec2-conformer", "hubert", "wavlm", "data2vec-audio", "unispeech", "unispeech-sat", "sew",
    "sew-d",
})


# Frames -----------------------------------------------------------------------------------------------
def _conv_frames(n: int, kernel: int, stride: int, padding: int = 0) -> int:
    return max((n + 2 * padding - kernel) // stride + 1, 0)


def feature_frames(config, samples: int) -> int:
    """Frames the convolutional feature encoder makes from `samples` 16 kHz samples (0 when the clip is
    shorter than its receptive field): the encoder's sequence length. Any architecture's config."""
    n = int(samples)
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        n = _conv_frames(n, kernel, stride)
    return n


def _adapter_frames(config, frames: int, layers: int) -> int:
    # Wav2Vec2AdapterLayer: Conv1d(kernel adapter_kernel_size, stride adapter_stride, padding 1).
    for _ in range(layers):
        frames = _conv_frames(frames, config.adapter_kernel_size, config.adapter_stride, 1)
    return frames


def output_frames(config, samples: int) -> int:
    """Logit frames (CTC frames) a *ForCTC model of this config makes from `samples` samples: the feature
    encoder's frames, reduced further by the adapter's strided convolutions when `add_adapter` is set."""
    frames = feature_frames(config, samples)
    if getattr(config, "add_adapter", False):
        frames = _adapter_frames(config, frames, config.num_adapter_layers)
    return frames


def frame_samples(config) -> int:
    """Input samples per output frame (320 for wav2vec2: 20 ms at 16 kHz)."""
    stride = math.prod(config.conv_stride)
    if getattr(config, "add_adapter", False):
        stride *= config.adapter_stride ** config.num_adapter_layers
    return stride


def receptive_field(config) -> int:
    """The fewest samples that give one feature frame (400 for wav2vec2), and so one output frame: the
    adapter's padded convolutions make a frame from a single frame."""
    field, jump = 1, 1
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        field += (kernel - 1) * jump
        jump *= stride
    return field


def min_samples(config) -> int:
    """The fewest samples a model of this config can run on: one frame's receptive field, or for SEW and
    SEW-D one pooling window of `squeeze_factor` frames (transformers fails on fewer). Pad shorter clips."""
    squeeze = getattr(config, "squeeze_factor", 1) or 1
    return receptive_field(config) + (squeeze - 1) * math.prod(config.conv_stride)


# Per-forward lengths ------------------------------------------------------------------------------------
class _Lengths:
    """Each clip's length at each level of the model during the forward pass in progress: set by the base
    model's pre-hook from the attention mask, read by the patched modules (None: no mask, no change)."""

    def __init__(self, config):
        self.config = config
        self.samples: list[int] | None = None
        self._cache: dict = {}

    def _frames(self, level, n: int) -> int:
        config = self.config
        if level == "conv0":
            return _conv_frames(n, config.conv_kernel[0], config.conv_stride[0])
        frames = feature_frames(config, n)
        if level == "features":
            return frames
        if level in ("pooled", "upsampled"):
            squeeze = config.squeeze_factor
            return frames // squeeze if level == "pooled" else frames // squeeze * squeeze
        _, layers = level  # ("adapter", k): the input of adapter layer k
        return _adapter_frames(config, frames, layers)

    def set(self, samples: list[int] | None) -> None:
        self.samples, self._cache = samples, {}

    def at(self, level, batch: int, width: int) -> list[int] | None:
        """Each clip's frame count at `level` (clamped to at least 1), or None when no mask was given."""
        if self.samples is None:
            return None
        if len(self.samples) != batch:
            raise RuntimeError(f"exact batching: {len(self.samples)} clip lengths for a batch of {batch}; "
                               "a patched model runs one forward pass at a time")
        key = ("at", level)
        if key not in self._cache:
            self._cache[key] = [max(self._frames(level, n), 1) for n in self.samples]
        frames = self._cache[key]
        if max(frames) > width:
            raise RuntimeError(f"exact batching: {max(frames)} frames at {level} exceed the tensor's {width}")
        return frames

    def keep(self, level, batch: int, width: int, device) -> torch.Tensor | None:
        """(batch, width) bool, True on each clip's own frames; None when no mask was given."""
        frames = self.at(level, batch, width)
        if frames is None:
            return None
        key = ("keep", level, width, device)
        if key not in self._cache:
            lengths = torch.tensor(frames, device=device)
            self._cache[key] = torch.arange(width, device=device)[None, :] < lengths[:, None]
        return self._cache[key]

    def cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


def _state(module) -> _Lengths:
    return module._exact_lengths


# Patched modules ----------------------------------------------------------------------------------------
class ClipGroupNorm(ChannelNorm):
    """A feature encoder's per-channel GroupNorm with statistics per clip, over the clip's own frames.

    Each clip is normalised alone, by the kernel its one-clip pass uses: F.group_norm for a channel-major
    input (nn.Conv1d's output; bit-identical to transformers' one-clip pass), ChannelNorm's batch-norm kernel
    for a time-major one (common.convs.MatmulConv1d's output). Frames past a clip's end keep their input
    values (finite, never read by its real frames). Without lengths it is ChannelNorm/GroupNorm unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, channels, frames)
        frames = _state(self).at("conv0", x.shape[0], x.shape[2])
        time_major = x.stride(1) == 1 and x.shape[1] > 1
        if frames is None:
            return super().forward(x) if time_major else nn.GroupNorm.forward(self, x)
        if x.shape[0] == 1 and frames[0] == x.shape[2]:
            return self._one(x, time_major)
        out = x.clone()  # keeps x's layout (preserve_format)
        for i, f in enumerate(frames):
            out[i:i + 1, :, :f] = self._one(x[i:i + 1, :, :f], time_major)
        return out

    def _one(self, x: torch.Tensor, time_major: bool) -> torch.Tensor:
        if time_major:
            return ChannelNorm.forward(self, x)
        return nn.functional.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class ClipBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over (batch, channels, frames) whose training statistics (and running averages) come from
    real frames only. Evaluation mode is unchanged: running statistics, frame by frame."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = _state(self).keep("features", x.shape[0], x.shape[2], x.device) if self.training else None
        if keep is None:
            return super().forward(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm1d
                momentum = 1.0 / float(self.num_batches_tracked)
        frames = x.transpose(1, 2)  # (batch, frames, channels)
        real = nn.functional.batch_norm(
            frames[keep], self.running_mean, self.running_var, self.weight, self.bias,
            training=True, momentum=momentum, eps=self.eps)
        out = torch.zeros_like(frames)
        out[keep] = real
        return out.transpose(1, 2)


def _zero_past_end(module, args):
    """Forward pre-hook of a convolution over time: frames past each clip's end read as zeros, as the
    convolution's own zero padding past the end of a clip alone."""
    x = args[0]
    keep = _state(module).keep(module._exact_level, x.shape[0], x.shape[-1], x.device)
    if keep is None:
        return None
    return (x.masked_fill(~keep[:, None, :], 0),) + tuple(args[1:])


def _zero_output_past_end(module, args, output):
    """Forward hook of SEW's upsampling: (batch, frames, hidden) zero past each clip's whole windows."""
    keep = _state(module).keep("upsampled", output.shape[0], output.shape[1], output.device)
    return None if keep is None else output.masked_fill(~keep[:, :, None], 0)


def _sew_layer_mask(module, args, kwargs):
    """Forward pre-hook of a SEW encoder layer: attention to the clip's whole pooled windows only."""
    hidden = args[0] if args else kwargs["hidden_states"]
    state = _state(module)
    keep = state.keep("pooled", hidden.shape[0], hidden.shape[1], hidden.device)
    if keep is None:
        return None
    from transformers.masking_utils import create_bidirectional_mask

    key = ("sew_mask", hidden.shape[1], hidden.device, hidden.dtype)
    kwargs["attention_mask"] = state.cached(key, lambda: create_bidirectional_mask(
        config=module._exact_config, inputs_embeds=hidden, attention_mask=keep.long()))
    return args, kwargs


def _sewd_encoder_mask(module, args, kwargs):
    """Forward pre-hook of SEW-D's transformer encoder: its 2-D mask counts the clip's whole pooled windows."""
    hidden = args[0] if args else kwargs["hidden_states"]
    keep = _state(module).keep("pooled", hidden.shape[0], hidden.shape[1], hidden.device)
    if keep is None:
        return None
    if len(args) > 1:
        args = (args[0], keep.long()) + tuple(args[2:])
    else:
        kwargs["attention_mask"] = keep.long()
    return args, kwargs


def _base_pre_hook(module, args, kwargs):
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    _state(module).set(None if mask is None else mask.sum(-1).tolist())


def _base_post_hook(module, args, kwargs, output):
    # Training keeps the lengths until the next forward pass: gradient checkpointing recomputes layers in
    # the backward pass, outside this forward call.
    if not (module.training and torch.is_grad_enabled()):
        _state(module).set(None)


# Patching ----------------------------------------------------------------------------------------------
def _is_time_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv1d) and not (m.kernel_size == (1,) and m.stride == (1,) and m.padding == (0,))


def _plan(model) -> tuple[dict, list[str]]:
    """What to patch: {"group_norms": [...], "batch_norms": [...], "convs": [(module, level)], ...}, and
    the modules that mix frames but no rule covers (patching is refused when there is any)."""
    config = model.config
    base = model.base_model
    plan = {"group_norms": [], "batch_norms": [], "convs": [], "sew_layers": [], "sewd_encoder": None,
            "upsample": None}
    covered: set[int] = set()
    fe = base.feature_extractor
    for i, layer in enumerate(fe.conv_layers):
        conv = layer.conv
        if conv.padding != (0,) or conv.dilation != (1,) or conv.groups != 1:
            continue  # not a valid convolution: left uncovered, refused below
        covered.add(id(conv))
        norm = getattr(layer, "layer_norm", None)
        if isinstance(norm, nn.GroupNorm):
            if i != 0 or norm.num_groups != norm.num_channels:
                continue
            plan["group_norms"].append((layer, norm))
            covered.add(id(norm))
    encoder = base.encoder
    model_type = config.model_type
    if model_type in ("sew", "sew-d"):
        # Positional convolution (stride squeeze_factor) over feature frames, pooling over whole windows
        # (a clip's pooled frames read only its own frames), attention over pooled frames, upsampling.
        plan["convs"].append((encoder.pos_conv_embed.conv, "features"))
        covered.add(id(encoder.pool))
        plan["upsample"] = encoder.upsample
        if model_type == "sew":
            plan["sew_layers"] = list(encoder.layers)
        else:
            plan["sewd_encoder"] = encoder.encoder
            if encoder.encoder.conv is not None:
                plan["convs"].append((encoder.encoder.conv.conv, "pooled"))
    else:
        # Positional convolution(s) over feature frames: one, or Data2VecAudio's stack; the conformer's is
        # built but unused in 5.23 (hooked all the same), its depthwise convolutions are in every layer.
        # HuBERT's conv_pos_batch_norm and the conformer's convolution module have batch norms over frames.
        pos = encoder.pos_conv_embed
        for layer in getattr(pos, "layers", [pos]):
            plan["convs"].append((layer.conv, "features"))
        batch_norms = [getattr(pos, "batch_norm", None)]
        for layer in encoder.layers:
            if hasattr(layer, "conv_module"):
                plan["convs"].append((layer.conv_module.depthwise_conv, "features"))
                batch_norms.append(layer.conv_module.batch_norm)
        plan["batch_norms"] = [bn for bn in batch_norms if type(bn) is nn.BatchNorm1d]
    adapter = getattr(base, "adapter", None)
    if adapter is not None:
        for k, layer in enumerate(adapter.layers):
            if layer.conv.padding == (1,) and layer.conv.dilation == (1,):  # the geometry _adapter_frames assumes
                plan["convs"].append((layer.conv, ("adapter", k)))
    covered.update(id(m) for m in plan["batch_norms"])
    covered.update(id(m) for m, _ in plan["convs"])
    uncovered = []
    for name, m in model.named_modules():
        mixes = (_is_time_conv(m) or isinstance(m, (nn.GroupNorm, nn.modules.batchnorm._BatchNorm,
                                                     nn.modules.pooling._AvgPoolNd, nn.modules.pooling._MaxPoolNd)))
        if mixes and id(m) not in covered:
            uncovered.append(f"{name} ({type(m).__name__})")
    return plan, uncovered


def _swap(parent: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for name, child in parent.named_children():
        if child is old:
            setattr(parent, name, new)
            return
    raise RuntimeError(f"{type(old).__name__} not found in {type(parent).__name__}")


def make_exact(model) -> bool:
    """Patch a *ForCTC model in place so that a zero-padded batch called with its attention mask (as
    `padded_forward` does) gives each clip the logits it gets alone, in every mode and precision.

    Returns True for the architectures in EXACT_MODEL_TYPES (Wav2Vec2 with group- or layer-norm feature
    encoders, MMS attention adapters and `add_adapter`; Wav2Vec2-Conformer with relative, rotary or no
    position embeddings; HuBERT (also `conv_pos_batch_norm`); WavLM; Data2VecAudio; UniSpeech; UniSpeech-SAT;
    SEW; SEW-D), each proven by tests/test_batching.py. Returns False, and changes nothing, for any other
    model, or one with a frame-mixing module no rule here covers: its caller must batch only clips of equal
    length. Idempotent. Depends on transformers 5.23's module layout (names of submodules, SEW's encoder)."""
    if getattr(model, "_exact_batching", None) is not None:
        return model._exact_batching
    config = getattr(model, "config", None)
    if (config is None or getattr(config, "model_type", None) not in EXACT_MODEL_TYPES
            or not hasattr(model, "lm_head") or not hasattr(model.base_model, "feature_extractor")):
        model._exact_batching = False
        return False
    plan, uncovered = _plan(model)
    if uncovered:
        model._exact_batching = False
        return False
    base = model.base_model
    state = _Lengths(config)
    base._exact_lengths = state
    for layer, norm in plan["group_norms"]:
        new = ClipGroupNorm(norm.num_groups, norm.num_channels, eps=norm.eps, affine=True, device="meta")
        new.weight, new.bias = norm.weight, norm.bias
        new._exact_lengths = state
        _swap(layer, norm, new)
    for bn in plan["batch_norms"]:
        bn.__class__ = ClipBatchNorm1d  # same parameters and buffers; only forward changes
        bn._exact_lengths = state
    for conv, level in plan["convs"]:
        conv._exact_lengths, conv._exact_level = state, level
        conv.register_forward_pre_hook(_zero_past_end)
    for layer in plan["sew_layers"]:
        layer._exact_lengths, layer._exact_config = state, config
        layer.register_forward_pre_hook(_sew_layer_mask, with_kwargs=True)
    if plan["sewd_encoder"] is not None:
        plan["sewd_encoder"]._exact_lengths = state
        plan["sewd_encoder"].register_forward_pre_hook(_sewd_encoder_mask, with_kwargs=True)
    if plan["upsample"] is not None:
        plan["upsample"]._exact_lengths = state
        plan["upsample"].register_forward_hook(_zero_output_past_end)
    base.register_forward_pre_hook(_base_pre_hook, with_kwargs=True)
    base.register_forward_hook(_base_post_hook, with_kwargs=True, always_call=True)
    model._exact_batching = True
    return True


def is_exact(model) -> bool:
    """True once make_exact has patched the model."""
    return bool(getattr(model, "_exact_batching", False))


# Running a batch ---------------------------------------------------------------------------------------
def pad(clips: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(values (batch, longest) float32 zero-padded, attention mask (batch, longest) int64)."""
    if not clips:
        raise ValueError("no clips to batch")
    lengths = [len(c) for c in clips]
    values = np.zeros((len(clips), max(lengths)), dtype=np.float32)
    mask = np.zeros(values.shape, dtype=np.int64)
    for i, c in enumerate(clips):
        values[i, : len(c)] = c
        mask[i, : len(c)] = 1
    return values, mask


def padded_forward(model, clips: Sequence[np.ndarray], *, device, dtype) -> tuple[torch.Tensor, list[int]]:
    """Logits of already normalised 16 kHz clips in one zero-padded forward pass.

    Returns (logits (batch, frames, vocab) on `device` in the model's dtype, each clip's own frame count):
    clip i's logits are `logits[i, :frames[i]]`, equal to its one-clip logits when `make_exact(model)` is
    True. The attention mask is always passed. Runs under the caller's grad mode (torch.inference_mode for
    serving, gradients in training). Raises ValueError for no clips, a clip shorter than min_samples(config)
    or clips of different lengths through a model make_exact did not make exact."""
    lengths = [len(c) for c in clips]
    if not lengths:
        raise ValueError("no clips to batch")
    config = model.config
    shortest = min_samples(config)
    if min(lengths) < shortest:
        raise ValueError(f"a clip of {min(lengths)} samples is shorter than the {shortest} samples this model "
                         "needs for one frame (min_samples): pad it before batching")
    if len(set(lengths)) > 1 and not is_exact(model):
        raise ValueError("clips of different lengths share a pass only through a model make_exact(model) "
                         "returned True for; batch clips of equal length")
    values, mask = pad(clips)
    values_t = torch.from_numpy(values).to(device, non_blocking=True).to(dtype)
    mask_t = torch.from_numpy(mask).to(device, non_blocking=True)
    logits = model(values_t, attention_mask=mask_t).logits
    return logits, [output_frames(config, n) for n in lengths]
