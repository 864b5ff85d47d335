"""WebM, MP4/M4A, AAC and video containers (common/audio_av.py, through PyAV), made in the test with PyAV from
espeak-ng speech: decoded samples against the WAV they were made from, a live server's transcripts, the caps
(duration, decoded bytes from a header's claim), and the refusals (truncated, not audio, a video without sound),
whose messages never hold a Python object's repr."""
from __future__ import annotations

import io
import json
import random
import re

import numpy as np
import pytest
import soundfile as sf
import soxr

import audio_variants as av
from common import audio_av, mediatypes
from common.audio import (TARGET_RATE, AudioError, AudioTooLarge, AudioTooLong, decode_bytes, load_file,
                          probe_seconds)
from serve_helpers import Server, encode, make_opt_ml

# (id, the Content-Type a client sends, PyAV container, codec, codec rate, layout, video codec or None)
CONTAINERS = [
    ("webm-opus", "audio/webm", "webm", "libopus", 48_000, "mono", None),  # MediaRecorder (Chrome, Firefox)
    ("webm-opus-video", "video/webm", "webm", "libopus", 48_000, "stereo", "libvpx"),
    ("webm-vorbis", "audio/webm", "webm", "vorbis", 44_100, "stereo", None),
    ("mp4-fragmented", "audio/mp4", "mp4-fragmented", "aac", 48_000, "mono", None),  # Safari's MediaRecorder
    ("m4a-aac", "audio/mp4", "ipod", "aac", 44_100, "mono", None),  # phone voice memos
    ("m4a-aac-stereo", "audio/m4a", "ipod", "aac", 48_000, "stereo", None),
    ("m4a-alac", "audio/x-m4a", "ipod", "alac", 22_050, "mono", None),
    ("mp4-aac-video", "video/mp4", "mp4", "aac", 44_100, "stereo", "mpeg4"),  # Zoom/Teams recordings
    ("mp4-opus", "audio/mp4", "mp4", "libopus", 48_000, "mono", None),
    ("aac-adts", "audio/aac", "adts", "aac", 22_050, "mono", None),
    ("ogg-opus", "audio/opus", "ogg", "libopus", 48_000, "mono", None),  # sniffed as OGG, then Opus: libopus
]
IDS = [c[0] for c in CONTAINERS]
PYAV = CONTAINERS
REPR = re.compile(r"object at 0x|<[\w.]+ object")


def made(case, x, rate) -> bytes:
    _, _, container, codec, codec_rate, layout, video = case
    options = None
    if container == "mp4-fragmented":
        container, options = "mp4", {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
    return av.pyav_file(x, rate, container, codec, codec_rate, layout, video, options=options)


@pytest.fixture(scope="module")
def speech():
    """espeak-ng speech: (samples float32, 22050 Hz), about 7.5 s."""
    x, rate = sf.read(io.BytesIO(av.espeak_wav()), dtype="float32")
    return x, rate


@pytest.fixture(scope="module")
def files(speech):
    x, rate = speech
    return {case[0]: made(case, x, rate) for case in CONTAINERS}


def aligned(reference: np.ndarray, y: np.ndarray) -> tuple[int, float]:
    """(lag of `y` behind `reference` in samples, their correlation over the overlap once aligned)."""
    n = len(reference) + len(y)
    cc = np.fft.irfft(np.fft.rfft(y, n) * np.conj(np.fft.rfft(reference, n)), n)
    lag = int(np.argmax(cc))
    lag = lag if lag < n // 2 else lag - n
    y = y[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag, np.float32), y])
    m = min(len(y), len(reference))
    a, b = reference[:m].astype(np.float64), y[:m].astype(np.float64)
    return lag, float(a @ b / np.sqrt((a @ a) * (b @ b)))


@pytest.mark.parametrize("case", CONTAINERS, ids=IDS)
def test_each_container_decodes_close_to_the_wav_it_was_made_from(case, speech, files, tmp_path):
    """Same length within 60 ms (AAC's 1024-sample encoder delay stays in: PyAV's muxing wrote no edit list for
    it; ADTS cannot signal delay or padding at all: up to 2 x 1024 samples, 93 ms at 22.05 kHz), the same signal
    once aligned (lossy codecs at 128 kbit/s: correlation >= 0.95, measured 0.976-0.9996; ALAC: exact);
    probe_seconds within a codec frame of it; training's load_file decodes the same samples."""
    x, rate = speech
    want = soxr.resample(x, rate, TARGET_RATE, quality="HQ")
    data = files[case[0]]
    got = decode_bytes(data, max_seconds=60)
    assert got.dtype == np.float32 and got.ndim == 1
    slack_s = 2 * 1024 / case[4] + 0.005 if case[2] == "adts" else 0.06
    assert abs(len(got) - len(want)) / TARGET_RATE < slack_s, (len(got), len(want))
    lag, corr = aligned(want, got)
    print(f"{case[0]}: {len(data)} bytes, lag {lag / TARGET_RATE * 1000:.1f} ms, correlation {corr:.4f}")
    assert abs(lag) / TARGET_RATE < slack_s
    assert corr >= (0.9999 if case[3] == "alac" else 0.95), corr
    path = tmp_path / f"clip.{case[0]}"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_file(path), got)
    if case[3] != "vorbis":  # this writer (FFmpeg's experimental Vorbis encoder through PyAV) stamps its blocks
        # with times that end at 0.5 s of the 7.3 s it holds; probe_seconds reads timestamps, decoding does not
        assert probe_seconds(path) == pytest.approx(len(got) / TARGET_RATE, abs=0.03)


def test_the_sniffed_container_not_the_type_decides():
    """The bytes choose the decoder: an MP4's first box, EBML's magic, two ADTS headers in a row."""
    from common.audio import _sniff

    x = np.zeros(16_000, np.float32)
    assert _sniff(av.pyav_file(x, 16_000, "ipod")) == "mp4"
    assert _sniff(av.pyav_file(x, 16_000, "webm", "libopus", 48_000)) == "webm"
    assert _sniff(av.pyav_file(x, 16_000, "adts")) == "aac"
    assert _sniff(av.pyav_file(x, 16_000, "ogg", "libopus", 48_000)) == "ogg"
    assert _sniff(av.mp3(x, 16_000)) == "mp3"  # MPEG Layer III headers are not ADTS (layer bits 01, not 00)


def test_ogg_opus_starts_after_its_pre_skip_and_ends_at_its_granule_position():
    """OGG Opus goes through common/opus.py (libopus): libsndfile 1.2.2 read from the start (as common/audio.py
    reads) kept the encoder's 312 pre-skip samples (6.5 ms late, as much lost at the end). The end is the last
    page's granule position minus the pre-skip (RFC 7845 4.4): exact for libsndfile's writer; FFmpeg's Ogg muxer
    fed by PyAV (frames stamped from 0, not from -pre-skip) stamps its last page one pre-skip (312 samples at
    48 kHz, 104 at 16 kHz) later than the audio it holds, and that much trailing codec padding decodes."""
    x = (0.1 * np.random.default_rng(5).standard_normal(TARGET_RATE * 2)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, TARGET_RATE, format="OGG", subtype="OPUS", compression_level=0.0)  # its highest bitrate
    for data, extra in ((buf.getvalue(), 0), (av.pyav_file(x, TARGET_RATE, "ogg", "libopus", 48_000), 104)):
        got = decode_bytes(data)
        lag, corr = aligned(x, got)
        assert lag == 0 and len(got) == len(x) + extra and corr > 0.9, (lag, len(got), corr)


def test_training_indexes_the_new_containers_in_tables_and_librispeech_folders(files, tmp_path):
    """A Hugging Face table's audio bytes are probed as a file is (soundfile's header reader, used before, read
    no M4A, WebM, AAC or Opus); a LibriSpeech folder's `ID.m4a`, `ID.webm`, `ID.opus` are its audio files."""
    from train import formats, index

    for case in CONTAINERS:
        if case[3] == "vorbis":  # its writer's timestamps end early (see above)
            continue
        data = files[case[0]]
        path = tmp_path / f"clip.{case[0]}"
        path.write_bytes(data)
        assert index.probe_bytes_seconds(memoryview(data)) == pytest.approx(probe_seconds(path), abs=1e-9)
        assert probe_seconds(path) > 7, case[0]
    with pytest.raises(AudioError, match="MP4/M4A is truncated") as err:
        index.probe_bytes_seconds(memoryview(files["m4a-aac"][:1000]))
    assert not REPR.search(str(err.value))
    chapter = tmp_path / "LibriSpeech" / "103" / "1240"
    chapter.mkdir(parents=True)
    names = [f"103-1240-000{i}{suffix}" for i, suffix in enumerate((".m4a", ".webm", ".opus", ".aac"))]
    for name, case in zip(names, ("m4a-aac", "webm-opus", "ogg-opus", "aac-adts")):
        (chapter / name).write_bytes(files[case])
    (chapter / "103-1240.trans.txt").write_text("".join(f"{n.split('.')[0]} SOME WORDS\n" for n in names))
    listing = formats._read_librispeech(tmp_path / "LibriSpeech", formats.Options(channel="train"))
    assert [row.audio for row in listing.rows] == [f"103/1240/{n}" for n in names]


@pytest.mark.parametrize("name,want", [("memo.m4a", "audio/mp4"), ("call.mp4", "video/mp4"), ("rec.webm", "video/webm"),
                                       ("rec.weba", "audio/webm"), ("voice.opus", "audio/opus"),
                                       ("clip.aac", "audio/aac")])
def test_launch_invoke_sends_each_suffix_as_a_type_the_server_decodes(name, want):
    """`launch invoke FILE` (real-time and --async) picks the Content-Type from the one table; the server
    decodes every type in it."""
    from launcher import asyncinvoke, hosting
    from serve import bodies

    ctype = asyncinvoke.content_type_of(name, None, hosting.CONTENT_TYPES)
    assert ctype == want and ctype in bodies.DECODERS


@pytest.mark.parametrize("case", PYAV, ids=[c[0] for c in PYAV])
def test_truncated_files_are_refused_as_truncated(case, files):
    data = files[case[0]]
    for cut in (len(data) // 2, len(data) - 3, 100):
        with pytest.raises(AudioError, match="truncated") as err:
            decode_bytes(data[:cut])
        assert not REPR.search(str(err.value))


def test_mp4_index_and_samples_must_agree(files):
    """An MP4 whose 'moov' box is missing (the writer died before writing it), or whose index (mdhd and stts)
    declares far more than its samples hold, is refused."""
    data = files["m4a-aac"]
    at = data.index(b"moov") - 4
    size = int.from_bytes(data[at:at + 4], "big")
    with pytest.raises(AudioError, match="no 'moov' box"):
        decode_bytes(data[:at] + data[at + size:])
    lying = bytearray(data)
    mdhd, stts = lying.index(b"mdhd"), lying.index(b"stts")
    lying[mdhd + 20:mdhd + 24] = (44_100 * 60).to_bytes(4, "big")  # 60 s in the track header
    lying[stts + 16:stts + 20] = (1 << 20).to_bytes(4, "big")  # and in the first sample-table entry's delta
    with pytest.raises(AudioError, match="index is damaged: the index declares"):
        decode_bytes(bytes(lying))
    # An edit list that presents half the track (a trimmed recording) is no damage: half of it decodes.
    trimmed = bytearray(data)
    elst = trimmed.index(b"elst")
    whole = int.from_bytes(trimmed[elst + 12:elst + 16], "big")  # version 0: segment duration, movie time scale
    trimmed[elst + 12:elst + 16] = (whole // 2).to_bytes(4, "big")
    assert len(decode_bytes(bytes(trimmed))) / TARGET_RATE == pytest.approx(whole / 2 / 1000, abs=0.1)


@pytest.mark.parametrize("container,video", [("mp4", "mpeg4"), ("webm", "libvpx")])
def test_a_video_without_an_audio_track_is_refused_as_such(container, video):
    data = av.pyav_file(None, 16_000, container, video=video)
    with pytest.raises(AudioError, match="holds video but no audio track"):
        decode_bytes(data)


def test_not_audio_is_refused_in_words():
    for body, says in [(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 200, "MP4/M4A"),
                       (b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 4, "WebM/Matroska"),
                       ((b"\xff\xf1\x50\x80\x02\x9f\xfc" + b"\x55" * 13) * 3, "AAC"),
                       (b"%PDF-1.7\n" + b"x" * 500, "cannot decode audio")]:
        with pytest.raises(AudioError, match=re.escape(says)) as err:
            decode_bytes(body)
        assert not REPR.search(str(err.value)), err.value


def test_length_caps_hold_while_decoding(files):
    """max_seconds stops decoding as soon as it is passed; a track that declares no length (ADTS) is stopped
    at max_decoded_bytes as it decodes."""
    with pytest.raises(AudioTooLong, match="longer than 2 s"):
        decode_bytes(files["webm-opus"], max_seconds=2)
    with pytest.raises(AudioTooLong):
        decode_bytes(files["aac-adts"], max_seconds=2)
    with pytest.raises(AudioTooLarge, match="decodes to more than"):
        decode_bytes(files["aac-adts"], max_decoded_bytes=200_000)  # 7.5 s x 22050 Hz x 4 B = 660 kB


def test_a_header_declaring_a_huge_duration_is_refused_before_decoding(files, monkeypatch):
    """A WebM whose Info/Duration claims 10^7 s of 48 kHz Opus (1.8 TB of float32): refused from the header; no
    frame is decoded (the per-frame conversion is replaced by one that fails the test)."""
    import struct

    data = bytearray(files["webm-opus"])
    at = data.index(b"\x44\x89\x88")  # Duration, an 8-byte float, in milliseconds
    data[at + 3:at + 11] = struct.pack(">d", 1e10)

    def no_decoding(frame):
        raise AssertionError("a frame was decoded before the declared length was checked")

    monkeypatch.setattr(audio_av, "_as_float", no_decoding)
    with pytest.raises(AudioTooLarge, match=r"declares 10000000\.0 s of 1 channel at 48000 Hz"):
        decode_bytes(bytes(data))


def mutations(speech, seed: int = 21, count: int = 150):
    """Seeded mutations (bytes changed, cut out, inserted) of a second of speech in each new container."""
    x, rate = speech
    seeds = [made(case, x[:rate], rate) for case in PYAV]
    rng = random.Random(seed)
    for _ in range(count):
        yield av.mutate(rng.choice(seeds), rng)


def test_mutations_and_garbage_raise_audio_error_only(speech):
    """Untrusted bytes: seeded mutations of each new container decode or raise AudioError (never another
    exception or a crash), and no message holds a Python object's repr."""
    refused = 0
    for data in mutations(speech):
        try:
            out = decode_bytes(data, max_seconds=60)
        except AudioError as exc:
            refused += 1
            assert not REPR.search(str(exc)), exc
            continue
        assert out.dtype == np.float32 and out.ndim == 1
    assert refused > 0


def test_a_frame_of_more_than_8_channels_is_refused_not_a_crash(speech):
    """One of those mutations is an ADTS file whose channel configuration turns from mono to 12 channels
    mid-stream: PyAV 18.1's to_ndarray read past AVFrame.data's 8 plane pointers and crashed the process
    (now and then). It is refused; decoded 20 times in a child process, so a regression fails this test
    instead of killing the run."""
    import subprocess
    import sys

    from conftest import ROOT

    found = None
    for data in mutations(speech):
        try:
            decode_bytes(data)
        except AudioError as exc:
            if "a frame of 12 channels" in str(exc):
                found = data
                break
    assert found is not None
    code = ("import sys; from common.audio import decode_bytes, AudioError\n"
            "data = sys.stdin.buffer.read()\n"
            "for _ in range(20):\n    try:\n        decode_bytes(data)\n    except AudioError:\n        pass\n")
    out = subprocess.run([sys.executable, "-c", code], input=found, cwd=ROOT, capture_output=True)
    assert out.returncode == 0, out.stderr.decode()[-2000:]


# ---------------------------------------------------------------------------------------------------------------
# Through a live server with the tiny model

@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("serve_containers")
    srv = Server(make_opt_ml(root / "opt_ml", tiny_model_dir), root / "server.log", MODEL_SERVER_WORKERS="1",
                 SERVE_THREADS="4", SERVE_MAX_AUDIO_S="60").wait_ready()
    yield srv
    srv.stop()


def cer(ref: str, hyp: str) -> float:
    import jiwer

    return jiwer.cer(ref, hyp) if ref else float(bool(hyp))


@pytest.fixture(scope="module")
def clip(synthetic_data):
    """A held-out espeak-ng clip at 16 kHz (the tiny model's own data)."""
    return load_file(sorted((synthetic_data / "test" / "audio").glob("*.wav"))[2])


# Lossless tracks at 16 kHz: the same samples as the 16-bit WAV, so the same transcript, character for character.
LOSSLESS_16K = [
    ("m4a-alac-16k", "audio/x-m4a", "ipod", "alac", 16_000, "mono", None),
    ("mkv-pcm-video", "video/webm", "matroska", "pcm_s16le", 16_000, "stereo", "libvpx"),
    ("mov-pcm-video", "video/mp4", "mov", "pcm_s16le", 16_000, "stereo", "mpeg4"),
]


@pytest.mark.parametrize("case", CONTAINERS + LOSSLESS_16K, ids=IDS + [c[0] for c in LOSSLESS_16K])
def test_the_server_transcribes_each_container_as_the_wav(case, server, clip):
    """Every container: the transcript of the file equals that of the samples PyAV decodes from it (in this
    test, independently of common/audio_av.py), sent as JSON at the track's own rate: the server decodes the
    container and nothing else changes. OGG Opus: that of the samples the live stream's `ogg_opus` decoder
    gives (the server must decode a file as its stream; FFmpeg decodes at 48 kHz, not libopus at 16 kHz).
    Lossless 16 kHz tracks: the WAV's transcript exactly. Lossy codecs: the CER against the WAV's transcript is
    printed, not bounded: the random tiny model is no judge of a codec (Opus at 16 kHz and 128 kbit/s, 0.9999
    correlated with the WAV, moved its transcript by CER 0.26; AAC's untrimmed 1024-sample delay by 0.64); the
    decoded samples are checked against the WAV above instead."""
    wav_file = encode(clip, TARGET_RATE, "WAV", "PCM_16")
    pcm, _ = sf.read(io.BytesIO(wav_file), dtype="int16")  # lossless tracks hold exactly the WAV's samples
    data = made(case, pcm if case in LOSSLESS_16K else clip, TARGET_RATE)
    reply = server.post(data, case[1])
    assert reply.status == 200, reply.body
    if case[2] == "ogg":
        from serve.streamaudio import make_decoder

        samples, rate = make_decoder("ogg_opus").decode(data), TARGET_RATE
    else:
        samples, rate = av.pyav_samples(data)
    same = server.post_json({"speech_array": samples.tolist(), "sampling_rate": rate})
    assert reply.json["text"] == same.json["text"]
    wav = server.post(wav_file, "audio/wav").json["text"]
    got = reply.json["text"]
    print(f"{case[0]}: CER against the WAV's transcript {cer(wav, got):.3f}")
    if case in LOSSLESS_16K:
        assert got == wav
    assert reply.json["audio_seconds"] == pytest.approx(len(clip) / TARGET_RATE, abs=0.07)


@pytest.mark.parametrize("ctype", mediatypes.AUDIO)
def test_garbage_through_every_audio_type_is_a_400_in_words(server, ctype):
    """Garbage, a container's magic then garbage, and a video without sound, sent as every audio type: 400 with
    a message, never a 500, and no Python object's repr in it."""
    rng = random.Random(ctype)
    bodies = [rng.randbytes(3000), b"\x1a\x45\xdf\xa3" + rng.randbytes(500),
              b"\x00\x00\x00\x20ftypisom" + rng.randbytes(500), b"\xff\xf1\x50\x80" + rng.randbytes(500),
              b"OggS\x00\x02" + rng.randbytes(500),
              b"<html><body>not audio</body></html>"]
    for body in bodies:
        reply = server.post(body, ctype)
        assert reply.status == 400, (body[:16], reply.status, reply.body)
        message = reply.json["error"]
        assert message and not REPR.search(json.dumps(reply.json)), message


def test_the_server_refuses_a_video_without_sound_and_a_bomb(server, files):
    reply = server.post(av.pyav_file(None, 16_000, "mp4", video="mpeg4"), "video/mp4")
    assert reply.status == 400 and "no audio track" in reply.json["error"], reply.body
    data = bytearray(files["webm-opus"])
    at = data.index(b"\x44\x89\x88")
    data[at + 3:at + 11] = __import__("struct").pack(">d", 1e10)
    reply = server.post(bytes(data), "audio/webm")
    assert reply.status == 413 and "declares" in reply.json["error"], reply.body
    reply = server.post(files["m4a-aac"][: len(files["m4a-aac"]) // 2], "audio/m4a")
    assert reply.status == 400 and "truncated" in reply.json["error"], reply.body


def test_the_audio_formats_page_lists_every_audio_type_and_suffix():
    """docs/audio-formats.md, Content types: its table holds exactly common/mediatypes.AUDIO, and the suffixes it
    says `launch invoke` maps are the table's."""
    from docs_helpers import DOCS, section, table_lines

    text = section(DOCS / "audio-formats.md", "## Content types")
    listed = set()
    for row in table_lines(text).splitlines()[2:]:
        listed |= set(re.findall(r"`([a-z]+/[a-z0-9.+-]+)`", row.split("|")[1]))
    assert listed == set(mediatypes.AUDIO)
    for suffix, ctype in re.findall(r"`(\.[a-z0-9]+)` as `([a-z]+/[a-z0-9.+-]+)`", text):
        assert mediatypes.BY_SUFFIX[suffix] == ctype, suffix
    assert {".webm", ".weba", ".m4a", ".mp4", ".aac", ".opus"} <= set(re.findall(r"`(\.[a-z0-9]+)` as", text))


def test_without_pyav_the_new_containers_are_refused_in_words(files, monkeypatch):
    """A checkout without PyAV (requirements not installed) refuses these files with AudioError naming the fix,
    not an ImportError (a 500 when served); WAV still decodes."""
    import sys

    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    with pytest.raises(AudioError, match="need PyAV, which is not installed here"):
        decode_bytes(files["m4a-aac"])
    assert len(decode_bytes(encode(np.zeros(1600, np.float32), TARGET_RATE))) == 1600
