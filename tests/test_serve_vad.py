"""serve/vad.py and serve/chunking.py's plan_speech: voice-activity segmentation of long audio (SERVE_CHUNKING=vad).

The planner alone (probabilities -> regions -> chunks, pure numbers); Silero VAD on espeak-ng speech joined
with silence and noise; a ServingModel cutting at pauses (frames tile the clip, word times in the clip,
silence-only audio an empty transcript); and the server: /invocations and /invocations-response-stream.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from common import modeldir
from common.batching import output_frames
from local_test.make_dataset import synthesize
from serve import settings as settings_mod
from serve import chunking, vad
from serve.contract import Clip
from serve.model import ServingModel
from serve.options import Options
from serve_helpers import Server, encode, make_opt_ml

RATE = 16_000
ALIGN = 320
# 4 s chunks with 1 s strides, as serve/model.py computes them for the tiny model (frames of 320 samples, a
# receptive field of 400).
GEOMETRY = chunking.Geometry.of(ALIGN, 400, 4, 1, RATE)
SENTENCES = [("the old man reads a book by the window", ("en-us", 160, 50)),
             ("green trees grow near the river today", ("en-gb", 150, 40)),
             ("my friend plays with the small dog", ("en-us+f4", 160, 65)),
             ("one two three four five six", ("en-gb-scotland", 170, 55))]
# Added before each sentence (espeak-ng adds ~0.35 s of its own), and after the last.
PAUSES_S = [1.0, 0.0, 2.5, 1.5, 1.2]


def soon() -> float:
    return time.monotonic() + 120


def plan(regions, n: int) -> list[chunking.Chunk]:
    return chunking.plan_speech(np.zeros(n, np.float32), regions, GEOMETRY)


def end(c: chunking.Chunk) -> int:
    return c.start + len(c.audio)


def layout(c: chunking.Chunk) -> tuple[int, ...]:
    return c.start, len(c.audio), c.left, c.right, c.before, c.after


def kept(c: chunking.Chunk) -> tuple[int, int]:
    return c.kept_samples


def assert_tiles(spans: list[chunking.Chunk], n: int) -> None:
    """Silence before, kept parts and silence after, in order, cover the clip's whole frames exactly once."""
    at = 0
    for i, s in enumerate(spans):
        assert s.before == (0 if i else s.before)
        at += s.before
        assert kept(s)[0] == at, (i, s)
        at = kept(s)[1] + s.after
        for v in (s.start, s.left, s.right, s.before, s.after):
            assert v % ALIGN == 0 and v >= 0, s
        assert end(s) <= n and GEOMETRY.receptive_field <= len(s.audio) <= GEOMETRY.chunk_samples
        assert s.first_frame == (kept(s)[0] - s.before) // ALIGN
    assert at == n // ALIGN * ALIGN


# The planner ---------------------------------------------------------------------------------------------
def test_one_chunk_per_region_and_nothing_between():
    n = 20 * RATE
    regions = [(1000, 30_000), (80_123, 100_000), (250_000, 260_000)]
    spans = plan(regions, n)
    assert len(spans) == 3
    assert_tiles(spans, n)
    for (a, b), s in zip(regions, spans):
        ka, kb = kept(s)
        assert ka <= a < ka + ALIGN and kb - ALIGN < b <= kb  # widened to frame edges, no more
        assert end(s) - s.right == kb and s.right == GEOMETRY.reach_samples  # context for the last frame only
    # Silence is never sent: every sample a span holds is within a frame's reach of a region.
    sent = np.zeros(n, bool)
    for s in spans:
        sent[s.start:end(s)] = True
    speech = np.zeros(n, bool)
    for a, b in regions:
        speech[max(0, a - ALIGN):b + ALIGN + GEOMETRY.reach_samples] = True
    assert not (sent & ~speech).any()


def test_a_long_monologue_is_split_at_the_limit_with_the_stride():
    n = 15 * RATE
    spans = plan([(3200, n - 6400)], n)
    assert len(spans) >= 4
    assert_tiles(spans, n)
    for prev, s in zip(spans, spans[1:]):
        assert s.before == 0 and prev.after == 0  # one region: no silence inside it
        assert kept(prev)[1] == kept(s)[0]
        assert s.start == max(3200, kept(s)[0] - GEOMETRY.stride_samples) or s is spans[-1]
    assert all(len(s.audio) == GEOMETRY.chunk_samples for s in spans[:-1])
    assert all(s.right == GEOMETRY.right_samples for s in spans[:-1])
    # The last reaches back a whole chunk (full left context, as fixed chunking's last chunk).
    assert len(spans[-1].audio) == GEOMETRY.chunk_samples


def test_regions_that_touch_on_frame_edges_merge_and_the_clip_end_is_respected():
    n = 10 * RATE + 123
    spans = plan([(5000, 6410), (6500, 9000), (n - 3000, n)], n)
    assert len(spans) == 2
    assert kept(spans[0]) == (4800, 9280)
    assert end(spans[-1]) == n and spans[-1].right == 0 and spans[-1].after == 0


def test_no_speech_gives_no_chunks():
    assert plan([], 30 * RATE) == []
    assert vad.speech_regions(np.zeros(100), 100 * vad.WINDOW, vad.VadParams()) == []


def test_regions_from_probabilities():
    """Hysteresis, the shortest pause and padding, on a made-up probability track (one per 512 samples)."""
    probs = np.zeros(300)
    probs[20:60] = 0.9
    probs[62:100] = 0.9  # a 2-window (64 ms) dip: shorter than min_silence, stays inside the region
    probs[160:200] = 0.6
    probs[200:210] = 0.4  # above the exit threshold (0.5 - 0.15): still speech
    params = vad.VadParams(threshold=0.5, min_silence_s=0.3, speech_pad_s=0.1)
    regions = vad.speech_regions(probs, 300 * vad.WINDOW, params)
    pad = int(0.1 * RATE)
    w = vad.WINDOW
    assert regions == [(20 * w - pad, 100 * w + pad), (160 * w - pad, 210 * w + pad)]
    assert vad.speech_regions(probs, 300 * vad.WINDOW, vad.VadParams(threshold=0.95, min_silence_s=0.3)) == []


def test_silence_logits_decode_to_one_word_break(tiny_model_dir):
    from common import ctc

    cp = modeldir.load_checkpoint(tiny_model_dir)
    v = ctc.Vocabulary(cp.tokenizer, cp.model.lm_head.out_features)
    x = vad.silence_logits(5, v, torch.zeros(1, v.size, dtype=torch.float16))
    assert x.dtype == torch.float16 and x.shape == (5, v.size) and torch.isfinite(x).all()
    ids = x.argmax(-1).tolist()
    assert v.is_space(ids[0]) and ids[1:] == [v.blank_id] * 4
    assert torch.softmax(x.float(), -1).max(-1).values.min() == 1.0
    assert vad.silence_logits(0, v, x).shape == (0, v.size)


# Silero VAD on synthetic speech ----------------------------------------------------------------------------
def noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Background: white noise at -50 dBFS plus a low hum (50 Hz at -40 dBFS)."""
    t = np.arange(n) / RATE
    return (rng.normal(0, 0.003, n) + 0.01 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def talk():
    """espeak-ng sentences (4 voices) with 0.35-2.9 s pauses between them, over background noise; and where
    each sentence's speech is (its samples above -40 dBFS)."""
    rng = np.random.default_rng(0)
    parts, truth, at = [], [], 0
    for (text, voice), pause in zip(SENTENCES, PAUSES_S):
        parts.append(np.zeros(int(pause * RATE), np.float32))
        at += len(parts[-1])
        clip = synthesize(text, voice)
        loud = np.flatnonzero(np.abs(clip) > 0.01)
        truth.append((at + int(loud[0]), at + int(loud[-1])))
        parts.append(clip)
        at += len(clip)
    parts.append(np.zeros(int(PAUSES_S[-1] * RATE), np.float32))
    audio = np.concatenate(parts)
    return audio + noise(len(audio), rng), truth


@pytest.fixture(scope="module")
def silero():
    return vad.SileroVad()


def test_silero_finds_each_sentence_and_not_the_pauses(silero, talk):
    audio, truth = talk
    probs = silero.probabilities(audio)
    assert probs.shape == (-(-len(audio) // vad.WINDOW),) and probs.min() >= 0 and probs.max() <= 1
    params = vad.VadParams()
    regions = vad.speech_regions(probs, len(audio), params)
    # The pause espeak-ng leaves between sentences 1 and 2 is shorter than the 0.5 s default: one region.
    assert len(regions) == 3, (regions, truth)
    groups = [truth[0:2], truth[2:3], truth[3:4]]
    for (a, b), group in zip(regions, groups):
        assert a <= group[0][0] and group[-1][1] <= b  # all of the speech
        assert group[0][0] - a < 0.5 * RATE and b - group[-1][1] < 0.6 * RATE  # and little more
    # With a shorter shortest pause, it cuts too.
    assert len(vad.speech_regions(probs, len(audio), vad.VadParams(min_silence_s=0.2))) == 4


def test_probabilities_are_silero_vads_own(silero, talk):
    """The window loop over load_session() gives what silero-vad's OnnxWrapper.audio_forward gives."""
    audio, _ = talk
    audio = audio[: 10 * RATE + 100]  # a partial last window too
    wrapper = vad._silero().OnnxWrapper(str(vad.model_file()), force_onnx_cpu=True)
    theirs = wrapper.audio_forward(torch.from_numpy(audio)[None], RATE)[0].numpy()
    ours = silero.probabilities(audio)
    assert ours.shape == theirs.shape == (-(-len(audio) // vad.WINDOW),)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_the_session_is_one_per_process_on_one_cpu_thread():
    session = vad.load_session()
    assert vad.load_session() is session and vad.SileroVad().session is session
    opts = session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert str(vad.model_file()).endswith("silero_vad/data/silero_vad.onnx")


def test_noise_alone_has_no_speech(silero):
    audio = noise(12 * RATE, np.random.default_rng(1))
    regions = vad.speech_regions(silero.probabilities(audio), len(audio), vad.VadParams())
    assert regions == []
    assert silero.probabilities(np.zeros(0, np.float32)).shape == (0,)


def test_the_import_leaves_torch_threads_alone():
    before = torch.get_num_threads()
    vad._imported = None
    vad._silero()
    assert torch.get_num_threads() == before


# A ServingModel cutting at pauses -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cutting(tiny_model_dir, silero):
    model = ServingModel(modeldir.load_checkpoint(tiny_model_dir), device=torch.device("cpu"), dtype=torch.float32,
                         chunk_length_s=4, chunk_stride_s=1, vad=vad.Segmenter(vad=silero)).start()
    yield model
    model.close()


def test_chunks_follow_the_pauses_and_frames_tile_the_clip(cutting, talk):
    audio, truth = talk
    chunks = cutting.chunks(audio)
    regions = cutting.vad.regions(audio)
    assert len(chunks) >= len(regions) >= 3
    again = chunking.plan_speech(cutting._normalized(audio), regions, cutting.geometry)
    assert [layout(c) for c in chunks] == [layout(c) for c in again]
    sent = np.zeros(len(audio), bool)
    for c in chunks:
        sent[c.start:c.start + len(c.audio)] = True
    for (_, end), (start, _) in zip(truth, truth[1:]):
        if start - end > RATE:  # the middle of every long pause was left out
            assert not sent[end + RATE // 2:start - RATE // 2].any()
    assert not sent[: truth[0][0] - RATE // 2].any() and not sent[truth[-1][1] + RATE // 2:].any()
    assert all(len(c.audio) <= cutting.chunk_samples for c in chunks)
    # Each chunk's kept logits, silence frames included, sit at their clip frames: together, every frame once.
    v = cutting.vocabulary(Options())
    frames = [cutting._kept(c, torch.zeros(output_frames(cutting.config, len(c.audio)), v.size), v) for c in chunks]
    assert sum(len(f) for f in frames) == len(audio) // cutting.samples_per_frame
    # The first frames (before the first speech) decode to a word break, not to text.
    ids = torch.cat(frames).argmax(-1)
    before = chunks[0].silence_frames[0]
    assert before == chunks[0].before // cutting.samples_per_frame > 0
    assert v.is_space(int(ids[0])) and ids[1:before].tolist() == [v.blank_id] * (before - 1)


def regions_of(chunks) -> list[list[float]]:
    """The stretches of speech (seconds) the chunks cover: consecutive chunks with no pause between are one."""
    regions = []
    for i, c in enumerate(chunks):
        a, b = (c.start + c.left) / RATE, (c.start + len(c.audio) - c.right) / RATE
        if i == 0 or chunks[i - 1].after:
            regions.append([a, b])
        else:
            regions[-1][1] = b
    return regions


def assert_in_regions(words, chunks) -> None:
    """Words only where speech was sent: none in a pause (which would mean their times were shifted)."""
    regions = regions_of(chunks)
    for w in words:
        assert any(a - 0.02 <= w.start and w.end <= b + 0.02 for a, b in regions), (w, regions)


def test_word_times_stay_in_the_clip_and_segments_are_the_chunks(cutting, talk):
    audio, truth = talk
    clip = Clip(audio, Options(timestamps=True))
    whole = cutting.transcribe([clip], deadline=soon())[0]
    segments = list(cutting.transcribe_iter(clip, deadline=soon()))
    chunks = cutting.chunks(audio)
    assert len(segments) == len(chunks) and segments[-1].last
    assert whole.words, "the random model spells something in the speech"
    parts = [((c.start + c.left) / RATE, (c.start + len(c.audio) - c.right) / RATE) for c in chunks]
    assert len(regions_of(chunks)) == 3
    assert_in_regions(whole.words, chunks)
    # A segment is its chunk's kept part, and the segments' words are the transcript's.
    for s, (a, b) in zip(segments, parts):
        assert (s.start, s.end) == (round(a, 3), round(b, 3))
    assert [w for s in segments for w in s.words] == whole.words
    assert " ".join(s.text for s in segments if s.text) == whole.text


def test_beam_search_segments_keep_clip_times(tiny_model_dir, silero, talk):
    """Beam search decodes segment by segment (serve/model.py): its words, too, are where the speech is, and
    after a pause no word is held back for the next segment."""
    from serve.model import beam_search

    checkpoint = modeldir.load_checkpoint(tiny_model_dir)
    beam, why = beam_search(checkpoint, 1)
    assert beam is not None, why
    model = ServingModel(checkpoint, device=torch.device("cpu"), dtype=torch.float32, chunk_length_s=4,
                         chunk_stride_s=1, beam=beam, vad=vad.Segmenter(vad=silero)).start()
    try:
        audio, _ = talk
        clip = Clip(audio, Options(timestamps=True, decoder="beam"))
        segments = list(model.transcribe_iter(clip, deadline=soon()))
        chunks = model.chunks(audio)
        assert len(segments) == len(chunks)
        words = [w for s in segments for w in s.words]
        assert words
        assert_in_regions(words, chunks)
        checked = 0
        for i, (s, c) in enumerate(zip(segments, chunks)):
            if c.after and (i == 0 or chunks[i - 1].after):  # a region of one chunk: its words, all inside it
                assert all(s.start - 0.02 <= w.start and w.end <= s.end + 0.02 for w in s.words), (s, c)
                checked += bool(s.words)
        assert checked >= 2
        whole = model.transcribe([clip], deadline=soon())[0]
        assert [w.word for w in words] == [w.word for w in whole.words]
    finally:
        model.close()


def test_silence_only_audio_is_an_empty_transcript(cutting):
    audio = noise(10 * RATE, np.random.default_rng(2))
    assert cutting.chunks(audio) == []
    got = cutting.transcribe([Clip(audio, Options(timestamps=True))], deadline=soon())[0]
    assert got.text == "" and got.words == [] and got.audio_seconds == 10.0
    segments = list(cutting.transcribe_iter(Clip(audio, Options(timestamps=True)), deadline=soon()))
    assert [(s.index, s.start, s.end, s.text, s.words, s.last) for s in segments] == [(0, 0.0, 10.0, "", [], True)]


def test_short_audio_stays_one_whole_chunk_unless_asked(cutting, tiny_model_dir, silero, talk):
    audio, _ = talk
    short = audio[: 3 * RATE]  # no longer than one 4 s chunk
    chunks = cutting.chunks(short)
    assert len(chunks) == 1 and chunks[0].start == 0 and len(chunks[0].audio) == len(short)
    assert chunks[0].before == chunks[0].after == 0
    both = ServingModel(modeldir.load_checkpoint(tiny_model_dir), device=torch.device("cpu"), dtype=torch.float32,
                        chunk_length_s=4, chunk_stride_s=1, vad=vad.Segmenter(vad=silero, short_audio=True))
    cut = both.chunks(short)
    assert cut and cut[0].before > 0  # the 1 s of silence at its start is left out


# Settings ----------------------------------------------------------------------------------------------------------
def test_settings():
    s = settings_mod.Settings.from_env({})
    assert (s.chunking, s.vad_threshold, s.vad_min_silence_s, s.vad_speech_pad_s, s.vad_short_audio) == \
        ("vad", 0.5, 0.5, 0.2, False)
    s = settings_mod.Settings.from_env({"SERVE_CHUNKING": "Fixed", "SERVE_VAD_MIN_SILENCE_S": "1.5",
                                        "SERVE_VAD_SHORT_AUDIO": "true"})
    assert (s.chunking, s.vad_min_silence_s, s.vad_short_audio) == ("fixed", 1.5, True)
    seg = vad.Segmenter.from_settings(s)
    assert seg.params == vad.VadParams(0.5, 1.5, 0.2) and seg.short_audio
    for env, word in [({"SERVE_CHUNKING": "pauses"}, "SERVE_CHUNKING"), ({"SERVE_VAD_THRESHOLD": "1"}, "THRESHOLD"),
                      ({"SERVE_VAD_SPEECH_PAD_S": "-1"}, "PAD")]:
        with pytest.raises(settings_mod.SettingsError, match=word):
            settings_mod.Settings.from_env(env)


def test_load_follows_serve_chunking(tmp_path, tiny_model_dir, talk):
    from serve.model import load

    audio, _ = talk
    opt_ml = make_opt_ml(tmp_path / "opt_ml", tiny_model_dir)
    env = {"OPT_ML": str(opt_ml), "SERVE_CHUNK_LENGTH_S": "4", "SERVE_CHUNK_STRIDE_S": "1"}
    fixed = load(settings_mod.Settings.from_env({**env, "SERVE_CHUNKING": "fixed"}))
    try:
        assert fixed.vad is None
        assert [layout(c) for c in fixed.chunks(audio)] == \
            [layout(c) for c in chunking.plan(fixed._normalized(audio), fixed.geometry)]
    finally:
        fixed.close()
    cut = load(settings_mod.Settings.from_env({**env, "SERVE_VAD_MIN_SILENCE_S": "0.2"}))
    try:
        assert cut.vad.params == vad.VadParams(0.5, 0.2, 0.2) and not cut.vad.short_audio
        assert any(c.after for c in cut.chunks(audio))
    finally:
        cut.close()


# The server ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("serve_vad")
    srv = Server(make_opt_ml(root / "opt_ml", tiny_model_dir), root / "server.log", MODEL_SERVER_WORKERS="1",
                 SERVE_CHUNK_LENGTH_S="4", SERVE_CHUNK_STRIDE_S="1").wait_ready()
    yield srv
    srv.stop()


def test_server_cuts_at_pauses_and_streams_one_line_per_chunk(server, talk, cutting):
    audio, _ = talk
    body = encode(audio, RATE, "WAV", "FLOAT")
    whole = server.post(body, "audio/wav", path="/invocations?timestamps=true")
    assert whole.status == 200, whole.body
    streamed = server.post(body, "audio/wav", path="/invocations-response-stream")
    lines = [json.loads(x) for x in streamed.body.splitlines()]
    assert len(lines) == len(cutting.chunks(audio)) and lines[-1]["last"]
    assert " ".join(x["text"] for x in lines if x["text"]) == whole.json["text"]
    # The same transcript as this process's ServingModel with the same VAD (server defaults).
    assert whole.json["text"] == cutting.transcribe([Clip(audio)], deadline=soon())[0].text


def test_server_answers_silence_with_an_empty_transcript(server):
    body = encode(noise(9 * RATE, np.random.default_rng(3)), RATE, "WAV", "FLOAT")
    reply = server.post(body, "audio/wav", path="/invocations?timestamps=true")
    assert reply.status == 200 and reply.json == {"text": "", "audio_seconds": 9.0, "words": []}
    lines = server.post(body, "audio/wav", path="/invocations-response-stream").body.splitlines()
    assert [json.loads(x) for x in lines] == [{"index": 0, "start": 0.0, "end": 9.0, "text": "", "last": True}]
