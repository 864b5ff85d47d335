"""common.audio: decoding containers, integer and float samples, downmixing, resampling, and refusals."""
from __future__ import annotations

import io
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT
from common.audio import TARGET_RATE, AudioError, check_rate, decode_bytes, load_file, to_model_input


def tone(rate: int, seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def encode(x, rate, fmt="WAV", subtype=None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def dominant_hz(x: np.ndarray, rate: int = TARGET_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(x))
    return np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()]


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100, 48000, 96000])
def test_resampling_keeps_duration_and_pitch(rate):
    out = to_model_input(tone(rate, 1.0, 440.0), rate)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - TARGET_RATE) <= 1
    assert dominant_hz(out) == pytest.approx(440.0, abs=2)
    assert np.abs(out).max() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("fmt,subtype", [
    ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "FLOAT"), ("WAV", "DOUBLE"),
    ("WAV", "PCM_U8"), ("FLAC", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III"),
])
def test_decode_bytes_sniffs_containers(fmt, subtype):
    x = tone(22050, 1.0, 300.0)
    out = decode_bytes(encode(x, 22050, fmt, subtype))
    assert abs(len(out) - TARGET_RATE) <= 0.01 * TARGET_RATE
    assert dominant_hz(out) == pytest.approx(300.0, abs=3)


def test_integer_samples_are_scaled_by_their_type():
    x = tone(TARGET_RATE)
    for dtype in (np.int16, np.int32):
        scaled = (x * -np.iinfo(dtype).min).astype(dtype)
        np.testing.assert_allclose(to_model_input(scaled, TARGET_RATE), x, atol=1e-4)


def test_channels_are_averaged():
    left, right = tone(TARGET_RATE, hz=300), tone(TARGET_RATE, hz=500)
    out = to_model_input(np.stack([left, right], axis=1), TARGET_RATE)
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-6)
    out = decode_bytes(encode(np.stack([left, right, left], axis=1), TARGET_RATE, "WAV", "FLOAT"))
    np.testing.assert_allclose(out, (2 * left + right) / 3, atol=1e-6)


def test_load_file(tmp_path):
    path = tmp_path / "x.flac"
    sf.write(path, tone(44100), 44100)
    assert abs(len(load_file(path)) - TARGET_RATE) <= 1


def test_load_file_refuses_a_truncated_wav_as_decode_bytes_does(tmp_path):
    """libsndfile reads a WAV file cut short as a shorter clip; training must skip it as corrupt instead."""
    whole = encode(tone(TARGET_RATE), TARGET_RATE, "WAV", "PCM_16")
    path = tmp_path / "cut.wav"
    path.write_bytes(whole[:2000])
    with pytest.raises(AudioError, match="truncated"):
        load_file(path)
    path.write_bytes(whole)
    assert len(load_file(path)) == TARGET_RATE
    with pytest.raises(AudioError, match="cannot read"):
        load_file(tmp_path / "missing.wav")


@pytest.mark.parametrize("rate,says", [
    (0, "outside"), (999, "outside"), (10**7, "outside"), (-8000, "outside"), (16000.5, "whole number"),
    ("abc", "number"), (None, "number"), (float("nan"), "whole number"), (float("inf"), "whole number"),
])
def test_absurd_rates(rate, says):
    with pytest.raises(AudioError, match=says):
        check_rate(rate)


@pytest.mark.parametrize("samples,says", [
    ([], "no samples"), ([0.1, float("nan")], "NaN"), ([float("inf")], "infinite"), (["a"], "numbers"),
    ([True, False], "numbers"), ([[[0.1]]], "1-D"), (5.0, "1-D"), ([1 + 2j], "real"),
])
def test_bad_samples(samples, says):
    with pytest.raises(AudioError, match=says):
        to_model_input(samples, TARGET_RATE)


def test_undecodable_and_truncated_bytes():
    good = encode(tone(TARGET_RATE), TARGET_RATE, "WAV", "PCM_16")
    with pytest.raises(AudioError, match="empty"):
        decode_bytes(b"")
    with pytest.raises(AudioError, match="cannot decode"):
        decode_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(AudioError, match="truncated"):
        decode_bytes(good[: len(good) // 2])
    with pytest.raises(AudioError, match="truncated|cannot decode"):
        flac = encode(tone(TARGET_RATE), TARGET_RATE, "FLAC", "PCM_16")
        decode_bytes(flac[: len(flac) // 2])
    mp3 = encode(tone(TARGET_RATE, 2.0), TARGET_RATE, "MP3", "MPEG_LAYER_III")
    with pytest.raises(AudioError, match="truncated|cannot decode"):
        decode_bytes(mp3[: len(mp3) // 2])
    # A WAV whose writer streamed it (data size 0xFFFFFFFF) is not called truncated.
    streamed = bytearray(good)
    at = streamed.index(b"data")
    streamed[at + 4: at + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    assert len(decode_bytes(bytes(streamed))) == TARGET_RATE


def test_too_short_to_resample():
    with pytest.raises(AudioError, match="too short"):
        to_model_input([0.1], 44100 * 8)


def test_a_header_declaring_billions_of_frames_is_not_allocated():
    """A FLAC whose STREAMINFO claims 2^36 - 1 samples (275 GB as float32): an AudioError, not a MemoryError."""
    flac = bytearray(encode(tone(TARGET_RATE), TARGET_RATE, "FLAC"))
    field = int.from_bytes(flac[18:26], "big")  # rate (20 bits), channels, bits, total samples (36 bits)
    flac[18:26] = (field | ((1 << 36) - 1)).to_bytes(8, "big")
    with pytest.raises(AudioError):
        decode_bytes(bytes(flac))


def test_decoding_stops_at_max_seconds():
    from common.audio import AudioTooLong

    long_flac = encode(np.zeros(TARGET_RATE * 20, np.float32), TARGET_RATE, "FLAC")
    with pytest.raises(AudioTooLong, match="longer than 5 s"):
        decode_bytes(long_flac, max_seconds=5)
    assert len(decode_bytes(long_flac, max_seconds=20)) == TARGET_RATE * 20


# ---------------------------------------------------------------------------------------------------------------
# Files as tools write them: the length decoded is the length present (issue #11). Speech from espeak-ng.

import logging  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

import audio_variants as av  # noqa: E402
import soxr  # noqa: E402

from common.audio import AudioTooLong, probe_seconds  # noqa: E402


@pytest.fixture(scope="module")
def speech():
    """(espeak-ng's own streamed WAV bytes, its samples as float32, 22050): about 7.5 s of speech."""
    wav = av.espeak_wav()
    x, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return wav, x, rate


def saved(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data_size", [0, 0xFFFFFFFF, 0x7FFFF000, 0x80000000])
@pytest.mark.parametrize("riff_size", ["right", "placeholder", 0, 0xFFFFFFFF])
def test_wav_streamed_with_unknown_length_decodes_the_samples_present(speech, tmp_path, data_size, riff_size):
    """Pipe writers leave 0, 0xFFFFFFFF (ffmpeg) or 0x7FFFF000 (sox, espeak-ng) as the data size, and the RIFF
    size to match or the same placeholder: the samples present decode, sample for sample."""
    _, x, rate = speech
    whole = av.encode(x, rate, "WAV", "PCM_16")
    riff = {"right": None, "placeholder": (data_size + 36) & 0xFFFFFFFF}.get(riff_size, riff_size)
    streamed = av.wav_with_sizes(whole, data_size, riff)
    expected = decode_bytes(whole)
    np.testing.assert_array_equal(decode_bytes(streamed), expected)
    path = saved(tmp_path, "streamed.wav", streamed)
    np.testing.assert_array_equal(load_file(path), expected)
    assert probe_seconds(path) == len(x) / rate
    # A writer stopped in the middle of a sample frame: the whole frames decode.
    odd = saved(tmp_path, "odd.wav", streamed + b"\x01")
    np.testing.assert_array_equal(load_file(odd), expected)


def test_wav_from_streaming_tools(speech, tmp_path):
    """espeak-ng --stdout and sox writing to a pipe (WAV, FLAC, OGG): every sample present decodes."""
    wav, x, rate = speech
    assert wav[40:44] == (0x7FFFF000).to_bytes(4, "little") and len(x) == (len(wav) - 44) // 2
    expected = to_model_input(x, rate)
    np.testing.assert_array_equal(decode_bytes(wav), expected)
    assert probe_seconds(saved(tmp_path, "espeak.wav", wav)) == len(x) / rate
    if shutil.which("sox") is None:
        pytest.skip("sox is not installed")
    for kind in ("wav", "flac", "ogg"):
        piped = subprocess.run(f"sox -t wav - -t {kind} - | cat", shell=True, input=wav, capture_output=True,
                               check=True).stdout
        path = saved(tmp_path, f"piped.{kind}", piped)
        out = load_file(path)
        if kind == "ogg":  # lossy: same length
            assert abs(len(out) - len(expected)) <= 1
        else:
            np.testing.assert_array_equal(out, expected)
        assert probe_seconds(path) == pytest.approx(len(x) / rate, abs=1e-9)
    flac = (tmp_path / "piped.flac").read_bytes()
    assert int.from_bytes(flac[18:26], "big") & ((1 << 36) - 1) == 0  # sox could not write the sample count


def test_wav_whose_header_and_body_disagree_otherwise_is_refused(speech, tmp_path):
    _, x, rate = speech
    whole = av.encode(x, rate, "WAV", "PCM_16")
    for data in (whole[: len(whole) // 2], av.wav_with_sizes(whole[:5000], 0x7FFFEFFF)):
        with pytest.raises(AudioError, match="WAV is truncated: its header declares"):
            decode_bytes(data)
        with pytest.raises(AudioError, match="truncated"):
            load_file(saved(tmp_path, "cut.wav", data))


@pytest.fixture(scope="module")
def mp3_of(speech):
    """(samples, MP3 bytes) of the speech's first `seconds` at `rate` Hz with `channels`, encoded once per module
    (LAME is the slow part of these tests)."""
    _, x, src_rate = speech
    cache = {}

    def make(rate: int, channels: int = 1, mode: str = "CONSTANT", seconds: float | None = None):
        key = (rate, channels, mode, seconds)
        if key not in cache:
            y = soxr.resample(x[: int(seconds * src_rate)] if seconds else x, src_rate, rate).astype(np.float32)
            if channels == 2:
                y = np.stack([y, 0.5 * y[::-1]], axis=1)
            cache[key] = y, av.mp3(y, rate, mode)
        return cache[key]
    return make


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("mode", ["CONSTANT", "VARIABLE"])
def test_mp3_decodes_to_the_end_of_its_stream(mp3_of, tmp_path, rate, channels, mode):
    """With and without the Xing/Info frame, ID3v2 cover art and ID3v1: never shortened, never refused.
    With the Info frame (and its LAME tag) the length is the encoded audio's, to the sample. Without it every
    frame decodes: the encoder's delay and padding stay in (LAME: 1105 samples + padding, 1-3 frames),
    as in mpg123 and ffmpeg, since only that tag records them."""
    y, made = mp3_of(rate, channels, mode, seconds=2.0)
    truth, frame = len(y) / rate, av.samples_per_frame(rate) / rate
    bare = av.strip_info(made)
    in_frames = len(av.mp3_frames(bare)) * frame
    reference = to_model_input(y, rate)
    variants = {
        "info": made, "info+cover": av.with_id3v2_cover(made), "info+id3v1": av.with_id3v1(made),
        "no info": bare, "no info+cover": av.with_id3v2_cover(bare), "no info+id3v1": av.with_id3v1(bare),
        "no info+cover+id3v1": av.with_id3v1(av.with_id3v2_cover(bare)),
    }
    for name, data in variants.items():
        path = saved(tmp_path, "x.mp3", data)
        out = load_file(path)
        if name.endswith("cover"):  # training and serving decode the same way
            np.testing.assert_array_equal(decode_bytes(data), out)
        seconds, probed = len(out) / TARGET_RATE, probe_seconds(path)
        if name.startswith("info"):
            assert seconds == pytest.approx(truth, abs=2 / TARGET_RATE), name
            assert probed == pytest.approx(truth, abs=1e-9), name
            assert np.corrcoef(out[: len(reference)], reference[: len(out)])[0, 1] > 0.95, name
        else:
            assert seconds == pytest.approx(in_frames, abs=2 / TARGET_RATE), name
            assert 0 < seconds - truth < 3 * frame, name
            assert probed == pytest.approx(in_frames, abs=1e-9), name


def test_mp3_reported_cases(speech, mp3_of):
    """The two reports: a VBR MP3 without a Xing frame (libsndfile stopped at 3.2 of 7.5 s, its estimate from
    the first frame's bitrate), and an MP3 without an Info frame behind ID3v2 cover art (refused as truncated:
    the estimate counted the picture as audio)."""
    _, x, src_rate = speech
    truth = len(x) / src_rate
    _, vbr = mp3_of(44100, 1, "VARIABLE")
    _, cbr = mp3_of(22050, 1, "CONSTANT")
    for data in (av.strip_info(vbr), av.with_id3v2_cover(av.strip_info(cbr))):
        with sf.SoundFile(io.BytesIO(data)) as f:
            assert abs(f.frames / f.samplerate - truth) > 0.5  # libsndfile's estimate is far off
        assert len(decode_bytes(data)) / TARGET_RATE == pytest.approx(truth, abs=0.2)


def test_truncated_mp3_is_refused_and_extra_frames_decode(speech, mp3_of, caplog):
    _, x, src_rate = speech
    _, made = mp3_of(44100, 1, "CONSTANT")
    frames = av.mp3_frames(made)
    mid = frames[len(frames) // 2][0]
    with pytest.raises(AudioError, match=r"MP3 is truncated: its Xing/Info header counts \d+ frames"):
        decode_bytes(made[:mid])  # cut between two frames: the Info frame's count tells
    with pytest.raises(AudioError, match="MP3 is truncated: its last frame is cut short"):
        decode_bytes(made[: mid + 100])
    bare = av.strip_info(made)
    with pytest.raises(AudioError, match="MP3 is truncated: its last frame is cut short"):
        decode_bytes(av.with_id3v1(bare[: len(bare) // 2 + 7]))
    # Without a frame count, a cut between two frames cannot be told from a whole file: it decodes what is there.
    cut = bare[: av.mp3_frames(bare)[100][0]]
    assert len(decode_bytes(cut)) == round(100 * 1152 * TARGET_RATE / 44100)
    # Two files concatenated: the first one's Info frame counts only its own frames; all decode, logged.
    with caplog.at_level(logging.WARNING, logger="common.audio"):
        both = decode_bytes(made + made)
    assert len(both) / TARGET_RATE > 2 * len(x) / src_rate
    assert "Xing/Info header counts" in caplog.text


def test_mp3_length_limit_and_header_claims(mp3_of):
    """SERVE_MAX_AUDIO_S applies to MP3 before decoding; an absurd Xing frame count allocates nothing."""
    _, made = mp3_of(22050, 1, "CONSTANT")  # 7.5 s
    for data in (made, av.strip_info(made)):
        with pytest.raises(AudioTooLong, match="longer than 5 s"):
            decode_bytes(data, max_seconds=5)
        assert len(decode_bytes(data, max_seconds=8)) >= 7 * TARGET_RATE
    at = made.index(b"Info") + 8
    claim = made[:at] + (0xFFFFFFFF).to_bytes(4, "big") + made[at + 4:]
    with pytest.raises(AudioError, match="truncated"):
        decode_bytes(claim)


def test_flac_length_comes_from_its_frames(speech, tmp_path, caplog):
    """STREAMINFO's count is 0 when written to a pipe: every frame decodes (and probe_seconds counts them);
    a count above the frames present is a truncated file; one below them loses nothing, logged."""
    _, x, rate = speech
    flac = av.encode(x, rate, "FLAC", "PCM_16")
    expected = decode_bytes(flac)
    np.testing.assert_array_equal(expected, to_model_input(x, rate))
    unknown = av.flac_with_total(flac, 0)
    np.testing.assert_array_equal(decode_bytes(unknown), expected)
    assert probe_seconds(saved(tmp_path, "u.flac", unknown)) == len(x) / rate
    with caplog.at_level(logging.WARNING, logger="common.audio"):
        np.testing.assert_array_equal(decode_bytes(av.flac_with_total(flac, len(x) // 2)), expected)
    assert "STREAMINFO declares" in caplog.text
    with pytest.raises(AudioError, match="FLAC is truncated: its STREAMINFO declares"):
        decode_bytes(av.flac_with_total(flac, 2 * len(x)))
    with pytest.raises(AudioError, match="FLAC is truncated"):
        load_file(saved(tmp_path, "cut.flac", flac[: len(flac) * 2 // 3]))


@pytest.mark.parametrize("subtype,rate", [("VORBIS", 22050), ("OPUS", 48000)])
def test_ogg_cut_short_or_chained_is_refused(speech, tmp_path, subtype, rate):
    """OGG has no length in a header: a stream is whole when its last page ends it. libsndfile decodes the
    pages present of a cut file, and only the first of two concatenated files, without a word."""
    _, x, src_rate = speech
    y = soxr.resample(x, src_rate, rate).astype(np.float32)
    ogg = av.encode(y, rate, "OGG", subtype)
    out = load_file(saved(tmp_path, "x.ogg", ogg))
    assert len(out) / TARGET_RATE == pytest.approx(len(y) / rate, abs=2 / TARGET_RATE)
    if subtype == "OPUS":  # common/opus.py: the granule position at 16 kHz, exactly what load_file decodes
        assert probe_seconds(tmp_path / "x.ogg") == len(out) / TARGET_RATE
    else:
        assert probe_seconds(tmp_path / "x.ogg") == pytest.approx(len(y) / rate, abs=1e-9)
    with pytest.raises(AudioError, match="OGG is truncated"):
        decode_bytes(ogg[: len(ogg) * 3 // 5])
    pages = [i for i in range(len(ogg)) if ogg.startswith(b"OggS", i)]
    with pytest.raises(AudioError, match="OGG is truncated: it ends without an end-of-stream page"):
        decode_bytes(ogg[: pages[len(pages) // 2]])  # cut between two pages
    with pytest.raises(AudioError, match="chained"):
        decode_bytes(ogg + ogg)


def test_mutated_files_raise_audio_error_only(speech):
    """Untrusted bytes: seeded mutations of each container (bytes changed, cut out, inserted) decode or raise
    AudioError, never another exception, a crash or an allocation from a damaged header."""
    import random

    _, x, rate = speech
    x = x[: rate // 2]
    seeds = [av.mp3(x, rate), av.strip_info(av.mp3(x, rate, "VARIABLE")), av.with_id3v2_cover(av.mp3(x, rate), 2000),
             av.encode(x, rate, "FLAC"), av.flac_with_total(av.encode(x, rate, "FLAC"), 0),
             av.encode(x, rate, "OGG", "VORBIS"), av.encode(x, rate, "WAV", "PCM_16"),
             av.wav_with_sizes(av.encode(x, rate, "WAV", "PCM_16"), 0xFFFFFFFF, 0xFFFFFFFF)]
    rng = random.Random(11)
    for _ in range(300):
        data = av.mutate(rng.choice(seeds), rng)
        try:
            out = decode_bytes(data, max_seconds=60)
        except AudioError:
            continue
        assert out.dtype == np.float32 and out.ndim == 1


def test_probe_benchmark_runs(tmp_path):
    """bench/audio_probe end to end with 2 clips per variant (its figures are not asserted)."""
    import json
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "bench" / "audio_probe"
    proc = subprocess.run([sys.executable, str(bench), "--clips", "2", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    for variant in ("mp3_info", "mp3_no_info", "mp3_no_info_and_cover", "wav_streamed"):
        assert figures[variant]["probe_files_per_s"] > 0
        assert figures[variant]["probe_vs_decoded_max_ms"] < 0.1  # probe says what load_file decodes


def test_probe_of_mp3_whose_size_disagrees_with_its_info_frame(mp3_of, tmp_path):
    """Two MP3s concatenated: the Info frame counts the first one's frames and bytes only; probe_seconds then
    walks the frames and agrees with load_file."""
    _, made = mp3_of(44100, 1, "CONSTANT")
    path = saved(tmp_path, "two.mp3", made + made)
    assert probe_seconds(path) == pytest.approx(len(load_file(path)) / TARGET_RATE, abs=2 / TARGET_RATE)


def test_a_decompression_bomb_is_refused_from_its_header_before_decoding(bomb_flac, tmp_path):
    """Issue 28: 196 KiB of FLAC declaring 60 s of 8 channels at 384 kHz cost the decoder +1.5 GB. Now refused from
    STREAMINFO (channels x rate x duration against the bound); the peak memory of a fresh process is measured."""
    from common.audio import AudioTooLarge

    assert len(bomb_flac) < 200 * 1024
    with pytest.raises(AudioTooLarge, match=r"declares 60\.0 s of 8 channels at 384000 Hz: 703 MB"):
        decode_bytes(bomb_flac)
    path = tmp_path / "bomb.flac"
    path.write_bytes(bomb_flac)
    with pytest.raises(AudioTooLarge, match=rf"^{re.escape(str(path))}: audio declares"):
        load_file(path)  # training's loader: the same bound, naming the file
    code = ("import resource, sys; from common.audio import decode_bytes, AudioError\n"
            "data = open(sys.argv[1], 'rb').read(); before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    decode_bytes(data)\nexcept AudioError:\n    pass\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True, check=True)
    grew_mb = int(out.stdout.strip())
    print(f"bomb refused: peak RSS grew {grew_mb} MB")
    assert grew_mb < 40, grew_mb


def test_many_channels_are_averaged_block_by_block_as_a_whole_mean_would(tmp_path):
    rng = np.random.default_rng(3)
    x = (0.1 * rng.standard_normal((40_000, 6))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, 16_000, format="WAV", subtype="FLOAT")
    np.testing.assert_array_equal(decode_bytes(buf.getvalue()), x.mean(axis=1, dtype=np.float32))
