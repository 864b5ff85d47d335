"""Audio in: WAV, FLAC, OGG Vorbis, MP3 and the other formats libsndfile reads; WebM/Matroska, MP4/M4A and ADTS
AAC through PyAV (common/audio_av.py); OGG Opus through libopus (common/opus.py, the live stream's decoder); any
rate, any channel count -> 16 kHz mono float32. Training (`load_file`) and serving (`decode_bytes`) decode
through the same code.

One file because the formats share their sniffing, their bounds (max_seconds, max_decoded_bytes), block-wise
downmixing and the header patches libsndfile needs, and each format's own checks are a few small functions; the
PyAV path, a different library with its own container checks, is its own module (common/audio_av.py), and so
is OGG Opus (common/opus.py), whose decoder the live stream shares.

How long a file is, per format (docs/audio-formats.md says the same for users):
- WAV: its data chunk's size. Writers streaming to a pipe cannot seek back to write it and leave a placeholder:
  0, 0xFFFFFFFF (ffmpeg), 0x7FFFF000 (sox, espeak-ng) or another size >= 0x7FFFF000 (arecord); such a file
  decodes to the whole sample frames present. Any other size larger than the body is refused as truncated.
- FLAC: decoded to the end of its frames. STREAMINFO's sample count (0 = unknown, what a pipe writer leaves)
  must be reached, else the file is refused as truncated; samples beyond it are decoded and logged.
- OGG (Vorbis, Opus): one logical stream whose last page carries the end-of-stream flag. Without it the writer
  never finished (refused as truncated); chained streams (concatenated files) are refused. Opus decodes through
  common/opus.py (libopus straight at 16 kHz, pre-skip and output gain applied, the end trimmed to the last
  page's granule position), the decoder of live `ogg_opus` streams, so a file and its stream give the same
  samples. Not libsndfile: 1.2.2 reading from the start (sf_readf_float, no seek) skips no pre-skip samples, so
  its output is late by the encoder's pre-skip (312 samples at 48 kHz, 6.5 ms) and loses as much at the end.
  Not PyAV: FFmpeg decodes at 48 kHz, then soxr resamples: not the stream's samples.
- MP3 (MPEG-1/2/2.5 Layer III): decoded by dr_mp3 (miniaudio) to the end of the stream, whatever the header
  estimates. A Xing/Info frame count gives the exact (gapless) length; a file with fewer frames than it counts,
  or whose last frame is cut short, is refused as truncated; frames beyond the count are decoded and logged.
  An MP3 without a Xing/Info frame cut exactly between two frames cannot be told from a whole one.
- WebM/Matroska, MP4/M4A/MOV, ADTS AAC: the first audio track's packets (common/audio_av.py): an element, box or
  frame that runs past the end of the file, an MP4 without its index, or one decoding to less than its sample
  table declares is refused as truncated; a video without an audio track is refused as such.
- Anything else libsndfile reads (AIFF, AU, CAF, W64, RF64, MP1/MP2, ...): as libsndfile decodes it, refused
  when fewer frames decode than its header declares.

Why not libsndfile alone (1.2.2, in soundfile 0.14): it clamps every read to the frame count its header parse
found, and for MP3 that count is mpg123's estimate (file size / first frame's bitrate without a Xing frame, the
ID3v2 tag and its cover art included): audio is silently cut, or an intact file looks truncated. It also reads
only the first of chained OGG streams, and soundfile's reads seek after every block, which fails on a FLAC
whose sample count is 0. It reads no MP4, WebM or AAC at all.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
from pathlib import Path
from typing import NamedTuple

import miniaudio
import numpy as np
import soundfile as sf
import soxr

log = logging.getLogger(__name__)

TARGET_RATE = 16_000
# Below 1 kHz nothing is speech; above 384 kHz no real recorder writes. Both bounds catch garbage headers.
MIN_RATE = 1_000
MAX_RATE = 384_000


class AudioError(ValueError):
    """The audio given cannot be turned into samples; the message says why."""


class AudioTooLong(AudioError):
    """The audio decodes to more than the allowed length; caught while decoding, before it is all in memory."""


class AudioTooLarge(AudioError):
    """The audio would decode to more float32 samples (channels x rate x duration) than allowed: refused from its
    header before decoding, or as soon as decoding passes the bound when the header gives no length."""


# Decoded samples allowed per file by default: channels x frames x 4 bytes (float32, at the file's own rate, before
# downmixing and resampling). 1 h of 16 kHz mono is 230 MB; a 196 KiB FLAC declaring 60 s of 8 channels at
# 384 kHz would be 737 MB. Serving sets its own (SERVE_MAX_DECODED_MB); training uses this one.
DEFAULT_MAX_DECODED_BYTES = 512 * 2 ** 20


def check_rate(rate) -> int:
    try:
        rate_f = float(rate)
    except (TypeError, ValueError):
        raise AudioError(f"sampling rate must be a number, got {rate!r}") from None
    if not np.isfinite(rate_f) or rate_f != int(rate_f):
        raise AudioError(f"sampling rate must be a whole number of Hz, got {rate!r}")
    rate_i = int(rate_f)
    if not MIN_RATE <= rate_i <= MAX_RATE:
        raise AudioError(f"sampling rate {rate_i} Hz is outside {MIN_RATE}..{MAX_RATE} Hz")
    return rate_i


def to_model_input(samples, rate) -> np.ndarray:
    """Validate samples (frames x channels or 1-D) at `rate`, downmix and resample to 16 kHz float32."""
    rate = check_rate(rate)
    try:
        x = np.asarray(samples)
    except (TypeError, ValueError) as exc:
        raise AudioError(f"samples are not a numeric array: {exc}") from None
    if x.dtype == object or x.dtype == bool or not np.issubdtype(x.dtype, np.number):
        raise AudioError("samples must be numbers")
    if np.iscomplexobj(x):
        raise AudioError("samples must be real numbers")
    if x.ndim == 0 or x.ndim > 2:
        raise AudioError(f"samples must be 1-D (mono) or 2-D (frames x channels), got {x.ndim}-D")
    if np.issubdtype(x.dtype, np.integer):
        # Integer PCM: scale to [-1, 1) by the type's range, as libsndfile does.
        x = x.astype(np.float32) / float(-np.iinfo(x.dtype).min)
    x = x.astype(np.float32, copy=False)
    if x.size == 0:
        raise AudioError("audio has no samples")
    if not np.isfinite(x).all():
        raise AudioError("samples contain NaN or infinite values")
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    if rate != TARGET_RATE:
        x = soxr.resample(x, rate, TARGET_RATE, quality="HQ").astype(np.float32, copy=False)
    if x.size == 0:
        raise AudioError("audio is too short to resample to 16 kHz")
    return np.ascontiguousarray(x)


def normalize(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over one clip's own samples (float32, same shape), exactly as
    Wav2Vec2FeatureExtractor(do_normalize=True) computes it. Training and serving both call this, so a model
    sees the same input scale in both."""
    x = np.asarray(x, dtype=np.float32)
    return ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32, copy=False)


# Decoded in blocks of at most this many samples (frames x channels): a header may declare billions of frames
# or thousands of channels, so never allocate what it declares.
_BLOCK_SAMPLES = 1 << 20


def _limit(max_seconds: float | None, rate: int) -> int | None:
    return None if max_seconds is None else int(max_seconds * max(rate, 1)) + 1


def _too_long(max_seconds: float) -> AudioTooLong:
    return AudioTooLong(f"audio is longer than {max_seconds:g} s")


def _check_decoded(frames: int, channels: int, rate: int, max_bytes: int | None, declared: bool = True) -> None:
    """AudioTooLarge when `frames` x `channels` float32 samples exceed `max_bytes` (None: no bound)."""
    if max_bytes is None or frames * channels * 4 <= max_bytes:
        return
    what = "declares" if declared else "decodes to more than"
    raise AudioTooLarge(
        f"audio {what} {frames / max(rate, 1):.1f} s of {channels} channel{'s' if channels != 1 else ''} at "
        f"{rate} Hz: {frames * channels * 4 / 2 ** 20:.0f} MB of samples to decode, over the "
        f"{max_bytes / 2 ** 20:g} MB limit; send it downmixed to mono and resampled to 16 kHz, or shorter")


def _mono(block: np.ndarray) -> np.ndarray:
    """frames x channels -> 1-D, averaged per frame exactly as a whole-array mean would (block by block, so
    that a many-channel file is never held with all its channels)."""
    return block[:, 0].copy() if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)


def _libsndfile_message(exc: Exception) -> str:
    """libsndfile's reason without soundfile's "Error opening <object repr>: " prefix: no client sees a repr."""
    text = getattr(exc, "error_string", None) or str(exc)
    return _REPR.sub("the audio", text)


_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


# ---------------------------------------------------------------------------------------------------------------
# Reading a buffer with a few header bytes replaced, without copying the body.

class _Spliced(io.RawIOBase):
    """A read-only file: `prefix` then `body` from offset len(prefix) on. `body` is a buffer or a binary file.
    Used to hand libsndfile a header whose length fields say what the body holds."""

    def __init__(self, prefix: bytes, body, size: int):
        self._prefix, self._body, self._size, self._pos = prefix, body, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b) -> int:
        out = memoryview(b).cast("B")
        want = max(0, min(len(out), self._size - self._pos))
        done = 0
        if self._pos < len(self._prefix) and want:
            done = min(want, len(self._prefix) - self._pos)
            out[:done] = self._prefix[self._pos:self._pos + done]
        if done < want:
            at = self._pos + done
            if isinstance(self._body, memoryview):
                out[done:want] = self._body[at:at + want - done]
                done = want
            else:
                self._body.seek(at)
                done += self._body.readinto(out[done:want]) or 0
        self._pos += done
        return done


def _patched(buf, patches: dict[int, bytes]) -> bytes:
    """The first bytes of `buf`, up to the last patched one, with `patches` {offset: bytes} applied."""
    end = max(at + len(p) for at, p in patches.items())
    prefix = bytearray(buf[:end])
    for at, p in patches.items():
        prefix[at:at + len(p)] = p
    return bytes(prefix)


# ---------------------------------------------------------------------------------------------------------------
# Sniffing

def _id3v2_end(buf) -> int:
    """Offset just past the ID3v2 tags at the start of `buf` (0 without any)."""
    pos = 0
    while bytes(buf[pos:pos + 3]) == b"ID3" and len(buf) >= pos + 10:
        size = buf[pos + 6:pos + 10]
        if any(b & 0x80 for b in size):
            break
        length = 10 + (size[0] << 21 | size[1] << 14 | size[2] << 7 | size[3]) + (10 if buf[pos + 5] & 0x10 else 0)
        pos += length
    return pos


# The first box of an MP4/M4A (ftyp), or of a QuickTime file written without one.
_MP4_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")


def _sniff(buf) -> str:
    """'wav', 'flac', 'ogg', 'mp3', 'webm', 'mp4', 'aac' (the last three for PyAV) or 'other' (left to
    libsndfile) from the first bytes of a file."""
    magic = bytes(buf[:4])
    if magic == b"RIFF" and bytes(buf[8:12]) == b"WAVE":
        return "wav"
    if magic == b"OggS":
        return "ogg"
    if magic == b"\x1a\x45\xdf\xa3":  # EBML: Matroska, WebM
        return "webm"
    if bytes(buf[4:8]) in _MP4_FIRST_BOXES and not 2 <= int.from_bytes(magic, "big") < 8:  # box size 0, 1 or >= 8
        return "mp4"
    start = _id3v2_end(buf)
    if bytes(buf[start:start + 4]) == b"fLaC":
        return "flac"
    if _is_adts(buf, start):
        return "aac"
    frame = _l3_frame(buf, start)
    if frame is not None:
        after = start + frame.length
        # Two frames in a row (or one that ends the buffer) before calling random bytes MP3.
        if after + 4 > len(buf) or _l3_frame(buf, after) is not None:
            return "mp3"
    return "other"


def _adts_length(buf, pos: int) -> int | None:
    """The length of the ADTS (AAC) frame whose header is at `pos`, or None when there is none."""
    if pos + 7 > len(buf) or buf[pos] != 0xFF or buf[pos + 1] & 0xF6 != 0xF0 or (buf[pos + 2] >> 2) & 0xF > 12:
        return None  # 12 sync bits, layer 0 (an MPEG audio header has layer 1-3), a defined rate index
    return (buf[pos + 3] & 3) << 11 | buf[pos + 4] << 3 | buf[pos + 5] >> 5


def _is_adts(buf, pos: int) -> bool:
    """Two ADTS frame headers in a row from `pos` (or one that ends the buffer)."""
    length = _adts_length(buf, pos)
    if length is None or length < 7:
        return False
    return pos + length + 7 > len(buf) or _adts_length(buf, pos + length) is not None


# ---------------------------------------------------------------------------------------------------------------
# WAV

# Data sizes at or above this, like 0, are the "length unknown" placeholders of streaming writers (sox and
# espeak-ng write 0x7FFFF000, ffmpeg 0xFFFFFFFF, arecord 0x80000000 or 0x7FFFFF00).
_WAV_UNKNOWN_MIN = 0x7FFFF000


class _WavData(NamedTuple):
    at: int  # offset of the data chunk's header
    declared: int  # bytes of samples its header declares
    present: int  # bytes of samples the file holds after it
    block_align: int  # bytes per sample frame (or per compressed block)
    rate: int  # Hz, from the fmt chunk
    plain: bool  # uncompressed (PCM, float, A-law, mu-law): one frame per block_align bytes


def _wav_data(head, total: int) -> _WavData | None:
    """The data chunk of a RIFF/WAVE file whose first bytes are `head` and whose size is `total`; None when the
    chunk is not within `head` (libsndfile then decides alone)."""
    pos, block_align, rate, plain = 12, 1, 0, False
    while pos + 8 <= len(head):
        chunk, size = bytes(head[pos:pos + 4]), int.from_bytes(head[pos + 4:pos + 8], "little")
        if chunk == b"fmt " and pos + 24 <= len(head):
            tag = int.from_bytes(head[pos + 8:pos + 10], "little")
            if tag == 0xFFFE and size >= 40 and pos + 34 <= len(head):  # WAVE_FORMAT_EXTENSIBLE: its sub-format
                tag = int.from_bytes(head[pos + 32:pos + 34], "little")
            rate = int.from_bytes(head[pos + 12:pos + 16], "little")
            block_align = max(1, int.from_bytes(head[pos + 20:pos + 22], "little"))
            plain = tag in (1, 3, 6, 7)
        if chunk == b"data":
            return _WavData(pos, size, max(0, total - pos - 8), block_align, rate, plain)
        pos += 8 + size + (size & 1)
    return None


def _wav_patches(data: _WavData | None) -> dict[int, bytes]:
    """Header fields to rewrite so that libsndfile reads the samples present; raises AudioError when the header
    declares more samples than the file holds and the size is no streaming placeholder."""
    if data is None or data.declared <= data.present and (data.declared or not data.present):
        return {}
    if data.declared == 0 or data.declared >= _WAV_UNKNOWN_MIN:
        whole = data.present - data.present % data.block_align
        riff = min(data.at + whole, 0xFFFFFFFF)  # RIFF size: everything after its own 8-byte header
        return {4: riff.to_bytes(4, "little"), data.at + 4: whole.to_bytes(4, "little")}
    raise AudioError(f"WAV is truncated: its header declares {data.declared} bytes of samples, "
                     f"the file holds {data.present}")


# ---------------------------------------------------------------------------------------------------------------
# FLAC

_FLAC_TOTAL_BITS = (1 << 36) - 1


def _flac_total(buf) -> tuple[int, int] | None:
    """(offset of the 8 bytes holding STREAMINFO's sample count, that count) or None when not found."""
    at = _id3v2_end(buf)
    if bytes(buf[at:at + 4]) != b"fLaC" or len(buf) < at + 26 or buf[at + 4] & 0x7F != 0:
        return None
    field = at + 18  # fLaC, block header (4), min/max block size (4), min/max frame size (6), then 64 bits
    return field, int.from_bytes(buf[field:field + 8], "big") & _FLAC_TOTAL_BITS


def _flac_patches(buf) -> tuple[dict[int, bytes], int]:
    """Set STREAMINFO's sample count to 0 (unknown) so that libsndfile decodes every frame instead of stopping at
    the count; returns the patch and the count declared (0 = unknown)."""
    found = _flac_total(buf)
    if found is None or found[1] == 0:
        return {}, 0
    field, declared = found
    value = int.from_bytes(buf[field:field + 8], "big") & ~_FLAC_TOTAL_BITS
    return {field: value.to_bytes(8, "big")}, declared


# ---------------------------------------------------------------------------------------------------------------
# OGG

def _check_ogg(buf) -> None:
    """Walk the pages of an OGG file: one logical stream that ends with an end-of-stream page, else AudioError."""
    pos, size, serials, eos, chained = 0, len(buf), [], False, False
    while pos + 27 <= size and bytes(buf[pos:pos + 4]) == b"OggS":
        flags, serial, nsegs = buf[pos + 5], bytes(buf[pos + 14:pos + 18]), buf[pos + 26]
        if pos + 27 + nsegs > size:
            break
        end = pos + 27 + nsegs + sum(buf[pos + 27:pos + 27 + nsegs])
        if end > size:
            raise AudioError(f"OGG is truncated: its last page is cut short ({size - pos} of {end - pos} bytes)")
        if flags & 2:  # beginning of a logical stream
            chained = chained or eos
            serials.append(serial)
        eos = eos or bool(flags & 4)
        pos = end
    if len(serials) > 1:
        how = "chained (concatenated files?)" if chained else "multiplexed"
        raise AudioError(f"OGG file holds {len(serials)} {how} logical streams; send one audio stream per file")
    if not eos:
        raise AudioError("OGG is truncated: it ends without an end-of-stream page (cut short, or its writer never "
                         "finished)")


def _ogg_is_opus(buf) -> bool:
    """Whether the first page of an OGG file starts an Opus stream (its first packet is the OpusHead header)."""
    nsegs = buf[26] if len(buf) > 26 else 0
    return bytes(buf[27 + nsegs:35 + nsegs]) == b"OpusHead"


# ---------------------------------------------------------------------------------------------------------------
# MP3 (MPEG audio Layer III)

_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by version bits
_L3_KBPS = {True: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),  # MPEG-1
            False: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)}  # MPEG-2 and 2.5


class _Frame(NamedTuple):
    length: int  # bytes
    rate: int  # Hz
    samples: int  # per channel
    side_info: int  # bytes after the 4-byte header (and CRC), where a Xing/Info tag starts


def _l3_frame(buf, pos: int) -> _Frame | None:
    """The Layer III frame header at `pos`, or None (no sync, reserved values, free-format bitrate)."""
    if pos + 4 > len(buf) or buf[pos] != 0xFF or buf[pos + 1] & 0xE0 != 0xE0:
        return None
    version, layer = (buf[pos + 1] >> 3) & 3, (buf[pos + 1] >> 1) & 3
    bitrate, rate_index = buf[pos + 2] >> 4, (buf[pos + 2] >> 2) & 3
    if version == 1 or layer != 1 or bitrate in (0, 15) or rate_index == 3:
        return None
    mpeg1, mono = version == 3, buf[pos + 3] >> 6 == 3
    rate = _MPEG_RATES[version][rate_index]
    length = (144 if mpeg1 else 72) * 1000 * _L3_KBPS[mpeg1][bitrate] // rate + ((buf[pos + 2] >> 1) & 1)
    side = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    crc = 0 if buf[pos + 1] & 1 else 2
    return _Frame(length, rate, 1152 if mpeg1 else 576, crc + side)


@functools.lru_cache(maxsize=64)
def _frame_lengths(byte1: int, rate_bits: int) -> tuple[int, ...]:
    """Frame length by a header's third byte, for frames sharing the first frame's version, layer, CRC flag and
    rate; 0 where the byte does not continue the stream."""
    out = []
    for byte2 in range(256):
        frame = _l3_frame(bytes((0xFF, byte1, byte2, 0)), 0)
        out.append(frame.length if frame and (byte2 >> 2) & 3 == rate_bits else 0)
    return tuple(out)


def _walk_frames(buf, pos: int, end: int) -> tuple[int, int]:
    """Whole frames in the run of consecutive frames from `pos`, and where the run stops: `end` when it reaches
    it, beyond `end` when the last frame is cut short, before it at bytes that are not a frame."""
    byte1 = buf[pos + 1]
    lengths = _frame_lengths(byte1, (buf[pos + 2] >> 2) & 3)
    frames = 0
    while pos + 4 <= end and buf[pos] == 0xFF and buf[pos + 1] == byte1:
        length = lengths[buf[pos + 2]]
        if not length:
            break
        if pos + length > end:
            return frames, pos + length
        pos += length
        frames += 1
    return frames, pos


def _tags_at_end(buf) -> int:
    """Bytes of ID3v1 and APEv2 tags at the end of an MP3 (not audio frames)."""
    end = len(buf)
    for _ in range(2):
        if end >= 128 and bytes(buf[end - 128:end - 125]) == b"TAG":
            end -= 128
        if end >= 32 and bytes(buf[end - 32:end - 24]) == b"APETAGEX":
            size = int.from_bytes(buf[end - 20:end - 16], "little")
            has_header = buf[end - 9] & 0x80
            end = max(0, end - size - (32 if has_header else 0))
    return len(buf) - end


class _Mp3(NamedTuple):
    rate: int
    samples: int  # per frame
    audio: int  # offset of the first audio frame (after a Xing/Info frame)
    counted: int | None  # audio frames a Xing/Info frame counts (None without one)
    stream_bytes: int | None  # bytes of the stream (Xing/Info frame included) the Xing/Info frame counts
    trim: int  # encoder delay + padding from a LAME tag: samples a gapless decoder drops


def _mp3_head(buf) -> _Mp3 | None:
    """Parse the ID3v2 tags and the first frame (with its Xing/Info tag) of an MP3: needs only the file's head."""
    first = _id3v2_end(buf)
    frame = _l3_frame(buf, first)
    if frame is None:
        return None
    tag = first + 4 + frame.side_info
    counted, stream_bytes, trim, audio = None, None, 0, first
    if bytes(buf[tag:tag + 4]) in (b"Xing", b"Info") and len(buf) >= tag + 8:
        flags, at = int.from_bytes(buf[tag + 4:tag + 8], "big"), tag + 8
        if flags & 1:
            counted = int.from_bytes(buf[at:at + 4], "big") or None  # 0: a writer that could not seek back
            at += 4
        if flags & 2:
            stream_bytes = int.from_bytes(buf[at:at + 4], "big") or None
            at += 4
        at += (100 if flags & 4 else 0) + (4 if flags & 8 else 0)
        if bytes(buf[at:at + 4]) in (b"LAME", b"Lavc", b"Lavf") and len(buf) >= at + 24:
            packed = int.from_bytes(buf[at + 21:at + 24], "big")
            trim = (packed >> 12) + (packed & 0xFFF)
        audio = first + frame.length
    return _Mp3(frame.rate, frame.samples, audio, counted, stream_bytes, trim)


def _dr_mp3_count(view) -> int:
    """Audio frames dr_mp3 finds in `view` (resynchronising past junk, as it does while decoding)."""
    mp3 = miniaudio.ffi.new("ma_dr_mp3 *")
    src = miniaudio.ffi.from_buffer(view)
    if not miniaudio.lib.ma_dr_mp3_init_memory(mp3, src, len(view), miniaudio.ffi.NULL):
        raise AudioError("cannot decode MP3: no MPEG audio frames found")
    try:
        frames, pcm = miniaudio.ffi.new("ma_uint64 *"), miniaudio.ffi.new("ma_uint64 *")
        if not miniaudio.lib.ma_dr_mp3_get_mp3_and_pcm_frame_count(mp3, frames, pcm):
            raise AudioError("cannot decode MP3: its frames cannot be counted")
        return int(frames[0])
    finally:
        miniaudio.lib.ma_dr_mp3_uninit(mp3)


def _mp3_frames(buf, head: _Mp3) -> int:
    """Audio frames present after the Xing/Info frame; raises AudioError when the last one is cut short."""
    end = len(buf) - _tags_at_end(buf)
    frames, stop = _walk_frames(buf, head.audio, end) if head.audio + 4 <= end else (0, head.audio)
    if stop > end:
        raise AudioError(f"MP3 is truncated: its last frame is cut short after {frames} whole frames "
                         f"({frames * head.samples / head.rate:.2f} s)")
    if stop < end - 3:  # bytes that are no frame inside the stream: count as the decoder will read it
        frames = _dr_mp3_count(memoryview(buf)[head.audio:])
    return frames


def _decode_mp3(buf, max_seconds: float | None, max_bytes: int | None = None) -> tuple[np.ndarray, int]:
    view = memoryview(buf)
    head = _mp3_head(buf)
    if head is not None:
        frames = _mp3_frames(buf, head)
        if head.counted is not None and frames < head.counted:
            raise AudioError(
                f"MP3 is truncated: its Xing/Info header counts {head.counted} frames "
                f"({head.counted * head.samples / head.rate:.2f} s), the file holds {frames}")
        if max_seconds is not None and (frames * head.samples - head.trim) / head.rate > max_seconds:
            raise _too_long(max_seconds)  # refused from the frame count, before decoding
        _check_decoded(frames * head.samples, 2, head.rate, max_bytes)  # at most stereo: the bound before decoding
        if head.counted is not None and frames > head.counted:
            # dr_mp3 (like mpg123) stops at the count; without the Xing frame it decodes every frame.
            log.warning("MP3 holds %d frames where its Xing/Info header counts %d (concatenated files?): "
                        "decoding all of them", frames, head.counted)
            view = view[head.audio:]
    return _dr_mp3_read(view, max_seconds, max_bytes)


def _dr_mp3_read(view, max_seconds: float | None, max_bytes: int | None = None) -> tuple[np.ndarray, int]:
    ffi, lib = miniaudio.ffi, miniaudio.lib  # pyminiaudio 1.71's cffi binding of miniaudio 0.11's dr_mp3 API
    mp3 = ffi.new("ma_dr_mp3 *")
    src = ffi.from_buffer(view)
    if not lib.ma_dr_mp3_init_memory(mp3, src, len(view), ffi.NULL):
        raise AudioError("cannot decode MP3: no MPEG audio frames found")
    try:
        channels, rate = int(mp3.channels), int(mp3.sampleRate)
        if not 1 <= channels <= 2:
            raise AudioError(f"cannot decode MP3: {channels} channels")
        limit = _limit(max_seconds, rate)
        block = _BLOCK_SAMPLES // channels
        out = np.empty((block, channels), np.float32)
        ptr = ffi.cast("float *", out.ctypes.data)
        parts, total = [], 0
        while True:
            n = int(lib.ma_dr_mp3_read_pcm_frames_f32(mp3, block, ptr))
            if n <= 0:
                break
            parts.append(_mono(out[:n]))
            total += n
            if limit is not None and total > limit:
                raise _too_long(max_seconds)
            _check_decoded(total, channels, rate, max_bytes, declared=False)
    finally:
        lib.ma_dr_mp3_uninit(mp3)
    data = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return data, rate


# ---------------------------------------------------------------------------------------------------------------
# libsndfile (WAV, FLAC, OGG and the rest)

def _sndfile_read(source, max_seconds: float | None, max_bytes: int | None = None,
                  known_frames: int = 0) -> tuple[np.ndarray, int, int, str | None]:
    """(1-D float32 averaged over the channels block by block, rate, frames the header declares, the error that
    stopped decoding early or None). `known_frames`: a length found in the header before libsndfile saw it (a
    FLAC's STREAMINFO count, which _decode hides from libsndfile); with the header's own count it is checked
    against `max_bytes` before anything is decoded. Reads with sf_readf_float directly, through soundfile 0.14's private `_snd`, `_ffi` and
    `SoundFile._file`: its SoundFile.read seeks after every block, and that seek fails on a FLAC of unknown
    length."""
    error = None
    try:
        with sf.SoundFile(source) as f:
            declared, rate, channels = f.frames, f.samplerate, f.channels
            if not 1 <= channels <= _BLOCK_SAMPLES:
                raise AudioError(f"cannot decode audio: its header declares {channels} channels")
            limit = _limit(max_seconds, rate)
            length = known_frames or (declared if 0 < declared < (1 << 62) else 0)
            if length:
                _check_decoded(length, channels, rate, max_bytes)
            block = max(1, _BLOCK_SAMPLES // channels)
            out = np.empty((block, channels), np.float32)
            ptr = sf._ffi.cast("float *", out.ctypes.data)
            parts, total = [], 0
            while error is None:
                n = int(sf._snd.sf_readf_float(f._file, ptr, block))
                code = sf._snd.sf_error(f._file)
                if code:
                    error = sf._ffi.string(sf._snd.sf_error_number(code)).decode(errors="replace")
                    error = error.removeprefix("Error : ").rstrip(".")
                if n <= 0:
                    break
                parts.append(_mono(out[:n]))
                total += n
                if limit is not None and total > limit:
                    raise _too_long(max_seconds)
                _check_decoded(total, channels, rate, max_bytes, declared=False)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError, MemoryError) as exc:
        raise AudioError(f"cannot decode audio (WAV, FLAC, OGG, MP3, WebM, MP4/M4A, AAC or another format "
                         f"libsndfile reads): {_libsndfile_message(exc)}") from None
    data = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return data, rate, declared, error


def _is_layer3(source: _Spliced) -> bool:
    """Whether libsndfile opens `source` as MPEG Layer III (it finds MP3s that _sniff does not)."""
    try:
        with sf.SoundFile(source) as f:
            return f.format == "MPEG" and f.subtype == "MPEG_LAYER_III"
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError):
        return False
    finally:
        source.seek(0)


_PYAV_KINDS = ("webm", "mp4", "aac")


def _pyav():
    """common.audio_av, imported when a file needs it: the launcher and light tools import this module without
    PyAV installed."""
    try:
        import av  # noqa: F401  (audio_av imports it where it decodes; a missing one is named here)

        from common import audio_av
    except ImportError as exc:  # a checkout without requirements/serve.txt or train.txt installed
        raise AudioError(f"WebM, MP4/M4A and AAC need PyAV, which is not installed here ({exc.name}): "
                         f"pip install -r requirements/serve.txt") from None
    return audio_av


def _decode(buf, max_seconds: float | None,
            max_bytes: int | None = DEFAULT_MAX_DECODED_BYTES) -> tuple[np.ndarray, int]:
    """Decode a whole encoded file held in `buf` (bytes-like) to (1-D float32 averaged over its channels, rate);
    AudioTooLarge beyond `max_bytes` of float32 samples (all channels, at the file's rate)."""
    kind, size = _sniff(buf), len(buf)
    if kind == "mp3":
        return _decode_mp3(buf, max_seconds, max_bytes)
    if kind in _PYAV_KINDS:
        return _pyav().decode(buf, kind, max_seconds, max_bytes)  # WebM, MP4, AAC
    flac_declared = 0
    if kind == "wav":
        patches = _wav_patches(_wav_data(buf, size))
    elif kind == "flac":
        patches, flac_declared = _flac_patches(buf)
    else:
        patches = {}
        if kind == "ogg":
            _check_ogg(buf)
            if _ogg_is_opus(buf):
                from common import opus  # the live stream's decoder (serve/streamaudio.py): the same samples

                return opus.decode_file(buf, max_seconds, max_bytes)
    source = _Spliced(_patched(buf, patches) if patches else b"", memoryview(buf), size)
    if kind == "other" and _is_layer3(source):
        return _decode_mp3(buf, max_seconds, max_bytes)  # MP3 only libsndfile recognised (junk before its 1st frame)
    data, rate, declared, error = _sndfile_read(source, max_seconds, max_bytes, flac_declared)
    what = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}.get(kind, "audio")
    seconds = f"{len(data) / max(rate, 1):.2f} s"
    if flac_declared:
        if len(data) < flac_declared:
            raise AudioError(f"FLAC is truncated: its STREAMINFO declares {flac_declared} samples "
                             f"({flac_declared / max(rate, 1):.2f} s), only {len(data)} decode ({seconds})")
        if error:  # past the declared samples: bytes after the last frame (an appended tag, another file)
            log.warning("FLAC: bytes after its last frame do not decode (%s); kept the %d samples its STREAMINFO "
                        "declares", error, flac_declared)
            data = data[:flac_declared]
        elif len(data) > flac_declared:
            log.warning("FLAC holds %d samples where its STREAMINFO declares %d: decoded all of them",
                        len(data), flac_declared)
        return data, rate
    if error:
        raise AudioError(f"{what} is truncated or corrupt: decoding stopped after {seconds} ({error})")
    if 0 < declared < (1 << 62) and len(data) < declared:
        raise AudioError(f"{what} is truncated: its header declares {declared} frames, only {len(data)} decode")
    return data, rate


def decode_bytes(payload: bytes, max_seconds: float | None = None,
                 max_decoded_bytes: int | None = DEFAULT_MAX_DECODED_BYTES) -> np.ndarray:
    """Decode an encoded file (WAV, FLAC, OGG Vorbis/Opus, MP3, WebM, MP4/M4A, AAC, ...; format sniffed from the
    bytes) to 1-D float32 samples at 16 kHz (channels averaged).

    With `max_seconds`, longer audio raises AudioTooLong as soon as decoding passes it (a few MB of FLAC
    can hold hours of silence). A file whose float32 samples (channels x rate x duration x 4 bytes) would pass
    `max_decoded_bytes` raises AudioTooLarge, from its header before decoding when it declares its length (a
    decompression bomb: a small FLAC declaring many channels at a high rate). Channels are averaged block by
    block as they decode. Undecodable, truncated or inconsistent files raise AudioError (the module docstring
    says what decodes, per format)."""
    if not payload:
        raise AudioError("audio body is empty")
    data, rate = _decode(payload, max_seconds, max_decoded_bytes)
    return to_model_input(data, rate)


def load_file(path: str | Path, max_decoded_bytes: int | None = DEFAULT_MAX_DECODED_BYTES) -> np.ndarray:
    """Read an audio file from disk to 1-D float32 samples at 16 kHz, decoded exactly as decode_bytes decodes
    its bytes (AudioError also when the file cannot be read; AudioTooLarge, naming the file, past
    `max_decoded_bytes`)."""
    try:
        with open(path, "rb") as f:
            payload = f.read()
    except OSError as exc:
        raise AudioError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not payload:
        raise AudioError(f"{path} is empty")
    try:
        data, rate = _decode(payload, None, max_decoded_bytes)
    except AudioTooLarge as exc:
        raise AudioTooLarge(f"{path}: {exc}") from None
    return to_model_input(data, rate)


# ---------------------------------------------------------------------------------------------------------------
# Durations without decoding

# How much of a file probe_seconds reads first: a WAV's chunks up to its data chunk (fmt, LIST, fact, ...), FLAC's
# STREAMINFO, an MP3's ID3v2 tags and first frame (more is read when the tags are larger).
_HEAD_BYTES = 1 << 16


def _opened(source):
    """(a binary file, its size) for a path, or for bytes held in memory (not copied)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source).cast("B")
        return contextlib.nullcontext(_Spliced(b"", view, len(view))), len(view)
    return open(source, "rb"), os.path.getsize(source)


def probe_seconds(path: str | Path | bytes | memoryview) -> float:
    """Duration of an audio file in seconds, without decoding it (to index datasets of hundreds of hours);
    `path` may also be the file's bytes in memory (a Hugging Face table's audio cell).

    Exactness per format:
    - WAV: exact (the data chunk's size; the file's size for a WAV streamed with an unknown length).
    - FLAC: exact (STREAMINFO's sample count). One of unknown length (count 0) is decoded to count it (slow).
    - OGG Vorbis: exact (the last page's granule position, read by libsndfile). OGG Opus: the same, read by
      common/opus.py (pre-skip removed, at 16 kHz: what load_file decodes).
    - MP3 with a Xing/Info frame count: exact to the sample with a LAME tag (gapless delay and padding), else
      within two frames. Without one: its frame headers are walked (the file is read, not decoded): exact in
      frames, i.e. what load_file decodes, encoder delay + padding (1-3 frames) longer than the encoded audio.
    - WebM, MP4/M4A, AAC: the first audio track's packet timestamps (read, not decoded): within a codec frame.
    - Other libsndfile formats: their header's frame count.
    A WAV whose header declares more samples than the file holds raises AudioError, as load_file does; other
    truncated files may probe fine and still be refused by load_file. Raises AudioError when the file cannot
    be read as audio."""
    in_memory = isinstance(path, (bytes, bytearray, memoryview))
    name = "the audio" if in_memory else path
    try:
        opened, size = _opened(path)
        with opened as f:
            head = f.read(_HEAD_BYTES)
            first = _id3v2_end(head)
            if len(head) < size and first + 4096 > len(head):  # ID3v2 tags (cover art) longer than the head
                head += f.read(min(size, first + 4096) - len(head))
            kind = _sniff(head)
            if kind == "mp3":
                return _probe_mp3(head, f, size)
            if kind in _PYAV_KINDS:
                return _pyav().probe_seconds(memoryview(path).cast("B") if in_memory else path, kind)
            if kind == "ogg" and _ogg_is_opus(head):
                from common import opus

                return opus.probe_seconds(f)
            found = _flac_total(head) if kind == "flac" else None
            if found is not None and found[1] == 0:  # streamed FLAC: no sample count to read
                data, rate = _decode(head + f.read(), None)
                return len(data) / rate
            wav = _wav_data(head, size) if kind == "wav" else None
            patches = _wav_patches(wav)
            if wav is not None and wav.plain and wav.rate > 0:
                whole = min(wav.declared, wav.present) if not patches else wav.present
                return (whole // wav.block_align) / wav.rate
            with sf.SoundFile(_Spliced(_patched(head, patches) if patches else b"", f, size)) as info:
                frames, rate, fmt, subtype = info.frames, info.samplerate, info.format, info.subtype
            if fmt == "MPEG" and subtype == "MPEG_LAYER_III":
                # An MP3 only libsndfile recognised (junk before its first frame): count its frames rather than
                # trust mpg123's estimate.
                f.seek(0)
                frames = _dr_mp3_count(memoryview(f.read())) * (1152 if rate >= 32000 else 576)
    except AudioError as exc:
        raise AudioError(f"{name}: {exc}") from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError, OSError) as exc:
        raise AudioError(f"cannot read the header of {name}: {_libsndfile_message(exc)}") from None
    if rate <= 0:
        raise AudioError(f"{name}: header declares a sampling rate of {rate} Hz")
    if frames >= (1 << 62):
        raise AudioError(f"{name}: its header gives no length")
    return float(frames) / float(rate)


def _probe_mp3(head: bytes, f, size: int) -> float:
    info = _mp3_head(head)
    # The Xing/Info count, unless the stream's size disagrees with the one it records (appended files, a cut):
    # beyond an ID3v1 tag and a small APE tag, walk the frames instead.
    extra = None if info.stream_bytes is None else size - _id3v2_end(head) - info.stream_bytes
    if info.counted is not None and (extra is None or 0 <= extra <= 128 + 4096):
        return (info.counted * info.samples - info.trim) / info.rate
    buf = head if len(head) == size else head + f.read()
    end = len(buf) - _tags_at_end(buf)
    frames, stop = _walk_frames(buf, info.audio, end)
    if stop < end - 3:  # bytes that are no frame inside the stream: count as the decoder will read it
        frames = _dr_mp3_count(memoryview(buf)[info.audio:])
    return frames * info.samples / info.rate
