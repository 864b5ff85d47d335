"""common.batching: a zero-padded batch gives every clip the logits it gets alone, for every Hugging Face CTC
architecture (tiny random models built from AutoConfig.for_model with the real config keys).

Tolerances. float32: batched logits equal one-clip logits to 1e-5 (seen: <= 3e-7; different matrix shapes add
in different orders) and argmax ids are identical; a one-clip pass through the patched model equals
transformers' own bit for bit. bfloat16 / float16: batched equals the one-clip pass in the same dtype within
2^-6 / 2^-9 of the largest logit (a few units in the last place of each format; seen: <= 2^-8 / 2^-10), and
argmax ids are identical wherever the top two logits of the one-clip pass are further apart than that.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from common import batching
from common.batching import make_exact, padded_forward

TINY = dict(
    vocab_size=12, pad_token_id=11, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=64, conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, hidden_dropout=0.0, attention_dropout=0.0,
    activation_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0,
)
LAYER = dict(feat_extract_norm="layer", do_stable_layer_norm=True)
VARIANTS = {
    "wav2vec2-group": ("wav2vec2", dict(feat_extract_norm="group")),  # wav2vec2-base
    "wav2vec2-layer": ("wav2vec2", LAYER),  # large-lv60, XLS-R
    "wav2vec2-mms": ("wav2vec2", dict(LAYER, adapter_attn_dim=8)),  # MMS attention adapters
    "wav2vec2-add-adapter": ("wav2vec2", dict(LAYER, add_adapter=True, output_hidden_size=24, num_adapter_layers=2)),
    "conformer-relative-group": ("wav2vec2-conformer", dict(
        feat_extract_norm="group", position_embeddings_type="relative", conv_depthwise_kernel_size=7,
        conformer_conv_dropout=0.0)),
    "conformer-rotary-layer": ("wav2vec2-conformer", dict(
        feat_extract_norm="layer", position_embeddings_type="rotary", conv_depthwise_kernel_size=7,
        conformer_conv_dropout=0.0)),
    "hubert-group": ("hubert", dict(feat_extract_norm="group")),
    "hubert-layer": ("hubert", LAYER),
    "hubert-pos-batch-norm": ("hubert", dict(LAYER, conv_pos_batch_norm=True)),
    "wavlm-group": ("wavlm", dict(feat_extract_norm="group", num_buckets=32, max_bucket_distance=64)),
    "wavlm-layer": ("wavlm", dict(LAYER, num_buckets=32, max_bucket_distance=64)),
    "data2vec-audio": ("data2vec-audio", dict(num_conv_pos_embeddings=3, conv_pos_kernel_size=5)),
    "unispeech-group": ("unispeech", dict(feat_extract_norm="group")),
    "unispeech-layer": ("unispeech", LAYER),
    "unispeech-sat-group": ("unispeech-sat", dict(feat_extract_norm="group")),
    "unispeech-sat-layer": ("unispeech-sat", LAYER),
    "sew-group": ("sew", dict(feat_extract_norm="group")),
    "sew-layer": ("sew", dict(feat_extract_norm="layer")),
    "sew-d-group": ("sew-d", dict(feat_extract_norm="group", position_buckets=16, max_position_embeddings=64)),
    "sew-d-layer-conv": ("sew-d", dict(feat_extract_norm="layer", position_buckets=16, max_position_embeddings=64,
                                       conv_kernel_size=3, hidden_dropout_prob=0.0)),
}
# Where transformers itself is already exact when given the attention mask: the mask is the whole fix.
EXACT_WITH_MASK = {"wav2vec2-layer", "wav2vec2-mms", "hubert-layer", "wavlm-layer", "unispeech-layer",
                   "unispeech-sat-layer"}
# 239, 115, 179 and 98 feature frames: SEW's squeeze factor 2 leaves a partial window on three of them.
LENGTHS = [4801, 2333, 3617, 1999]
LOW_PRECISION_TOLERANCE = {torch.bfloat16: 2 ** -6, torch.float16: 2 ** -9}


def build(name: str, **overrides):
    from transformers import AutoConfig, AutoModelForCTC

    model_type, extra = VARIANTS[name]
    cfg = AutoConfig.for_model(model_type, **{**TINY, **extra, **overrides})
    torch.manual_seed(0)
    model = AutoModelForCTC.from_config(cfg).eval()
    with torch.no_grad():  # running statistics far from (0, 1), so that a batch norm changes its input
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    g = np.random.default_rng(0)
    return [g.standard_normal(n).astype(np.float32) for n in LENGTHS]


def alone(model, clips, dtype=torch.float32) -> list[torch.Tensor]:
    """transformers' own one-clip logits (no mask, batch of one)."""
    with torch.inference_mode():
        return [model(torch.from_numpy(c)[None].to(dtype)).logits[0].float() for c in clips]


def batched(model, clips, dtype=torch.float32, **kwargs) -> tuple[torch.Tensor, list[int]]:
    with torch.inference_mode():
        logits, frames = padded_forward(model, clips, device="cpu", dtype=dtype, **kwargs)
    return logits.float(), frames


def unpatched_batch(model, clips, *, mask: bool, dtype=torch.float32) -> torch.Tensor:
    values, attention = batching.pad(clips)
    kwargs = {"attention_mask": torch.from_numpy(attention)} if mask else {}
    with torch.inference_mode():
        return model(torch.from_numpy(values).to(dtype), **kwargs).logits.float()


def worst(logits: torch.Tensor, frames: list[int], reference: list[torch.Tensor]) -> float:
    return max((logits[i, :f] - r).abs().max().item() for i, (f, r) in enumerate(zip(frames, reference)))


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's MHA (WavLM) warns about mask types
        yield


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices gain nothing from threads, and on a shared CPU OpenMP's waits made them 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# float32: every architecture ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(VARIANTS))
def test_batched_logits_equal_one_clip_logits_in_float32(name, clips):
    reference = build(name)
    model = build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert make_exact(model) is True
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)

    expected = alone(reference, clips)
    logits, frames = batched(model, clips)
    assert frames == [len(e) for e in expected]
    assert frames == reference._get_feat_extract_output_lengths(torch.tensor(LENGTHS)).tolist()
    for i, (f, e) in enumerate(zip(frames, expected)):
        torch.testing.assert_close(logits[i, :f], e, rtol=1e-5, atol=1e-5)
        assert torch.equal(logits[i, :f].argmax(-1), e.argmax(-1)), f"clip {i}: argmax differs"
    # One clip through the patched model is transformers' own pass, bit for bit.
    for c, e in zip(clips[:2], expected):
        one, _ = batched(model, [c])
        assert torch.equal(one[0], e)

    # What make_exact fixes (so this test can fail): the unpatched model leaks padding into real frames
    # without the mask in every architecture, and with it everywhere but in layer-norm feature encoders
    # with no convolution after the mask.
    assert worst(unpatched_batch(reference, clips, mask=False), frames, expected) > 1e-3
    with_mask = worst(unpatched_batch(reference, clips, mask=True), frames, expected)
    if name in EXACT_WITH_MASK:
        assert with_mask < 1e-5
    else:
        assert with_mask > 1e-3, with_mask


def _disconnect(module) -> None:
    """Undo one patched place: the module reads lengths nobody sets, so it behaves as transformers'."""
    module._exact_lengths = batching._Lengths(module._exact_lengths.config)


def _encoder(model):
    return model.base_model.encoder


FIXES = {
    # fix: (variant, the patched modules to disconnect)
    "group norm per clip": ("wav2vec2-group", lambda m: [m.base_model.feature_extractor.conv_layers[0].layer_norm]),
    "conformer depthwise convolutions": (
        "conformer-rotary-layer", lambda m: [layer.conv_module.depthwise_conv for layer in _encoder(m).layers]),
    "positional convolution after a batch norm": ("hubert-pos-batch-norm", lambda m: [_encoder(m).pos_conv_embed.conv]),
    "data2vec positional convolution stack": (
        "data2vec-audio", lambda m: [layer.conv for layer in _encoder(m).pos_conv_embed.layers]),
    "adapter convolutions": ("wav2vec2-add-adapter", lambda m: [layer.conv for layer in m.base_model.adapter.layers]),
    "SEW pooled attention mask": ("sew-layer", lambda m: list(_encoder(m).layers)),
    "SEW upsampled tail": ("sew-layer", lambda m: [_encoder(m).upsample]),
    "SEW-D pooled attention mask": ("sew-d-group", lambda m: [_encoder(m).encoder]),
    "SEW-D upsampled tail": ("sew-d-group", lambda m: [_encoder(m).upsample]),
    "SEW-D ConvLayer": ("sew-d-layer-conv", lambda m: [_encoder(m).encoder.conv.conv]),
}


@pytest.mark.parametrize("fix", list(FIXES))
def test_each_fix_is_needed(fix, clips):
    """Each patched place, undone alone, lets padding through again: none is there for nothing."""
    name, modules = FIXES[fix]
    model = build(name)
    assert make_exact(model)
    expected = alone(model, clips)
    scale = max(e.abs().max().item() for e in expected)  # SEW's random logits are ~0.02, the others ~0.4
    logits, frames = batched(model, clips)
    assert worst(logits, frames, expected) / scale < 1e-5  # seen: <= 6e-7
    for module in modules(model):
        _disconnect(module)
    logits, frames = batched(model, clips)
    # seen: 1.8e-4 (SEW's extra pooled key among ~100) to 0.57
    assert worst(logits, frames, expected) / scale > 5e-5


# Lower precision -----------------------------------------------------------------------------------------
# bfloat16 for every variant; float16 (emulated, slow on CPUs) for one of each model type.
FP16 = ["wav2vec2-group", "conformer-relative-group", "hubert-pos-batch-norm", "wavlm-group", "data2vec-audio",
        "unispeech-group", "unispeech-sat-layer", "sew-group", "sew-d-layer-conv"]


@pytest.mark.parametrize("name, dtype", [(n, torch.bfloat16) for n in VARIANTS] + [(n, torch.float16) for n in FP16],
                         ids=[f"{n}-bf16" for n in VARIANTS] + [f"{n}-fp16" for n in FP16])
def test_batched_logits_equal_one_clip_logits_in_low_precision(name, dtype, clips):
    model = build(name)
    assert make_exact(model)
    model = model.to(dtype)
    expected = [batched(model, [c], dtype)[0][0] for c in clips]
    logits, frames = batched(model, clips, dtype)
    tolerance = LOW_PRECISION_TOLERANCE[dtype] * max(e.abs().max().item() for e in expected)
    assert worst(logits, frames, expected) <= tolerance
    for i, (f, e) in enumerate(zip(frames, expected)):
        top2 = e.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > tolerance
        assert torch.equal(logits[i, :f].argmax(-1)[clear], e.argmax(-1)[clear])
    # And the unpatched model in this dtype leaks far more than the tolerance (the test can fail).
    leak = worst(unpatched_batch(build(name).to(dtype), clips, mask=False, dtype=dtype), frames, expected)
    assert leak > 4 * tolerance, (leak, tolerance)


# Training ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, checkpointing", [("wav2vec2-group", False), ("wav2vec2-group", True), ("sew-group", True)],
                         ids=["wav2vec2-group", "wav2vec2-group-checkpointing", "sew-group-checkpointing"])
def test_training_gradients_equal_one_clip_gradients(name, checkpointing, clips):
    """In training mode with gradients (dropout 0), the batched pass gives every parameter the gradient
    the one-clip passes give together, also when gradient checkpointing recomputes layers (the group norm
    is in a checkpointed feature-encoder layer) in the backward pass."""
    model = build(name)
    assert make_exact(model)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    clips = clips[:3]
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(batching.output_frames(model.config, len(c)), model.config.vocab_size, generator=g)
               for c in clips]

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    logits, frames = padded_forward(model, clips, device="cpu", dtype=torch.float32)
    batch = grads(sum((logits[i, :f] * w).sum() for i, (f, w) in enumerate(zip(frames, weights))))
    one = {}
    for c, w in zip(clips, weights):
        for k, v in grads((padded_forward(model, [c], device="cpu", dtype=torch.float32)[0][0] * w).sum()).items():
            one[k] = one.get(k, 0) + v
    assert batch.keys() == one.keys() and len(batch) > 10
    for k in batch:
        torch.testing.assert_close(batch[k], one[k], rtol=1e-4, atol=1e-5, msg=k)


def test_training_batch_norm_statistics_come_from_real_frames_only(clips):
    """The conformer's batch norm in training mode: statistics (and running averages) over the batch's
    real frames, as if the clips' frames were concatenated, not over padding; gradient checkpointing
    recomputes it with the same statistics."""
    model = build("conformer-relative-group")
    assert make_exact(model)
    model.train()
    bn = model.base_model.encoder.layers[0].conv_module.batch_norm
    seen = {}
    bn.register_forward_hook(lambda m, args, out: seen.update(x=args[0].detach(), y=out.detach()))
    running = (bn.running_mean.clone(), bn.running_var.clone())
    logits, frames = padded_forward(model, clips, device="cpu", dtype=torch.float32)
    real = torch.cat([seen["x"][i, :, :f] for i, f in enumerate(frames)], dim=1)  # (channels, all real frames)
    mean, var = real.mean(1), real.var(1, unbiased=False)
    want = (real - mean[:, None]) / torch.sqrt(var[:, None] + bn.eps) * bn.weight[:, None] + bn.bias[:, None]
    got = torch.cat([seen["y"][i, :, :f] for i, f in enumerate(frames)], dim=1)
    torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-5)
    m = bn.momentum
    torch.testing.assert_close(bn.running_mean, (1 - m) * running[0] + m * mean, rtol=1e-5, atol=1e-6)
    n = real.shape[1]
    torch.testing.assert_close(bn.running_var, (1 - m) * running[1] + m * var * n / (n - 1), rtol=1e-5, atol=1e-6)
    # transformers' own batch norm takes padding into its statistics.
    plain = torch.nn.functional.batch_norm(seen["x"], None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    assert (torch.cat([plain[i, :, :f] for i, f in enumerate(frames)], dim=1) - want).abs().max() > 1e-3
    # Checkpointed: the same logits and gradients as without.
    logits.sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    again, _ = padded_forward(model, clips, device="cpu", dtype=torch.float32)
    again.sum().backward()
    torch.testing.assert_close(again, logits)
    for k, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[k], rtol=1e-4, atol=1e-6, msg=k)


# Interplay and edges -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, order", [("wav2vec2-group", "convs-first"), ("wav2vec2-group", "exact-first"),
                                         ("sew-d-group", "exact-first"), ("hubert-layer", "convs-first")])
def test_matmul_convolutions_keep_batching_exact(name, order, clips):
    """common.convs on any architecture (through the base model), before or after make_exact: the group
    norm reads the matmul's time-major layout per clip; float32 and bfloat16."""
    from common.convs import MatmulConv1d, convs_as_matmuls

    reference = build(name)
    expected = alone(reference, clips)
    for dtype in (torch.float32, torch.bfloat16):
        model = build(name)
        if order == "convs-first":
            assert convs_as_matmuls(model) == 3
            assert make_exact(model)
        else:
            assert make_exact(model)
            assert convs_as_matmuls(model) == 3
        assert all(isinstance(layer.conv, MatmulConv1d) for layer in model.base_model.feature_extractor.conv_layers)
        norm = model.base_model.feature_extractor.conv_layers[0].layer_norm
        assert type(norm).__name__ == ("ClipGroupNorm" if name.endswith("group") else "LayerNorm")
        model = model.to(dtype)
        logits, frames = batched(model, clips, dtype)
        if dtype == torch.float32:
            assert worst(logits, frames, expected) < 1e-4  # the matmul's and the norm's own rounding
        else:
            own = [batched(model, [c], dtype)[0][0] for c in clips]
            tol = LOW_PRECISION_TOLERANCE[dtype] * max(e.abs().max().item() for e in own)
            assert worst(logits, frames, own) <= tol


def test_a_deep_copy_stays_exact_on_its_own(clips):
    model = build("wav2vec2-group")
    assert make_exact(model)
    twin = copy.deepcopy(model)
    expected = alone(build("wav2vec2-group"), clips)
    logits, frames = batched(twin, clips)
    assert worst(logits, frames, expected) < 1e-5
    assert make_exact(twin) is True  # idempotent


def test_saved_weights_are_unchanged(tmp_path):
    from safetensors.torch import load_file

    for name in ("wav2vec2-group", "hubert-pos-batch-norm"):
        plain, patched = build(name), build(name)
        assert make_exact(patched)
        plain.save_pretrained(tmp_path / "plain")
        patched.save_pretrained(tmp_path / "patched")
        a, b = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "patched" / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unproven_models_are_refused_and_left_alone(clips):
    from transformers import AutoConfig, AutoModelForCTC

    # A CTC model of another kind (log-mel input): not claimed.
    cfg = AutoConfig.for_model("wav2vec2-bert", vocab_size=12, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64, output_hidden_size=32)
    assert make_exact(AutoModelForCTC.from_config(cfg)) is False
    # A known architecture with a frame-mixing module no rule covers: refused, nothing patched.
    model = build("wav2vec2-layer")
    model.base_model.encoder.extra = torch.nn.Conv1d(32, 32, 3, padding=1)
    assert make_exact(model) is False
    assert not hasattr(model.base_model, "_exact_lengths")
    with pytest.raises(ValueError, match="equal length"):
        padded_forward(model, clips, device="cpu", dtype=torch.float32)
    # Clips of equal length batch through any model.
    logits, frames = batched(model, [clips[0], clips[0][::-1].copy()])
    assert frames == [239, 239]


def test_padded_forward_refuses_what_it_cannot_run(clips):
    model = build("wav2vec2-group")
    assert make_exact(model)
    with pytest.raises(ValueError, match="no clips"):
        padded_forward(model, [], device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="min_samples"):
        padded_forward(model, [clips[0], clips[1][:20]], device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("name", ["wav2vec2-group", "wav2vec2-add-adapter", "sew-d-group"])
def test_frame_arithmetic_matches_the_model(name):
    model = build(name)
    cfg = model.config
    field, step, least = batching.receptive_field(cfg), batching.frame_samples(cfg), batching.min_samples(cfg)
    assert batching.output_frames(cfg, field) == 1 and batching.output_frames(cfg, field - 1) == 0
    assert least == (field + step if name.startswith("sew") else field)  # SEW pools 2 frames
    for n in (least, least + 7, 3 * step + field - 1, 3 * step + field):
        with torch.inference_mode():
            got = model(torch.zeros(1, n)).logits.shape[1]
        assert batching.output_frames(cfg, n) == got, n
    assert batching.output_frames(cfg, field + 5 * step) == 6
