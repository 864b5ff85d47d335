"""The feature encoder's strided convolutions as matrix products, for CPUs (every CTC architecture).

oneDNN runs these convolutions far below the matmul rate on some CPUs: on an AVX-512/AMX Xeon the first one
(1 input channel, kernel 10, stride 5) ~3x slower than a matmul in float32 and ~40x in bfloat16, and the
backward passes of all of them about doubled a CPU training step of the tiny model. A convolution with no
padding, dilation or groups is the product of its unfolded input windows with its reshaped weight: the same
sums, added in another order. So results equal the convolution's to float rounding, not bit for bit. Where
oneDNN's kernel adds in the matmul's order they are identical (a test asserting it passed on that Xeon); on
an AVX2 CPU (AMD EPYC) its direct convolution adds in another order, and float32 outputs of the first
convolution differ by up to 4.8e-7 on unit-scale values (each within 5.5e-7 of a float64 reference), which
leaves argmax transcripts unchanged (tests/test_serve_model.py). With the fallback convolution (oneDNN off)
the matmul's outputs are bit-identical there too.
MatmulConv1d keeps the Conv1d's parameters (same names, same state dict), so saved models are unchanged.
"""
from __future__ import annotations

import torch


class MatmulConv1d(torch.nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, in, time) -> (batch, out, frames)
        out_ch, in_ch, k = self.weight.shape
        weight = self.weight.permute(2, 1, 0).reshape(k * in_ch, out_ch)  # rows ordered (k, in)
        windows = x.transpose(1, 2).unfold(1, k, self.stride[0])  # (batch, frames, in, k)
        y = windows.transpose(2, 3).reshape(x.shape[0], -1, k * in_ch) @ weight
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.transpose(1, 2)


class ChannelNorm(torch.nn.GroupNorm):
    """GroupNorm with one group per channel (wav2vec2-base's first feature-encoder layer) that keeps
    MatmulConv1d's time-major layout. nn.GroupNorm first copies a (batch, frames, channels) tensor seen as
    (batch, channels, frames) into channel-major order (76 ms of a 275 ms bfloat16 pass over 10 s); for a
    single clip, per-channel statistics over time are exactly batch norm's training-mode statistics, and
    its channels-last kernel reads the layout as it is (7 ms). Batches of several clips use GroupNorm over
    the whole padded batch, as transformers does; common.batching.ClipGroupNorm (make_exact) normalises
    each clip of a batch over its own frames with this kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1:
            return super().forward(x)
        out = torch.nn.functional.batch_norm(x.unsqueeze(-1), None, None, self.weight, self.bias,
                                             training=True, momentum=0.0, eps=self.eps)
        return out.squeeze(-1)


def _channel_group_norm(norm) -> bool:
    """A per-channel GroupNorm: plain (ChannelNorm can replace it) or already a subclass (ChannelNorm, or
    common.batching.ClipGroupNorm, which reads either layout itself)."""
    return isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == norm.num_channels and norm.affine


def _plain(conv) -> bool:
    return (type(conv) is torch.nn.Conv1d and conv.padding == (0,) and conv.dilation == (1,)
            and conv.groups == 1 and conv.padding_mode == "zeros")


def convs_as_matmuls(model, *, all_layers: bool = True) -> int:
    """Swap the feature encoder's plain convolutions (the first only, or all) for MatmulConv1d, sharing
    their parameters; returns how many were swapped. Any Hugging Face audio model with a convolutional
    feature encoder (`model.base_model.feature_extractor.conv_layers`: Wav2Vec2, Wav2Vec2-Conformer, HuBERT,
    WavLM, Data2VecAudio, UniSpeech(-SAT), SEW, SEW-D). With all_layers a plain per-channel GroupNorm after a
    swapped convolution becomes ChannelNorm (same statistics, summed in another order; a ClipGroupNorm from
    common.batching stays, it reads the layout itself); with the first only, a convolution followed by a
    per-channel GroupNorm is left alone, so that norm keeps its own kernel and layout."""
    swapped = 0
    for i, layer in enumerate(model.base_model.feature_extractor.conv_layers):
        conv = getattr(layer, "conv", None)
        norm = getattr(layer, "layer_norm", None)
        if not all_layers and _channel_group_norm(norm):
            continue
        if _plain(conv) and (i == 0 or all_layers):
            new = MatmulConv1d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                               bias=conv.bias is not None, device="meta")
            new.weight, new.bias = conv.weight, conv.bias
            layer.conv = new
            swapped += 1
            if type(norm) is torch.nn.GroupNorm and _channel_group_norm(norm):
                channel_norm = ChannelNorm(norm.num_groups, norm.num_channels, eps=norm.eps, device="meta")
                channel_norm.weight, channel_norm.bias = norm.weight, norm.bias
                layer.layer_norm = channel_norm
    return swapped
