"""Audio in video-age containers, through PyAV (FFmpeg's libraries, in its wheels): WebM/Matroska (Opus or
Vorbis, what a browser's MediaRecorder writes), MP4/M4A/MOV (AAC, ALAC, MP3, Opus: phone voice memos, Zoom and
Teams exports; the audio track of a video) and ADTS AAC (.aac); OGG Opus is common/opus.py's (the live
stream's decoder). common/audio.py sniffs the container from the bytes and hands these here; decoding then
follows the same rules as its other formats:
- the FFmpeg demuxer is the one the bytes were sniffed as (never FFmpeg's own probing over all its demuxers), and
  only the audio decoders in CODECS run (a video track is demuxed past, never decoded);
- the container's own sizes are checked first: a box or element that runs past the end of the file, or an MP4
  with no index ('moov'), is refused as truncated; an MP4 track decoding to less than the duration its sample
  table declares, too;
- channels x rate x the duration the header declares is checked against max_decoded_bytes before any frame
  decodes; frames are decoded, downmixed and resampled (soxr, HQ, streamed) one block at a time, and
  max_seconds and max_decoded_bytes are checked after every frame, so no buffer is sized from a header's claim.
PyAV 18.1 (requirements/serve.txt, train.txt): docs/audio-formats.md says why.

One file because the container checks, the decoding loop and the probe share the demuxer table, the decoder
allow-list and the bounds; split, each part would import the others' private helpers.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import soxr

from common import audio
from common.audio import TARGET_RATE, AudioError

log = logging.getLogger(__name__)

# Sniffed kind -> (the FFmpeg demuxer forced, the name messages use).
DEMUXERS = {"webm": ("matroska", "WebM/Matroska"), "mp4": ("mp4", "MP4/M4A"), "aac": ("aac", "AAC (ADTS)")}
# FFmpeg decoder names allowed to run on request bytes: the audio codecs these containers carry for speech.
CODECS = frozenset({"aac", "aac_fixed", "opus", "libopus", "vorbis", "mp3", "mp3float", "flac", "alac",
                    "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be", "pcm_s32le", "pcm_s32be", "pcm_f32le",
                    "pcm_f32be", "pcm_f64le", "pcm_f64be", "pcm_u8", "pcm_alaw", "pcm_mulaw"})
# PyAV 18.1 reads a planar frame's planes from AVFrame.data, which holds 8 pointers: a frame of more channels
# (a damaged AAC header switching to 12 channels did it) made to_ndarray read a wild pointer and crash the process.
# So at most 8 channels, in the header and in every frame (JSON requests have the same bound).
MAX_CHANNELS = 8
# An MP4 track's own duration (its sample table, or its edit list's) against what decodes: 4096 samples (AAC's
# encoder delay and padding, two frames of 1024 each, twice over) plus this much.
_MP4_SLACK_S = 0.05
# Decoded frames (a few thousand samples each) are gathered into blocks of about this many samples before they are
# downmixed and resampled.
_BLOCK_FRAMES = 1 << 16


def _reason(exc: Exception) -> str:
    """FFmpeg's reason without PyAV's errno and file name (its repr of the file object, for a buffer)."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return audio._REPR.sub("the audio", str(text)).rstrip(".")


# ---------------------------------------------------------------------------------------------------------------
# The container's own sizes: a writer that did not finish leaves an element or box running past the end.

def _mp4_boxes(view) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of the top-level boxes; AudioError when one runs past the end of the file."""
    boxes, pos, size = [], 0, len(view)
    while pos + 8 <= size:
        length, kind = int.from_bytes(view[pos:pos + 4], "big"), bytes(view[pos + 4:pos + 8])
        header = 8
        if length == 1:
            if pos + 16 > size:
                raise AudioError(f"MP4/M4A is truncated: its {kind.decode('latin-1')!r} box header is cut short")
            length, header = int.from_bytes(view[pos + 8:pos + 16], "big"), 16
        elif length == 0:  # the last box, to the end of the file
            length = size - pos
        if length < header:
            raise AudioError(f"MP4/M4A is corrupt: a box at byte {pos} declares {length} bytes")
        if pos + length > size:
            raise AudioError(f"MP4/M4A is truncated: its {kind.decode('latin-1')!r} box declares {length} bytes, "
                             f"the file holds {size - pos} of them")
        boxes.append((kind, pos, length))
        pos += length
    return boxes


def _check_mp4(view) -> None:
    boxes = {kind for kind, _, _ in _mp4_boxes(view)}
    if b"moov" not in boxes:
        raise AudioError("MP4/M4A has no 'moov' box (its index of the audio): the file is truncated (a writer "
                         "that did not finish leaves it out; it is written last unless made with faststart)")


# Matroska element IDs whose size may be "unknown" (live writers: MediaRecorder) and whose children follow inline.
_EBML_MASTERS = {0x18538067, 0x1F43B675}  # Segment, Cluster


def _vint(view, pos: int, keep_marker: bool) -> tuple[int, int] | None:
    """(value, length) of the EBML variable-size integer at `pos`; None when invalid or cut short."""
    if pos >= len(view) or view[pos] == 0:
        return None
    length = 9 - view[pos].bit_length()
    if pos + length > len(view):
        return None
    value = view[pos] if keep_marker else view[pos] & (0xFF >> length)
    for b in view[pos + 1:pos + length]:
        value = value << 8 | b
    return value, length


def _check_matroska(view) -> None:
    """Walk the elements: every one whose size is known must end inside the file. Segments and clusters of
    unknown size (live writers) are walked into; their children are checked the same way."""
    pos, size, unknown = 0, len(view), False
    while pos < size:
        ident = _vint(view, pos, keep_marker=True)
        length = _vint(view, pos + ident[1], keep_marker=False) if ident else None
        if ident is None or length is None:
            if pos + 12 > size:  # an element header cut short at the end
                raise AudioError(f"WebM/Matroska is truncated: it ends inside an element header at byte {pos}")
            return  # bytes that are no element: FFmpeg decides
        (element, id_len), (value, size_len) = ident, length
        data = pos + id_len + size_len
        if value == (1 << 7 * size_len) - 1:  # all ones: size unknown
            if element not in _EBML_MASTERS:
                return
            unknown, pos = True, data
            continue
        if element in _EBML_MASTERS:
            if data + value > size:
                what = "segment" if element == 0x18538067 else "cluster"
                raise AudioError(f"WebM/Matroska is truncated: its {what} declares {value} bytes, the file holds "
                                 f"{size - data}")
            pos = data
            continue
        if data + value > size:
            how = "cut while it was being written" if unknown else "cut short"
            raise AudioError(f"WebM/Matroska is truncated: an element at byte {pos} declares {value} bytes, the "
                             f"file holds {size - data} ({how})")
        pos = data + value


def _check_adts(view) -> None:
    """Walk the ADTS frames (after any ID3v2 tag): the last one must not be cut short."""
    pos, size = audio._id3v2_end(view), len(view)
    while (length := audio._adts_length(view, pos)) is not None:
        if length < 7:
            raise AudioError(f"AAC (ADTS) is corrupt: a frame at byte {pos} declares {length} bytes")
        if pos + length > size:
            raise AudioError(f"AAC (ADTS) is truncated: its last frame declares {length} bytes, the file holds "
                             f"{size - pos}")
        pos += length
    if 0 < size - pos < 7 and view[pos] == 0xFF and view[pos + 1] & 0xF6 == 0xF0:
        raise AudioError(f"AAC (ADTS) is truncated: its last frame header is cut short after {size - pos} bytes")


_CHECKS = {"mp4": _check_mp4, "webm": _check_matroska, "aac": _check_adts}


# ---------------------------------------------------------------------------------------------------------------
# Decoding

def _open(source, kind: str):
    """(the av module, an open input container, the format's name) for a buffer (its sizes checked first) or a
    path."""
    import av  # here, not at import: the launcher and light tools import common.audio without PyAV

    demuxer, name = DEMUXERS[kind]
    if isinstance(source, memoryview):
        _CHECKS[kind](source)
        source = audio._Spliced(b"", source, len(source))
    try:
        container = av.open(source, mode="r", format=demuxer, metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise AudioError(f"cannot read {name}: {_reason(exc)} (not a {name} file, or damaged)") from None
    return av, container, name


def _audio_stream(container, name: str):
    streams = container.streams
    if not streams.audio:
        if streams.video:
            raise AudioError(f"{name} holds video but no audio track: there is no sound to transcribe")
        raise AudioError(f"{name} holds no audio track")
    if len(streams.audio) > 1:
        log.warning("%s holds %d audio tracks: transcribing the first", name, len(streams.audio))
    stream = streams.audio[0]
    ctx = stream.codec_context  # None when FFmpeg has no decoder for the track's codec
    codec = ctx.name if ctx is not None else ""
    if codec not in CODECS:
        raise AudioError(f"{name}: its audio track is {codec or 'of an unknown codec'}, not one decoded here "
                         f"(AAC, Opus, Vorbis, MP3, FLAC, ALAC or PCM)")
    return stream, codec


def _check_rate(rate: int, name: str) -> int:
    if not audio.MIN_RATE <= rate <= audio.MAX_RATE:
        raise AudioError(f"{name}: its audio track declares a sampling rate of {rate} Hz, outside "
                         f"{audio.MIN_RATE}..{audio.MAX_RATE} Hz")
    return rate


def _declared_seconds(stream, container) -> float | None:
    """The duration the header declares (the track's own, else the container's), or None."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _as_float(frame) -> np.ndarray:
    """An audio frame -> channels x samples float32, integer PCM scaled to [-1, 1) as libsndfile does."""
    x = frame.to_ndarray()
    channels = len(frame.layout.channels) or 1
    if not frame.format.is_planar:
        x = x.reshape(-1, channels).T
    if x.dtype == np.uint8:
        return (x.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float32) / float(-np.iinfo(x.dtype).min)
    return x.astype(np.float32, copy=False)


def decode(buf, kind: str, max_seconds: float | None,
           max_bytes: int | None = audio.DEFAULT_MAX_DECODED_BYTES) -> tuple[np.ndarray, int]:
    """Decode the first audio track of a WebM/Matroska, MP4/M4A or ADTS AAC file (`kind`: 'webm', 'mp4',
    'aac', from common/audio.py's sniffing) to (1-D float32 at 16 kHz, channels averaged; 16000).

    Raises AudioError (no audio track, a video without one, a codec not in CODECS, truncated or corrupt),
    AudioTooLong as soon as decoding passes `max_seconds`, AudioTooLarge from the declared duration before
    decoding or as soon as the decoded samples (channels x frames x 4 bytes) pass `max_bytes`."""
    view = memoryview(buf).cast("B")
    av, container, name = _open(view, kind)
    with container:
        stream, codec = _audio_stream(container, name)
        ctx = stream.codec_context
        rate, channels = ctx.sample_rate, ctx.channels  # the header's; the first frame's rate is the one used
        _check_rate(rate, name)
        if not 1 <= channels <= MAX_CHANNELS:
            raise AudioError(f"{name}: its audio track declares {channels} channels; at most {MAX_CHANNELS} are "
                             f"decoded")
        # ADTS has no length field: FFmpeg's figure for it is an estimate from the bitrate, not a claim to check.
        declared = None if kind == "aac" else _declared_seconds(stream, container)
        if declared is not None:
            audio._check_decoded(math.ceil(declared * rate), channels, rate, max_bytes)
        out, pending, pending_frames, total, decoded_samples = [], [], 0, 0, 0
        resampler, limit, first = None, None, True

        def flush(last: bool) -> None:
            nonlocal pending, pending_frames
            block = np.concatenate(pending) if pending else np.zeros(0, np.float32)
            pending, pending_frames = [], 0
            out.append(block if resampler is None else resampler.resample_chunk(block, last=last))

        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    if first:  # HE-AAC (SBR) decodes at twice the rate its AAC header gives
                        first, rate = False, _check_rate(frame.sample_rate, name)
                        limit = audio._limit(max_seconds, rate)
                        if rate != TARGET_RATE:
                            resampler = soxr.ResampleStream(rate, TARGET_RATE, 1, dtype="float32", quality="HQ")
                    elif frame.sample_rate != rate:
                        raise AudioError(f"{name}: the sampling rate changes from {rate} to {frame.sample_rate} Hz "
                                         f"inside the track")
                    if not 1 <= len(frame.layout.channels) <= MAX_CHANNELS:
                        raise AudioError(f"{name}: a frame of {len(frame.layout.channels)} channels inside the "
                                         f"track; at most {MAX_CHANNELS} are decoded")
                    x = _as_float(frame)
                    n = x.shape[1]
                    total += n
                    decoded_samples += n * x.shape[0]
                    if limit is not None and total > limit:
                        raise audio._too_long(max_seconds)
                    if max_bytes is not None and decoded_samples * 4 > max_bytes:
                        audio._check_decoded(total, max(channels, x.shape[0]), rate, max_bytes, declared=False)
                    pending.append(x[0].copy() if x.shape[0] == 1 else x.mean(axis=0, dtype=np.float32))
                    pending_frames += n
                    if pending_frames >= _BLOCK_FRAMES:
                        flush(last=False)
        except av.FFmpegError as exc:
            raise AudioError(f"{name} is truncated or corrupt: decoding stopped after {total / rate:.2f} s "
                             f"({_reason(exc)})") from None
        if kind == "mp4" and declared is not None and total / rate + _MP4_SLACK_S + 4096 / rate < declared:
            raise AudioError(f"MP4/M4A is truncated or its index is damaged: the index declares {declared:.2f} s "
                             f"of audio, {total / rate:.2f} s decode")
        if total == 0:
            raise AudioError(f"{name}: its audio track decodes to no samples")
        flush(last=True)
    data = np.concatenate(out) if len(out) > 1 else out[0]
    return np.ascontiguousarray(data, dtype=np.float32), TARGET_RATE


def probe_seconds(path: str | Path | memoryview, kind: str) -> float:
    """Duration of the first audio track in seconds from its packets' timestamps (read, not decoded): within a
    codec frame of what `decode` gives (AAC's encoder delay of 1024 samples is not removed). A file is opened by
    its path (a long video is not read into memory) and its sizes are not checked: `decode` (load_file) refuses
    a truncated file. Bytes in memory (a memoryview) are read in place, their sizes checked as `decode` does."""
    av, container, name = _open(path if isinstance(path, memoryview) else str(path), kind)
    with container:
        stream, _ = _audio_stream(container, name)
        start, end = None, None
        try:
            for packet in container.demux(stream):
                if packet.pts is None or not packet.size:
                    continue
                start = packet.pts if start is None else min(start, packet.pts)
                stop = packet.pts + (packet.duration or 0)
                end = stop if end is None else max(end, stop)
        except av.FFmpegError as exc:
            raise AudioError(f"{name} is truncated or corrupt: {_reason(exc)}") from None
        if start is None or stream.time_base is None:
            raise AudioError(f"{name}: its audio track holds no timed packets")
        return float((end - start) * stream.time_base)
