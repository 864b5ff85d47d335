"""Audio files as real tools write them, made in the tests: espeak-ng speech, MP3/FLAC/OGG from libsndfile,
WebM/MP4/M4A/AAC (and video with or without sound) from PyAV, and the byte edits that reproduce what other writers
and taggers do (no Xing/Info frame, ID3v2 cover art, ID3v1, streamed WAV headers, FLAC of unknown length). Shared
by tests/test_audio.py, tests/test_audio_containers.py and bench/audio_probe."""
from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import soundfile as sf

SENTENCE = ("the quick brown fox jumps over the lazy dog while five boxing wizards jump quickly "
            "and the rain in spain stays mainly in the plain")


def espeak_wav(text: str = SENTENCE) -> bytes:
    """espeak-ng's own WAV on stdout: 22.05 kHz mono 16-bit, streamed (data size 0x7FFFF000, sox's marker)."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (./setup.sh installs it)")
    return subprocess.run(["espeak-ng", "--stdout", text], check=True, capture_output=True).stdout


def encode(x: np.ndarray, rate: int, fmt: str, subtype: str | None = None, **options) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype, **options)
    return buf.getvalue()


def mp3(x: np.ndarray, rate: int, bitrate_mode: str = "CONSTANT") -> bytes:
    """LAME through libsndfile: an Info (CBR) or Xing (VBR) frame with a LAME tag, then the audio frames."""
    return encode(x, rate, "MP3", "MPEG_LAYER_III", compression_level=0.5, bitrate_mode=bitrate_mode)


_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_KBPS = {True: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
         False: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)}


def mp3_frames(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each Layer III frame, the Info/Xing frame included (written independently of
    common.audio's parser, to check it)."""
    pos, out = 0, []
    if data[:3] == b"ID3":
        pos = 10 + (data[6] << 21 | data[7] << 14 | data[8] << 7 | data[9])
    while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] & 0xE0 == 0xE0:
        version, index, pad = (data[pos + 1] >> 3) & 3, data[pos + 2] >> 4, (data[pos + 2] >> 1) & 1
        rate = _RATES[version][(data[pos + 2] >> 2) & 3]
        length = (144 if version == 3 else 72) * 1000 * _KBPS[version == 3][index] // rate + pad
        out.append((pos, length))
        pos += length
    return out


def samples_per_frame(rate: int) -> int:
    return 1152 if rate >= 32000 else 576


def strip_info(data: bytes) -> bytes:
    """The MP3 without its first frame (the Xing/Info frame): what encoders that write none produce."""
    (first, length), (second, _) = mp3_frames(data)[:2]
    assert b"Xing" in data[first:first + length] or b"Info" in data[first:first + length]
    return data[second:]


def with_id3v2_cover(data: bytes, picture_bytes: int = 300_000) -> bytes:
    """An ID3v2.3 tag with a title and an APIC (cover art) frame in front, as taggers write it."""
    def frame(fid: bytes, body: bytes) -> bytes:
        return fid + len(body).to_bytes(4, "big") + b"\0\0" + body
    picture = b"\xff\xd8\xff\xe0" + bytes(range(256)) * (picture_bytes // 256)  # JPEG-looking bytes
    body = frame(b"TIT2", b"\x00a title") + frame(b"APIC", b"\x00image/jpeg\x00\x03\x00" + picture)
    size = len(body)
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return b"ID3\x03\x00\x00" + syncsafe + body + data


def with_id3v1(data: bytes) -> bytes:
    return data + b"TAG" + b"title".ljust(30, b"\0") + b"artist".ljust(30, b"\0") + b"album".ljust(30, b"\0") \
        + b"2026" + b"comment".ljust(30, b"\0") + b"\x00"


def wav_with_sizes(data: bytes, data_size: int | None = None, riff_size: int | None = None) -> bytes:
    """A RIFF/WAVE file with its data chunk's and/or RIFF's size fields replaced."""
    out = bytearray(data)
    if riff_size is not None:
        out[4:8] = riff_size.to_bytes(4, "little")
    if data_size is not None:
        at = out.index(b"data", 12)
        out[at + 4:at + 8] = data_size.to_bytes(4, "little")
    return bytes(out)


def flac_with_total(data: bytes, total: int) -> bytes:
    """A FLAC whose STREAMINFO declares `total` samples (0 = unknown, as a writer to a pipe leaves it)."""
    out = bytearray(data)
    assert out[:4] == b"fLaC"
    field = int.from_bytes(out[18:26], "big")
    out[18:26] = ((field & ~((1 << 36) - 1)) | total).to_bytes(8, "big")
    return bytes(out)


def pyav_file(x: np.ndarray | None, rate: int, container: str, codec: str = "aac", codec_rate: int | None = None,
              layout: str = "mono", video: str | None = None, bit_rate: int = 128_000,
              options: dict[str, str] | None = None) -> bytes:
    """A file PyAV's muxers and encoders (FFmpeg's) write: `x` (1-D float32, or int16 PCM, at `rate`; None for
    no audio track) encoded with `codec` at `codec_rate` (swresample converts the rate and sample format, as
    ffmpeg would) in `container` ('webm', 'mp4', 'ipod' = .m4a, 'adts' = .aac, 'ogg', 'matroska', 'mov'),
    with a second of black `video` frames ('libvpx', 'mpeg4') when given; `options` for the muxer (movflags for
    a fragmented MP4, as Safari's MediaRecorder writes). A stereo layout carries `x` on both
    channels unscaled (swresample's own mono-to-stereo upmix would scale it by -3 dB)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=container, options=options or {}) as out:
        picture = None
        if video:
            picture = out.add_stream(video, rate=10)
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        if x is not None:
            sound = out.add_stream(codec, rate=codec_rate or rate, layout=layout)
            sound.bit_rate = bit_rate
            if codec == "vorbis":  # FFmpeg's own Vorbis encoder (the wheel has no libvorbis)
                sound.codec_context.options = {"strict": "experimental"}
            convert = av.AudioResampler(format=sound.codec_context.format, layout=layout, rate=codec_rate or rate)
            channels = 2 if layout == "stereo" else 1
            planes = np.ascontiguousarray(np.repeat(x[None, :], channels, axis=0))
            fmt = ("s16p" if x.dtype == np.int16 else "fltp") if channels > 1 else \
                ("s16" if x.dtype == np.int16 else "flt")
            frame = av.AudioFrame.from_ndarray(planes if x.dtype == np.int16 else planes.astype(np.float32),
                                               format=fmt, layout=layout)
            frame.sample_rate = rate
            for part in convert.resample(frame) + convert.resample(None):
                out.mux(sound.encode(part))
            out.mux(sound.encode(None))
        if picture is not None:
            for _ in range(10):
                out.mux(picture.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")))
            out.mux(picture.encode(None))
    return buf.getvalue()


def pyav_samples(data: bytes) -> tuple[np.ndarray, int]:
    """The first audio track of `data` as PyAV decodes it (independently of common/audio_av.py): 1-D float32
    averaged over the channels (integer PCM scaled by its type's range), and its rate."""
    import av

    parts, rate = [], None
    with av.open(io.BytesIO(data)) as f:
        for frame in f.decode(audio=0):
            x = frame.to_ndarray()
            if not frame.format.is_planar:
                x = x.reshape(-1, len(frame.layout.channels)).T
            if np.issubdtype(x.dtype, np.integer):
                x = x.astype(np.float32) / float(-np.iinfo(x.dtype).min)
            parts.append(x.astype(np.float32).mean(axis=0, dtype=np.float32))
            rate = frame.sample_rate
    return np.concatenate(parts), rate


def mutate(data: bytes, rng) -> bytes:
    """1-6 seeded edits of a file (`rng`: a random.Random): a byte changed, up to 400 bytes cut out, or up to 40
    random bytes inserted, at random places; what a fuzzer throws at a decoder."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        at, op = rng.randrange(len(out)), rng.random()
        if op < 0.6:
            out[at] = rng.randrange(256)
        elif op < 0.8:
            del out[at:at + rng.randint(1, 400)]
        else:
            out[at:at] = rng.randbytes(rng.randint(1, 40))
    return bytes(out)
