"""Stream windows over cached feature-encoder frames (serve/streamfeatures.py) against whole-window passes."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from common import modeldir
from common.audio import normalize
from serve import model as sm
from serve import streamfeatures
from serve.contract import Final
from serve.options import Options
from serve.streaming import StreamConfig, Transcriber


def serving(path, cache="auto") -> sm.ServingModel:
    return sm.ServingModel(modeldir.load_checkpoint(path), device=torch.device("cpu"), dtype=torch.float32,
                           stream_feature_cache=cache).start()


@pytest.fixture(scope="module")
def group_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model with a group-norm feature encoder (the wav2vec2-base layout)."""
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    torch.manual_seed(1)
    processor = Wav2Vec2Processor.from_pretrained(tiny_model_dir)
    cfg = modeldir.tiny_config(len(processor.tokenizer), processor.tokenizer.pad_token_id,
                               feat_extract_norm="group", do_stable_layer_norm=False)
    out = tmp_path_factory.mktemp("tiny_group")
    modeldir.save(out, Wav2Vec2ForCTC(cfg).eval(), processor)
    return out


def one(model, window):
    return model.submit_features([window], Options())[0].result(timeout=60).value


def test_layer_norm_encoder_cached_frames_give_the_whole_window_logits(tiny_model_dir, speech_clip):
    model = serving(tiny_model_dir)
    try:
        assert model.stream_features == streamfeatures.EXACT
        F, RF = model.samples_per_frame, model.min_samples
        audio = normalize(speech_clip)
        end = lambda frames: (frames - 1) * F + RF  # noqa: E731
        n1, n2, first = 50, 80, 20  # frames [0, 50) encoded first; the next window is [20, 80)
        a = one(model, streamfeatures.Window(audio[:end(n1)], None))
        b = one(model, streamfeatures.Window(audio[n1 * F: end(n2)], a.features[first:]))
        assert len(a.features) == n1 and len(b.features) == n2 - n1 and len(b.logits) == n2 - first
        whole, frames = model._logits([audio[first * F: end(n2)]])
        assert frames == [n2 - first]
        torch.testing.assert_close(b.logits, whole[0], atol=1e-4, rtol=1e-4)
        assert torch.equal(b.logits.argmax(-1), whole[0].argmax(-1))
    finally:
        model.close()


def test_group_norm_encoder_with_its_own_statistics_gives_the_whole_window_logits(group_model_dir, speech_clip):
    """RUNNING mode normalises the first layer by hand: over one piece's own statistics it is GroupNorm."""
    model = serving(group_model_dir)
    try:
        assert model.stream_features == streamfeatures.RUNNING
        assert streamfeatures.mode(model.model, "exact") is None and streamfeatures.mode(model.model, "off") is None
        audio = normalize(speech_clip[: 3 * 16000])
        _, channels = model.stream_stats()
        out = one(model, streamfeatures.Window(audio, None, channels))
        whole, _ = model._logits([audio])
        torch.testing.assert_close(out.logits, whole[0], atol=1e-4, rtol=1e-4)
        assert channels.count > 0  # the stream's statistics now hold this piece
    finally:
        model.close()


def test_a_cached_stream_transcribes_as_whole_window_passes_without_input_normalisation(tiny_model_dir,
                                                                                       speech_clip):
    """A layer-norm model streamed with and without the cache. Input normalisation off (the cache normalises
    each new piece over the stream's running statistics, whole windows over their own samples), the cache is
    exact: the same finals, and every frame after the first WARMUP_S is encoded once."""
    texts = {}
    for cache in ("auto", "off"):
        model = serving(tiny_model_dir, cache)
        model.normalize = False
        try:
            t = Transcriber(model, Options(), StreamConfig())
            pause = np.zeros(8000, np.float32)
            audio = np.concatenate([speech_clip, pause, speech_clip, pause, speech_clip, pause, speech_clip])
            events = []
            for i in range(0, len(audio), 1600):
                t.push(audio[i: i + 1600])
                events += t.advance(time.monotonic() + 60)
            events += t.finish(time.monotonic() + 60)
            texts[cache] = [e.text for e in events if isinstance(e, Final)]
            assert t.committed == t._frames_in(len(audio))
            if cache == "auto":  # cached after the first WARMUP_S
                assert t.encoded == t.committed and t.features_start > 0
        finally:
            model.close()
    assert texts["auto"] == texts["off"] and "".join(texts["auto"])
