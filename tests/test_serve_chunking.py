"""serve/chunking.py on its own: chunk geometry and the chunks of clips of many lengths, checked against the
frame arithmetic of the feature encoder (common.batching.output_frames), with no model."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT

from common import batching
from serve import chunking
from serve.chunking import Geometry

RATE = 16_000
# wav2vec2's feature encoder (frame hop 320, receptive field 400), and a small one with the same shape of
# arithmetic (hop 4, receptive field 9) so that many lengths and geometries are cheap.
WAV2VEC2 = SimpleNamespace(conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))
SMALL = SimpleNamespace(conv_kernel=(5, 3), conv_stride=(2, 2))


def geometry(config, chunk_s, stride_s, rate=RATE) -> Geometry:
    return Geometry.of(batching.frame_samples(config), batching.min_samples(config), chunk_s, stride_s, rate)


def frames(config, samples: int) -> int:
    return batching.output_frames(config, samples)


def check(config, g: Geometry, n: int) -> list[chunking.Chunk]:
    """Every property a clip's chunks must have; the chunks."""
    clip = np.arange(n, dtype=np.float32)
    chunks = chunking.plan(clip, g)
    F = g.frame_samples
    n_padded = max(n, g.receptive_field)
    assert chunks[0].left == 0 and chunks[0].start == 0 and chunks[-1].right == 0
    # Samples: each chunk is the clip's own samples, edges on frame boundaries, no longer than a chunk and
    # never shorter than the receptive field; the kept parts tile the clip exactly.
    at = 0
    for i, c in enumerate(chunks):
        assert c.start % F == 0 and c.left % F == 0 and c.right % F == 0
        assert g.receptive_field <= len(c.audio) <= g.chunk_samples
        real = min(len(c.audio), n - c.start)  # past it: the silence a clip shorter than the field gets
        np.testing.assert_array_equal(c.audio[:real], clip[c.start: c.start + real])
        assert not c.audio[real:].any()
        begin, end = c.kept_samples
        assert begin == at and end > begin, (i, c.kept_samples, at)
        at = end
        if i:  # context before: at least the stride (the last chunk reaches back further)
            assert c.left >= g.stride_samples
        if i < len(chunks) - 1:  # context after: the right-context rule
            assert c.right == g.right_samples >= g.stride_samples
    assert at == n_padded
    # Frames: the kept frames of the chunks are the whole clip's frames, once each, in order; every kept frame
    # has its whole receptive field inside its chunk (computed from the same samples as in the whole clip).
    joined = []
    for i, c in enumerate(chunks):
        local = np.arange(frames(config, len(c.audio)))
        kept = c.kept(local)
        if i < len(chunks) - 1:
            assert len(kept) > 0 and c.kept_frames.stop <= len(local)
        elif not len(kept):  # the last chunk's samples past the others' make no new frame: it keeps none
            assert len(joined) == frames(config, n_padded)
            continue
        assert c.first_frame == c.start // F + kept[0]
        assert kept[-1] * F + g.receptive_field <= len(c.audio)
        joined.extend(c.start // F + kept)
    np.testing.assert_array_equal(joined, np.arange(frames(config, n_padded)))
    return chunks


@pytest.mark.parametrize("chunk_s,stride_s", [(30.0, 5.0), (8.0, 2.0), (4.0, 0.0), (1.0, 0.3), (2.0, 0.01)])
def test_geometry_is_on_frame_boundaries_and_covers_the_receptive_field(chunk_s, stride_s):
    g = geometry(WAV2VEC2, chunk_s, stride_s)
    assert (g.frame_samples, g.receptive_field) == (320, 400)
    assert g.chunk_samples % 320 == 0 and g.stride_samples % 320 == 0 and g.right_samples % 320 == 0
    assert abs(g.chunk_samples - chunk_s * RATE) <= 160 and abs(g.stride_samples - stride_s * RATE) <= 160
    # The last frame before a chunk's right stride reaches RF - F samples past it: the right context is at
    # least that, even with no stride.
    assert g.right_samples >= max(g.stride_samples, g.receptive_field - g.frame_samples)


def test_no_stride_still_reaches_past_a_chunk_s_last_kept_frame():
    g = geometry(WAV2VEC2, 4.0, 0.0)
    assert g.stride_samples == 0 and g.right_samples == 320


def test_a_chunk_is_never_shorter_than_the_receptive_field():
    g = Geometry.of(4, 23, 0.0001, 0.0, RATE)  # a chunk length under one frame
    assert g.chunk_samples == 24


def test_a_geometry_that_keeps_nothing_is_refused():
    """Chunks that keep nothing between their context would be planned forever (settings refuse a stride of a
    third of the chunk length; a ServingModel built directly gets this)."""
    with pytest.raises(ValueError, match="leave nothing to keep"):
        Geometry(320, 400, 3200, 1600, 1600)
    with pytest.raises(ValueError):
        geometry(WAV2VEC2, 8.0, 5.0)


def test_a_clip_no_longer_than_a_chunk_is_one_chunk_without_strides():
    g = geometry(WAV2VEC2, 8.0, 2.0)
    for n in (400, 16_000, g.chunk_samples - 1, g.chunk_samples):
        (c,) = check(WAV2VEC2, g, n)
        assert (c.start, c.left, c.right, len(c.audio)) == (0, 0, 0, n)
        assert c.kept_frames == slice(0, None)
    assert len(check(WAV2VEC2, g, g.chunk_samples + 1)) == 2


def test_a_clip_shorter_than_the_receptive_field_is_padded_with_silence():
    g = geometry(WAV2VEC2, 8.0, 2.0)
    for n in (0, 1, 100, 399):
        (c,) = chunking.plan(np.ones(n, np.float32), g)
        assert len(c.audio) == 400 and c.audio[:n].sum() == n and not c.audio[n:].any()
        assert len(c.kept(np.arange(frames(WAV2VEC2, len(c.audio))))) == 1
    audio = np.ones(400, np.float32)
    assert chunking.padded(audio, 400) is audio


def test_the_last_chunk_reaches_back_a_whole_chunk():
    """60.006 s with 30 s chunks and no stride: the 96 samples after the second chunk were once a chunk of
    their own, too short for the feature encoder. The last chunk is a whole chunk, ending at the clip's end."""
    g = geometry(WAV2VEC2, 30.0, 0.0)
    n = 60 * RATE + 96
    chunks = check(WAV2VEC2, g, n)
    last = chunks[-1]
    assert last.start + len(last.audio) == n and len(last.audio) > g.chunk_samples - g.frame_samples
    assert last.start % 320 == 0 and last.left >= 320


def test_middle_chunks_have_the_stride_before_and_the_right_context_after():
    g = geometry(WAV2VEC2, 8.0, 2.0)
    chunks = check(WAV2VEC2, g, 40 * RATE + 123)
    assert len(chunks) >= 5
    for c in chunks[1:-1]:
        assert (c.left, c.right, len(c.audio)) == (g.stride_samples, g.right_samples, g.chunk_samples)
        assert c.kept_frames == slice(g.stride_samples // 320, (g.chunk_samples - g.right_samples) // 320)


@pytest.mark.parametrize("chunk_s,stride_s", [(0.004, 0.0), (0.004, 0.001), (0.006, 0.0015), (0.01, 0.003),
                                              (0.0035, 0.0005)])
def test_many_lengths_join_into_the_whole_clip_s_frames(chunk_s, stride_s):
    """Property-style: every clip length from 0 to a dozen chunks (small encoder: hop 4, receptive field 9)."""
    g = geometry(SMALL, chunk_s, stride_s)
    assert (g.frame_samples, g.receptive_field) == (4, 9)
    for n in range(0, 12 * g.chunk_samples + 2 * g.frame_samples + 1):
        check(SMALL, g, n)


def test_random_lengths_with_wav2vec2_s_encoder():
    rng = np.random.default_rng(0)
    for chunk_s, stride_s in [(30.0, 5.0), (4.0, 0.0), (1.0, 0.3)]:
        g = geometry(WAV2VEC2, chunk_s, stride_s)
        lengths = rng.integers(0, 5 * g.chunk_samples, 60).tolist() + [g.chunk_samples + k for k in (-1, 0, 1)]
        for n in lengths + [k * g.chunk_samples + d for k in (2, 3) for d in (-320, -1, 0, 1, 96, 319, 320)]:
            check(WAV2VEC2, g, n)


def test_chunking_imports_no_torch():
    code = "import sys; import serve.chunking; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
