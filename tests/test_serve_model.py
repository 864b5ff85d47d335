"""serve.model in-process: chunk geometry, chunked frames against whole-clip frames, dtypes, results chunk
by chunk, the short last chunk."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from common import modeldir
from common.audio import load_file
from serve import contract
from common.batching import output_frames as frame_count
from serve.model import ServingModel
from serve.options import Options

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


def serving_model(model_dir, dtype=torch.float32, **kw) -> ServingModel:
    return ServingModel(modeldir.load_checkpoint(model_dir), device=torch.device("cpu"), dtype=dtype, **kw).start()


@pytest.fixture(scope="module")
def transcriber(tiny_model_dir):
    model = serving_model(tiny_model_dir, chunk_length_s=8, chunk_stride_s=2)
    yield model
    model.close()


def _ids(t: ServingModel, audio: np.ndarray) -> torch.Tensor:
    logits, frames = t._logits([audio])
    return logits[0, : frames[0]].argmax(-1)


def _kept_ids(t: ServingModel, audio: np.ndarray) -> torch.Tensor:
    return torch.cat([t._kept(c, _ids(t, c.audio)) for c in t.chunks(audio)])


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
    whole = _ids(t, t._normalized(speech))
    assert len(chunked) == len(whole)
    agree = (chunked == whole).float().mean().item()
    shifted = (chunked[1:] == whole[:-1]).float().mean().item()
    assert agree > 0.97, agree
    assert shifted < 0.6, shifted
    assert torch.unique(whole).numel() > 5


def test_very_short_audio_gives_a_result(transcriber):
    """100 samples are less than one frame's receptive field: padded, not an error."""
    t = transcriber.transcribe([contract.Clip(np.full(100, 0.1, np.float32))], deadline=time.monotonic() + 60)
    assert isinstance(t[0].text, str) and t[0].audio_seconds == 0.006


def test_a_last_chunk_shorter_than_the_receptive_field_transcribes(tiny_model_dir):
    """SERVE_CHUNK_STRIDE_S=0 and a 60.006 s clip with 30 s chunks: the 96 samples after the second chunk were
    a chunk of their own, too short for the feature encoder (a 500). The same geometry at a tenth of the
    cost: 4 s chunks, 8.006 s. The last chunk now reaches back a whole chunk, and without a stride each chunk
    still reaches far enough into the next for its last frame (none is lost at a chunk edge)."""
    t = serving_model(tiny_model_dir, chunk_length_s=4, chunk_stride_s=0)
    try:
        rng = np.random.default_rng(0)
        audio = (rng.standard_normal(8 * RATE + 96) * 0.1).astype(np.float32)
        chunks = t.chunks(audio)
        assert all(len(c.audio) >= t.min_samples for c in chunks)
        assert sum(len(c.audio) - c.left - c.right for c in chunks) == len(audio)
        assert sum(len(t._kept(c, torch.zeros(frame_count(t.config, len(c.audio))))) for c in chunks) \
            == frame_count(t.config, len(audio))
        out = t.transcribe([contract.Clip(audio, Options(timestamps=True))], deadline=time.monotonic() + 300)[0]
        assert out.audio_seconds == 8.006 and out.text
        assert out.words[-1].end <= 8.006
    finally:
        t.close()


def test_a_last_chunk_that_keeps_no_frame_transcribes(tiny_model_dir):
    """4 s chunks, no stride, 4 s + 1 sample: the first chunk keeps every frame of the clip, so the last chunk
    (serve/chunking.py: a whole chunk ending at the clip's end) keeps none; the transcript and the segments are
    still the clip's."""
    t = serving_model(tiny_model_dir, chunk_length_s=4, chunk_stride_s=0)
    try:
        audio = (np.random.default_rng(1).standard_normal(4 * RATE + 1) * 0.1).astype(np.float32)
        chunks = t.chunks(audio)
        last = chunks[-1]
        assert len(chunks) == 2 and len(t._kept(last, torch.zeros(frame_count(t.config, len(last.audio))))) == 0
        assert sum(len(t._kept(c, torch.zeros(frame_count(t.config, len(c.audio))))) for c in chunks) \
            == frame_count(t.config, len(audio))
        clip = contract.Clip(audio, Options(timestamps=True))
        whole = t.transcribe([clip], deadline=time.monotonic() + 120)[0]
        segments = list(t.transcribe_iter(clip, deadline=time.monotonic() + 120))
        assert len(segments) == 2 and segments[-1].last and segments[-1].end == whole.audio_seconds
        assert [w.word for s in segments for w in s.words] == [w.word for w in whole.words]
    finally:
        t.close()


def test_segments_chunk_by_chunk_join_to_the_transcript(transcriber, speech):
    """transcribe_iter (response streaming) gives one segment per chunk, and its words are the transcript's."""
    speech = speech[: 16 * RATE]
    clip = contract.Clip(speech, Options(timestamps=True))
    whole = transcriber.transcribe([clip], deadline=time.monotonic() + 120)[0]
    segments = list(transcriber.transcribe_iter(clip, deadline=time.monotonic() + 120))
    assert len(segments) == len(transcriber.chunks(speech)) >= 3
    assert [s.index for s in segments] == list(range(len(segments))) and segments[-1].last
    assert [(w.word, w.start, w.end) for s in segments for w in s.words] == \
        [(w.word, w.start, w.end) for w in whole.words]
    assert " ".join(s.text for s in segments if s.text).split() == whole.text.split()
    assert segments[0].start == 0 and segments[-1].end == pytest.approx(len(speech) / RATE, abs=1e-3)
    assert all(a.end == b.start for a, b in zip(segments, segments[1:]))


def test_a_timeout_cancels_the_queued_chunks(tiny_model_dir, speech):
    t = serving_model(tiny_model_dir, max_batch_size=8, max_batch_wait_s=2.0, chunk_length_s=8, chunk_stride_s=2)
    try:
        with pytest.raises(contract.Timeout):
            t.transcribe([contract.Clip(speech)], deadline=time.monotonic() + 0.3)
        time.sleep(2.5)
        assert t.batcher.clips_run == 0  # cancelled before the batching window closed
    finally:
        t.close()


def test_bf16_on_cpu(tiny_model_dir, speech):
    t = serving_model(tiny_model_dir, dtype=torch.bfloat16)
    try:
        assert next(t.model.parameters()).dtype == torch.bfloat16
        assert len(_ids(t, t._normalized(speech[: 5 * RATE]))) == 249
    finally:
        t.close()


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


def test_decoder_choice_without_a_model():
    """serve/decoding.py's `choose`, what ServingModel.decoder calls: greedy by default without beam search,
    beam options and decoder=beam refused with the reason (a 400, never ignored)."""
    from serve import decoding

    assert decoding.choose(Options(), None, "no LM here") is decoding.GREEDY
    assert decoding.choose(Options(decoder="greedy"), None, "no LM here", "greedy") is decoding.GREEDY
    with pytest.raises(contract.BadRequest, match=r"decoder=beam: no LM here; this model decodes with decoder=greedy"):
        decoding.choose(Options(decoder="beam"), None, "no LM here")
    with pytest.raises(contract.BadRequest, match=r"hotwords applies only to beam search, and this model decodes "
                                                  r"greedily only \(no LM here\)"):
        decoding.choose(Options(hotwords=("cat",)), None, "no LM here")
    assert decoding.available(None) == ("greedy",) and decoding.default_decoder(None) == "greedy"
    assert decoding.timed_words([("a", 0, 3), ("bc", 5, 12)], 0.02) == [contract.Word("a", 0.0, 0.06),
                                                                        contract.Word("bc", 0.1, 0.24)]
