"""serve.model in-process: chunk geometry, chunked frames against whole-clip frames, dtypes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common.audio import load_file
from serve.model import Transcriber

RATE = 16_000


@pytest.fixture(scope="module")
def speech(synthetic_data):
    """About 25 s of speech."""
    clips = [load_file(p) for p in sorted((synthetic_data / "test" / "audio").glob("*.wav"))]
    out, total = [], 0
    for c in clips:
        out.append(c)
        total += len(c)
        if total > 25 * RATE:
            break
    return np.concatenate(out)


@pytest.fixture(scope="module")
def transcriber(tiny_model_dir):
    return Transcriber(tiny_model_dir, device=torch.device("cpu"), dtype=torch.float32,
                       chunk_length_s=8, chunk_stride_s=2)


def _kept_ids(t: Transcriber, audio: np.ndarray) -> torch.Tensor:
    chunks = t.chunks(audio)
    ids = t.forward([c.audio for c in chunks])
    rows = []
    for c, row in zip(chunks, ids):
        start = c.left // t.samples_per_frame
        end = (len(c.audio) - c.right) // t.samples_per_frame if c.right else len(row)
        rows.append(row[start:end])
    return torch.cat(rows)


def test_chunks_cover_the_clip_with_aligned_strides(transcriber, speech):
    t = transcriber
    chunks = t.chunks(speech)
    assert len(chunks) >= 3
    assert chunks[0].left == 0 and chunks[-1].right == 0
    assert all(len(c.audio) <= t.chunk_samples for c in chunks)
    assert t.chunk_samples % t.samples_per_frame == 0 and t.stride_samples % t.samples_per_frame == 0
    # The parts kept (strides dropped) tile the clip exactly once.
    kept = sum(len(c.audio) - c.left - c.right for c in chunks)
    assert kept == len(speech)
    # A clip no longer than a chunk is decoded whole.
    assert len(t.chunks(speech[: t.chunk_samples])) == 1


def test_chunked_frames_match_whole_clip_frames(transcriber, speech):
    """Frame for frame, the chunked argmax ids equal the whole-clip ids nearly everywhere; shifting them by
    one frame does not (so the agreement is not an artefact of a constant output)."""
    t = transcriber
    chunked = _kept_ids(t, speech)
    whole = t.forward([t._normalized(speech)])[0]
    assert len(chunked) == len(whole)
    agree = (chunked == whole).float().mean().item()
    shifted = (chunked[1:] == whole[:-1]).float().mean().item()
    assert agree > 0.97, agree
    assert shifted < 0.6, shifted
    assert torch.unique(whole).numel() > 5


def test_very_short_audio_gives_a_result(transcriber):
    """100 samples are less than one frame's receptive field: padded, not an error."""
    chunks = transcriber.chunks(np.full(100, 0.1, np.float32))
    seq = transcriber.join(chunks, transcriber.forward([c.audio for c in chunks]))
    assert isinstance(transcriber.text(seq), str)


def test_bf16_on_cpu(tiny_model_dir, speech):
    t = Transcriber(tiny_model_dir, device=torch.device("cpu"), dtype=torch.bfloat16)
    assert next(t.model.parameters()).dtype == torch.bfloat16
    ids = t.forward([t._normalized(speech[: 5 * RATE])])[0]
    assert len(ids) == 249


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_matmul_convolutions_equal_the_model_s_own_in_float32(norm):
    from common import modeldir
    from common.convs import MatmulConv1d, convs_as_matmuls
    from transformers import Wav2Vec2ForCTC

    torch.manual_seed(0)
    cfg = modeldir.tiny_config(12, 11, feat_extract_norm=norm, do_stable_layer_norm=norm == "layer", conv_bias=True)
    plain = Wav2Vec2ForCTC(cfg).eval()
    swapped = Wav2Vec2ForCTC(cfg).eval()
    swapped.load_state_dict(plain.state_dict())
    convs_as_matmuls(swapped, all_layers=True)
    layers = swapped.wav2vec2.feature_extractor.conv_layers
    assert all(isinstance(layer.conv, MatmulConv1d) for layer in layers)
    x = torch.randn(2, 2 * RATE)
    x[1, RATE:] = 0.0  # a padded row
    with torch.inference_mode():
        a, b = plain(x).logits, swapped(x).logits
        a1, b1 = plain(x[:1]).logits, swapped(x[:1]).logits  # one clip: ChannelNorm's batch-norm path
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b1, a1, rtol=1e-4, atol=1e-4)
    norm0 = type(layers[0].layer_norm).__name__ if norm == "group" else None
    assert norm0 in (None, "ChannelNorm")
    first_only = Wav2Vec2ForCTC(cfg).eval()
    first_only.load_state_dict(plain.state_dict())
    convs_as_matmuls(first_only, all_layers=False)
    kinds = [type(layer.conv).__name__ for layer in first_only.wav2vec2.feature_extractor.conv_layers]
    # float32 serving: only a first convolution not followed by a per-channel GroupNorm (which keeps its kernel).
    first = "Conv1d" if norm == "group" else "MatmulConv1d"
    assert kinds == [first] + ["Conv1d"] * (len(kinds) - 1)
    with torch.inference_mode():
        c = first_only(x).logits
    # The same sums in another order: equal to float32 rounding (bit for bit where oneDNN's convolution adds in
    # the matmul's order, not on AVX2 CPUs; common/convs.py), and the same argmax on every frame.
    torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)
    assert torch.equal(c.argmax(-1), a.argmax(-1))


def test_cpu_bf16_auto_follows_the_cpu_flags(tmp_path):
    from serve.model import choose_device_and_dtype, cpu_has_native_bf16

    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_has_native_bf16(str(amx)) and not cpu_has_native_bf16(str(plain))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))
    if not torch.cuda.is_available():
        assert choose_device_and_dtype("float16", "true")[1] == torch.bfloat16
        assert choose_device_and_dtype("float16", "false")[1] == torch.float32
        want = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        assert choose_device_and_dtype("float16", "auto")[1] == want
