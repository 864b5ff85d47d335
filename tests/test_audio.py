"""common.audio: decoding containers, integer and float samples, downmixing, resampling, and refusals."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

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
