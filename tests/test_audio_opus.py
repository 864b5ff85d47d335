"""OGG Opus files (common/opus.py through common/audio.py, what /invocations and training decode) against the live
stream's `ogg_opus` decoder (serve/streamaudio.py): the same samples, bit for bit, in any cut; the caps from the
last page's granule position and while decoding; the refusals, in words."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import soundfile as sf

from common import opus
from common.audio import TARGET_RATE, AudioError, AudioTooLarge, AudioTooLong, decode_bytes, load_file, probe_seconds

pytestmark = pytest.mark.skipif(not opus.opus_available(), reason="libopus (libopus0) is not installed")


def speechlike(seconds: float, rate: int, channels: int = 1, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = [0.3 * np.sin(2 * np.pi * (220 + 90 * c) * t) * np.sin(2 * np.pi * 3 * t) + 0.02 * rng.standard_normal(len(t))
         for c in range(channels)]
    return np.stack(x, axis=1).astype(np.float32) if channels > 1 else x[0].astype(np.float32)


def ogg_opus(x: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="OGG", subtype="OPUS")
    return buf.getvalue()


def pages(data: bytes) -> list[int]:
    """Offsets of the pages (every page of these files is whole and in order)."""
    return [at for at in range(len(data)) if data.startswith(b"OggS", at)]


def edited(data: bytes, page: int, at: int, value: bytes, header: bool = False) -> bytes:
    """`data` with `value` written `at` bytes into the payload of page number `page` (-1: the last; into its
    header with `header`), the page's CRC made right again."""
    out = bytearray(data)
    start = pages(data)[page]
    payload = start + 27 + out[start + 26]
    end = payload + sum(out[start + 27:payload])
    at += start if header else payload
    out[at:at + len(value)] = value
    out[start + 22:start + 26] = bytes(4)
    out[start + 22:start + 26] = opus.ogg_crc(bytes(out[start:end])).to_bytes(4, "little")
    return bytes(out)


def with_granule(data: bytes, granule: int) -> bytes:
    return edited(data, -1, 6, granule.to_bytes(8, "little", signed=True), header=True)


def streamed(data: bytes, seed: int) -> np.ndarray:
    from serve.streamaudio import make_decoder

    rng = np.random.default_rng(seed)
    decoder, out, i = make_decoder("ogg_opus"), [], 0
    while i < len(data):
        n = int(rng.integers(1, 900))
        out.append(decoder.decode(data[i:i + n]))
        i += n
    out.append(decoder.flush())
    return np.concatenate(out)


GAIN_DB = -6.0  # OpusHead's output gain, Q7.8 dB at byte 16 of the header packet


@pytest.mark.parametrize("rate,channels,gain", [(16_000, 1, False), (48_000, 2, False), (8_000, 1, True),
                                                (24_000, 2, True)])
def test_a_file_decodes_to_its_streams_samples_exactly(rate, channels, gain, tmp_path):
    """decode_bytes (/invocations), load_file (training) and the live stream in random cuts give the same samples,
    bit for bit; the pre-skip is dropped, the end trimmed to the granule position, the output gain applied;
    probe_seconds is their length exactly."""
    x = speechlike(2.0, rate, channels)
    data = ogg_opus(x, rate)
    if gain:
        data = edited(data, 0, 16, int(GAIN_DB * 256).to_bytes(2, "little", signed=True))
    whole = decode_bytes(data)
    assert whole.dtype == np.float32 and len(whole) == 2 * TARGET_RATE
    for seed in (1, 2):
        np.testing.assert_array_equal(streamed(data, seed), whole)
    path = tmp_path / "x.opus"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_file(path), whole)
    assert probe_seconds(path) == len(whole) / TARGET_RATE
    if gain:  # the same file without its gain, scaled by it
        plain = decode_bytes(ogg_opus(x, rate))
        np.testing.assert_allclose(whole, plain * np.float32(10 ** (GAIN_DB / 20)), rtol=1e-5, atol=1e-7)


def test_invocations_hands_the_model_the_streams_samples():
    """Through the HTTP layer: the samples /invocations gives the model for an OGG Opus body are the live
    stream decoder's, bit for bit (so a file and its stream transcribe alike)."""
    from fake_models import FakeModel
    from serve.app import create_app
    from serve.settings import Settings

    data = ogg_opus(speechlike(1.5, 48_000, channels=2), 48_000)
    fake = FakeModel()
    reply = create_app(fake, Settings.from_env({})).test_client().post("/invocations", data=data,
                                                                       content_type="audio/opus")
    assert reply.status_code == 200, reply.get_json()
    (clip,) = fake.seen[-1]
    np.testing.assert_array_equal(np.asarray(clip.audio), streamed(data, seed=5))


def test_ogg_crc_is_the_reference_bitwise_crc():
    """The zlib-based CRC equals Ogg's CRC-32 computed bit by bit (polynomial 0x04C11DB7, MSB first, init 0)."""
    def bitwise(data: bytes) -> int:
        crc = 0
        for byte in data:
            crc ^= byte << 24
            for _ in range(8):
                crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
        return crc

    rng = np.random.default_rng(0)
    for n in (0, 1, 3, 27, 1000, 4099):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert opus.ogg_crc(data) == bitwise(data), n


def no_decoding(*_):
    raise AssertionError("a packet was decoded before the declared length was checked")


def test_the_granule_positions_claim_is_checked_before_decoding(monkeypatch):
    """A last page claiming 10^7 s (a small file's header lying): AudioTooLarge, and AudioTooLong under
    max_seconds, before a packet decodes."""
    data = with_granule(ogg_opus(speechlike(1.0, 16_000), 16_000), 48_000 * 10_000_000)
    monkeypatch.setattr(opus.OggOpusStream, "_audio", no_decoding)
    with pytest.raises(AudioTooLarge, match=r"declares 10000000\.0 s of 1 channel at 16000 Hz"):
        decode_bytes(data)
    with pytest.raises(AudioTooLong, match="longer than 60 s"):
        decode_bytes(data, max_seconds=60)


def test_the_caps_hold_while_decoding_when_the_granule_understates():
    """A last page claiming 0.1 s of a 3 s stream: decoding stops at max_seconds and max_decoded_bytes all the
    same (they count what libopus gives, not what the header says); without caps, the end is trimmed to it."""
    data = with_granule(ogg_opus(speechlike(3.0, 16_000), 16_000), 312 + 4800)
    assert len(decode_bytes(data)) == 1600
    with pytest.raises(AudioTooLong, match="longer than 1 s"):
        decode_bytes(data, max_seconds=1)
    with pytest.raises(AudioTooLarge, match="decodes to more than"):
        decode_bytes(data, max_decoded_bytes=100_000)  # 3 s x 16 kHz x 4 B = 192 kB


def test_refusals_name_the_problem():
    data = ogg_opus(speechlike(1.0, 16_000), 16_000)
    cases = [
        (data[: pages(data)[-1]], "OGG is truncated: it ends without an end-of-stream page"),
        (data + data, "chained"),
        (edited(data, 0, 18, b"\x01"), "mapping family 1"),  # a surround stream's header
        (edited(data, 1, 0, b"NotTags!"), "not OpusTags"),
    ]
    corrupt = bytearray(data)
    corrupt[-10] ^= 0xFF  # inside the last audio page, its CRC left as it was
    cases.append((bytes(corrupt), "CRC"))
    for body, says in cases:
        with pytest.raises(AudioError, match=says) as err:
            decode_bytes(body)
        assert "object at 0x" not in str(err.value)


def test_without_libopus_files_and_streams_say_so(monkeypatch, tmp_path):
    """A machine without libopus0: /invocations and training refuse OGG Opus naming the package, and so does the
    stream (its own wording); OGG Vorbis still decodes through libsndfile."""
    from serve.streamaudio import StreamAudioError, make_decoder

    monkeypatch.setattr(opus, "_lib", False)  # as _libopus() leaves it when ctypes finds none
    data = ogg_opus(speechlike(1.0, 16_000), 16_000)
    with pytest.raises(AudioError, match="Ogg Opus needs libopus.*libopus0"):
        decode_bytes(data)
    path = tmp_path / "x.opus"
    path.write_bytes(data)
    with pytest.raises(AudioError, match="libopus0"):
        load_file(path)
    with pytest.raises(StreamAudioError, match="ogg_opus needs libopus"):
        make_decoder("ogg_opus")
    buf = io.BytesIO()
    sf.write(buf, speechlike(1.0, 16_000), 16_000, format="OGG", subtype="VORBIS")
    assert len(decode_bytes(buf.getvalue())) == 16_000


def test_probe_reads_the_last_page_not_the_whole_file(tmp_path):
    """probe_seconds finds the end-of-stream page at the end of a file longer than the bytes it reads from each
    end; a file cut short has none and is refused."""
    data = ogg_opus(speechlike(40.0, 16_000), 16_000)
    assert len(data) > 2 * opus._MAX_PAGE
    path = tmp_path / "x.opus"
    path.write_bytes(data)
    assert probe_seconds(path) == 40.0 == len(load_file(path)) / TARGET_RATE
    path.write_bytes(data[: len(data) - 10])
    with pytest.raises(AudioError, match="end-of-stream page"):
        probe_seconds(path)
