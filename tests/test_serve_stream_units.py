"""Live streams in-process: the incremental audio decoders against /invocations' own decoding, and the
sliding-window transcriber (commits, partials, utterance cuts, word times) around a model whose CTC frames are
written into the audio, so every expected transcript is known exactly."""
from __future__ import annotations

import io
from concurrent.futures import Future

import numpy as np
import pytest
import soundfile as sf
import torch

from common import ctc, modeldir, text
from common.audio import decode_bytes
from serve import contract, decoding
from serve.batcher import Outcome
from serve.options import Options
from serve.streamaudio import StreamAudioError, make_decoder, ogg_crc, opus_available
from serve.streaming import MAX_COMMIT_S, StreamConfig, Transcriber

F, RF = 320, 400
VOCAB = text.build_vocab(["abcdefgh"])


def cut_randomly(data: bytes, seed: int = 0, most: int = 700) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out, i = [], 0
    while i < len(data):
        n = int(rng.integers(1, most))
        out.append(data[i: i + n])
        i += n
    return out


def speechlike(seconds: float, rate: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t) + 0.02 * rng.standard_normal(len(t))) \
        .astype(np.float32)


# Audio decoders -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate,channels", [(16000, 1), (44100, 2), (8000, 1)])
def test_pcm_in_any_cut_decodes_as_invocations_does(rate, channels):
    x = np.stack([speechlike(1.5, rate, seed=c) for c in range(channels)], axis=1)
    pcm = (x * 32767).astype("<i2")
    decoder = make_decoder("pcm_s16le", rate, channels)
    streamed = np.concatenate([decoder.decode(piece) for piece in cut_randomly(pcm.tobytes())] + [decoder.flush()])
    buf = io.BytesIO()
    sf.write(buf, pcm, rate, format="WAV", subtype="PCM_16")
    whole = decode_bytes(buf.getvalue())
    assert len(streamed) == len(whole)
    np.testing.assert_allclose(streamed, whole, atol=1e-6)


@pytest.mark.skipif(not opus_available(), reason="libopus (libopus0) is not installed")
def test_ogg_opus_in_any_cut_decodes_as_invocations_does():
    buf = io.BytesIO()
    sf.write(buf, speechlike(2.0, 16000), 16000, format="OGG", subtype="OPUS")
    data = buf.getvalue()
    decoder = make_decoder("ogg_opus")
    streamed = np.concatenate([decoder.decode(piece) for piece in cut_randomly(data, seed=3)])
    whole = decode_bytes(data)
    assert len(streamed) == len(whole) == 32000  # pre-skip and end trimming applied
    np.testing.assert_allclose(streamed, whole, atol=1e-6)


@pytest.mark.skipif(not opus_available(), reason="libopus (libopus0) is not installed")
def test_broken_ogg_streams_are_refused_with_the_reason():
    buf = io.BytesIO()
    sf.write(buf, speechlike(1.0, 16000), 16000, format="OGG", subtype="OPUS")
    data = bytearray(buf.getvalue())
    with pytest.raises(StreamAudioError, match="not an Ogg stream"):
        make_decoder("ogg_opus").decode(b"RIFF" + bytes(100))
    corrupt = bytearray(data)
    corrupt[60] ^= 0xFF  # inside the first page
    with pytest.raises(StreamAudioError, match="CRC"):
        make_decoder("ogg_opus").decode(bytes(corrupt))
    wav = io.BytesIO()
    sf.write(wav, speechlike(1.0, 16000), 16000, format="OGG", subtype="VORBIS")
    with pytest.raises(StreamAudioError, match="not Ogg/Opus"):
        make_decoder("ogg_opus").decode(wav.getvalue())
    decoder = make_decoder("ogg_opus")
    decoder.decode(bytes(data))
    with pytest.raises(StreamAudioError, match="chained"):
        decoder.decode(bytes(data))


def test_ogg_crc_is_the_ogg_polynomial():
    assert ogg_crc(b"") == 0 and ogg_crc(b"OggS") == 0x5FB0A94F


@pytest.mark.parametrize("settings,says", [
    (("mp3", None, None), "unknown encoding"),
    (("pcm_s16le", 500, None), "sample_rate"),
    (("pcm_s16le", 16000, 9), "channels"),
    (("ogg_opus", 48000, None), "carry their own"),
])
def test_bad_stream_settings_name_the_problem(settings, says):
    with pytest.raises(StreamAudioError, match=says):
        make_decoder(*settings)


# The transcriber ------------------------------------------------------------------------------------------
class FrameModel:
    """A model whose frame k's token is written into the audio: every sample of [k*F, k*F+F) holds 0.01*(id+1)
    for a token, 0 for the CTC blank. Frame k's argmax is read at sample k*F + F/2, so windows must line up
    with the stream's frame grid for the right tokens to come out."""

    _vocab = None

    def __init__(self):
        if FrameModel._vocab is None:
            FrameModel._vocab = ctc.Vocabulary(modeldir.make_processor(VOCAB).tokenizer, len(VOCAB))
        self.vocab = FrameModel._vocab
        self.info = contract.ModelInfo("FrameForCTC", frame_samples=F, receptive_field=RF)
        self.batches: list[int] = []

    def vocabulary(self, options):
        return self.vocab

    def decoder(self, options):
        return decoding.DECODERS["greedy"]

    def submit(self, windows, options):
        self.batches.append(len(windows))
        futures = []
        for w in windows:
            n = (len(w) - RF) // F + 1
            ids = np.rint(w[np.arange(n) * F + F // 2] * 100).astype(int) - 1
            ids[ids < 0] = self.vocab.blank_id
            logits = torch.full((n, self.vocab.size), -10.0)
            logits[torch.arange(n), torch.as_tensor(ids)] = 10.0
            f = Future()
            f.set_result(Outcome(logits, len(windows)))
            futures.append(f)
        return futures


def audio_of(frames: str) -> np.ndarray:
    """One character per frame: a letter or '|' (word delimiter) is that token, '.' the blank."""
    ids = [VOCAB[c] + 1 if c != "." else 0 for c in frames]
    return np.repeat(np.asarray(ids, np.float32) * 0.01, F).astype(np.float32)


def run(frames: str, config: StreamConfig, push_frames: int = 7):
    model = FrameModel()
    t = Transcriber(model, Options(), config)
    audio, events = audio_of(frames), []
    for i in range(0, len(audio), push_frames * F):
        t.push(audio[i: i + push_frames * F])
        events += t.advance(deadline=float("inf"))
    events += t.finish(deadline=float("inf"))
    return events, model, t


def offline(frames: str) -> str:
    model = FrameModel()
    logits = model.submit([audio_of(frames)], None)[0].result().value
    return decoding.DECODERS["greedy"].decode(logits, model.vocab).text


def test_utterances_are_cut_at_pauses_with_word_times_from_the_stream_start():
    # "ab cd", a 1 s pause, "efg h", a short pause (kept inside the utterance), "bad"
    frames = "." * 10 + "aa.bb||cc.dd" + "." * 50 + "eeffgg|h" + "." * 10 + "|bbaadd" + "." * 40
    events, model, t = run(frames, StreamConfig(step_s=0.2, left_s=0.4, right_s=0.2, silence_s=0.5))
    finals = [e for e in events if isinstance(e, contract.Final)]
    assert [f.text for f in finals] == ["ab cd", "efg h bad", ""]
    assert [f.last for f in finals] == [False, False, True]
    assert [f.utterance for f in finals] == [0, 1, 2]
    first, second = finals[0], finals[1]
    assert first.words[0] == contract.Word("ab", 0.2, 0.3)  # frames 10 to 15, from the stream start
    assert first.words[1].start == 0.34
    assert second.words[0].word == "efg" and second.words[0].start == round(72 * 0.02, 3)
    assert first.end <= second.start and first.start == 0.0
    # The whole clip decodes to the same characters; the pause separates "cd" and "efg", which the model's
    # frames alone (no word delimiter between them) would join.
    assert " ".join(f.text for f in finals if f.text).replace(" ", "") == offline(frames).replace(" ", "")
    assert t.windows >= len(frames) // 10 - 2


def test_partials_mark_a_stable_prefix_that_never_changes():
    frames = "..aa|bb|cc|dd|ee|ff|gg|hh|aa|bb|cc|" + "." * 40
    events, _, _ = run(frames, StreamConfig(step_s=0.1, left_s=0.2, right_s=0.2, silence_s=0.5), push_frames=3)
    partials = [e for e in events if isinstance(e, contract.Partial)]
    assert len(partials) >= 5
    stable = ""
    for p in partials:
        assert p.text.startswith(p.stable)
        assert p.stable.startswith(stable)  # the committed words only grow
        stable = p.stable
    final = next(e for e in events if isinstance(e, contract.Final))
    assert final.text.startswith(stable) and final.text == "a b c d e f g h a b c"
    assert partials[0].text and partials[0].end > partials[0].start


def test_a_long_utterance_is_cut_at_its_last_word_boundary():
    frames = ("abc|" * 300)[:-1] + "." * 30  # 6 s of words without a pause
    events, _, _ = run(frames, StreamConfig(step_s=0.5, left_s=0.5, right_s=0.2, silence_s=0.5,
                                            max_utterance_s=2.0), push_frames=25)
    finals = [e for e in events if isinstance(e, contract.Final) and e.text]
    assert len(finals) >= 3
    assert all(set(f.text.split()) == {"abc"} for f in finals)  # no word split across two finals
    assert sum(len(f.text.split()) for f in finals) == 300
    assert all(a.end <= b.start for a, b in zip(finals, finals[1:]))


def test_a_stream_that_falls_behind_catches_up_in_one_window_and_says_so():
    frames = "a|b|c|d|" * 40  # 6.4 s, all at once: 62 steps of 5 frames are ready, with 5 frames of look-ahead
    events, model, t = run(frames, StreamConfig(step_s=0.1, left_s=0.2, right_s=0.1), push_frames=len(frames))
    # one catch-up window, then the end's (not 63 windows), then the final's pass over the utterance
    assert t.windows == 2 and t.final_passes == 1 and model.batches == [1, 1, 1]
    partial = next(e for e in events if isinstance(e, contract.Partial))
    assert partial.behind_s == round(((len(frames) - 1 - 5) // 5 - 1) * 0.1, 3) > 0  # 61 steps more than one
    assert next(e for e in events if isinstance(e, contract.Final)).text == offline(frames)
    # At real-time pace (one step at a time) nothing is behind; a catch-up window commits at most MAX_COMMIT_S.
    events, _, _ = run(frames, StreamConfig(step_s=0.1, left_s=0.2, right_s=0.1), push_frames=5)
    assert {e.behind_s for e in events if isinstance(e, contract.Partial)} == {0.0}
    long = "a|b|c|d|" * int(MAX_COMMIT_S * 50 / 8 * 2)  # twice MAX_COMMIT_S
    _, model, t = run(long, StreamConfig(step_s=0.5, left_s=0.2, right_s=0.1), push_frames=len(long))
    assert t.windows == 3


def test_the_end_of_a_stream_commits_every_frame():
    for frames in ("ab", "a" * 3 + "|" + "b" * 60, ""):
        events, _, t = run(frames, StreamConfig(step_s=0.5, left_s=2.0, right_s=0.5))
        last = events[-1]
        assert isinstance(last, contract.Final) and last.last is True
        assert last.text == offline(frames) if frames else last.text == ""
        assert t.committed == ((len(frames) * F - RF) // F + 1 if frames else 0)
