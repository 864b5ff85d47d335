"""Ogg Opus (Ogg pages, RFC 3533, carrying one Opus stream, RFC 7845) -> 16 kHz mono float32, the one decoder
for Ogg Opus in this project: the live stream (serve/streamaudio.py feeds `OggOpusStream` the bytes of WebSocket
frames in any cut) and whole files (`decode_file`, through common/audio.py: /invocations and training's
load_file) decode through the same code, so a file gives the samples its stream gives, sample for sample.

Pages are reassembled and their CRC checked; packets are decoded by the system libopus (Debian/Ubuntu package
libopus0, loaded with ctypes) straight at 16 kHz (an Opus decoder outputs any of 8-48 kHz natively: no
resampler), channels averaged, the OpusHead's pre-skip dropped and its output gain applied, and the end trimmed
to the last page's granule position (RFC 7845 4.4). Channel mapping family 0 only (mono or stereo: what
recorders and browsers write). Without libopus every call raises OpusError saying so.

Errors are `OpusError` (an AudioError, so a ValueError) with a message safe to show to a client.

One file because the page reassembly, the libopus binding and the whole-file caps share the header parsing and
the error class; the stream and the file paths must stay one decoder.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import struct
import threading
import zlib
from pathlib import Path

import numpy as np

from common.audio import TARGET_RATE, AudioError, _check_decoded, _limit, _too_long


class OpusError(AudioError):
    """Ogg Opus bytes that cannot be decoded (or no libopus to decode them); the message says why."""


OPUS_RATE = 48_000  # the rate granule positions and pre-skip count in, whatever the encoder's input rate was
LIBOPUS_MISSING = "Ogg Opus needs libopus, which is not installed here (the Debian/Ubuntu package libopus0)"

# Ogg -------------------------------------------------------------------------------------------------------
_PAGE_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, sequence, crc, segments
_MAX_PAGE = _PAGE_HEADER.size + 255 + 255 * 255
_MAX_PACKET = 1 << 20  # an Opus packet is at most ~1.3 kB per 120 ms; anything near this is garbage

# Ogg's CRC is CRC-32/MPEG-2 without its final inversion: polynomial 0x04C11DB7, MSB first, initial value 0.
# zlib's CRC-32 is the same polynomial LSB first (reflected), initial value and final xor 0xFFFFFFFF: fed
# bit-reversed bytes from an initial register of 0, it computes the bit-reversed Ogg CRC, at C speed.
_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def ogg_crc(page: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, no reflection, initial value 0) over a page whose CRC field is 0."""
    reflected = zlib.crc32(bytes(page).translate(_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


class OggPackets:
    """Ogg pages in, the packets of its one logical stream out, from bytes in any cut."""

    def __init__(self):
        self._buf = bytearray()
        self._packet = bytearray()  # a packet continued on the next page
        self.serial: int | None = None
        self.ended = False
        self.end_granule: int | None = None  # the last page's granule position, once it has come

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        packets: list[bytes] = []
        while len(self._buf) >= _PAGE_HEADER.size:
            capture, version, flags, granule, serial, _seq, crc, nseg = _PAGE_HEADER.unpack_from(self._buf)
            if capture != b"OggS" or version != 0:
                raise OpusError("not an Ogg stream: expected a page starting with 'OggS' (send the bytes of "
                                "an Ogg/Opus file or stream as they are, in order)")
            head = _PAGE_HEADER.size + nseg
            if len(self._buf) < head:
                break
            lacing = self._buf[_PAGE_HEADER.size:head]
            size = head + sum(lacing)
            if len(self._buf) < size:
                break
            page = bytes(self._buf[:size])
            del self._buf[:size]
            if ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) != crc:
                raise OpusError("an Ogg page failed its CRC check: the stream is corrupt")
            if self.ended:
                raise OpusError("data after the Ogg stream's last page (end-of-stream flag): chained or "
                                "concatenated streams are not supported; open a new stream")
            if self.serial is None:
                if not flags & 0x02:
                    raise OpusError("the Ogg stream does not start with its first page (no beginning-of-stream "
                                    "flag): send the file from its first byte")
                self.serial = serial
            elif serial != self.serial:
                raise OpusError("the Ogg stream holds several logical streams; send one Opus stream")
            if not flags & 0x01:
                self._packet.clear()  # a page that does not continue a packet: drop a dangling one
            at = head
            for n in lacing:
                self._packet += page[at: at + n]
                at += n
                if len(self._packet) > _MAX_PACKET:
                    raise OpusError("an Ogg packet is larger than 1 MiB: not an Opus stream")
                if n < 255:
                    packets.append(bytes(self._packet))
                    self._packet.clear()
            if flags & 0x04:
                self.ended = True
                self.end_granule = granule
        if len(self._buf) > _MAX_PAGE:  # cannot happen with a valid header; keeps memory bounded regardless
            raise OpusError("an Ogg page is larger than the format allows")
        return packets


# Opus (libopus through ctypes) ---------------------------------------------------------------------------
_lib = None
_lib_lock = threading.Lock()


def _libopus():
    """The system libopus, loaded once; None when it is not installed."""
    global _lib
    with _lib_lock:
        if _lib is None:
            name = ctypes.util.find_library("opus")
            try:
                lib = ctypes.CDLL(name or "libopus.so.0")
            except OSError:
                _lib = False
                return None
            lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
            lib.opus_decoder_create.restype = ctypes.c_void_p
            lib.opus_decode_float.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32,
                                              ctypes.POINTER(ctypes.c_float), ctypes.c_int, ctypes.c_int]
            lib.opus_decode_float.restype = ctypes.c_int
            lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
            lib.opus_decoder_destroy.restype = None
            lib.opus_strerror.argtypes = [ctypes.c_int]
            lib.opus_strerror.restype = ctypes.c_char_p
            _lib = lib
        return _lib or None


def opus_available() -> bool:
    """Whether libopus could be loaded (else OggOpusStream and decode_file raise OpusError)."""
    return _libopus() is not None


_MAX_FRAME = TARGET_RATE * 120 // 1000  # an Opus packet holds at most 120 ms


class OpusHead:
    """The identification header (RFC 7845 5.1): channels, pre-skip (48 kHz samples), output gain (linear)."""

    def __init__(self, packet: bytes):
        if len(packet) < 19 or not packet.startswith(b"OpusHead"):
            raise OpusError("the first Ogg packet is not OpusHead: the stream is not Ogg/Opus (Ogg/Vorbis "
                            "is not supported for streams)")
        version, channels, pre_skip, _rate, gain, family = struct.unpack_from("<BBHIhB", packet, 8)
        if version >> 4 != 0:
            raise OpusError(f"OpusHead version {version} is not supported")
        if family != 0 or channels not in (1, 2):
            raise OpusError(f"Ogg/Opus with {channels} channels (mapping family {family}) is not supported: "
                            f"send mono or stereo")
        self.channels, self.pre_skip = channels, pre_skip
        self.gain = float(10 ** (gain / (20 * 256)))  # Q7.8 dB

    def frames(self, granule: int) -> int | None:
        """How many 16 kHz samples a stream ending at `granule` holds (None for an invalid granule, -1)."""
        return None if granule < 0 else max(0, round((granule - self.pre_skip) * TARGET_RATE / OPUS_RATE))


class OggOpusStream:
    """An incremental Ogg Opus decoder: `decode(bytes)` in any cut -> the 16 kHz mono float32 samples they
    complete. `on_samples(frames, channels)`, when given, is called after every packet with the 16 kHz frames
    decoded so far (before pre-skip and end trimming) and may raise to stop decoding (decode_file's caps)."""

    def __init__(self, on_samples=None):
        self._lib = _libopus()
        if self._lib is None:
            raise OpusError(LIBOPUS_MISSING)
        self._ogg = OggPackets()
        self._on_samples = on_samples
        self._decoder = None
        self._packets = 0
        self._decoded = 0  # 16 kHz frames out of libopus, before pre-skip and end trimming
        self._skip = 0  # pre-skip left to drop, in 16 kHz samples
        self._samples = 0  # samples given out so far
        self.head: OpusHead | None = None
        self.channels = 0

    def decode(self, data: bytes) -> np.ndarray:
        out = []
        for packet in self._ogg.feed(bytes(data)):
            self._packets += 1
            if self._packets == 1:
                self._start(OpusHead(packet))
            elif self._packets == 2:
                if not packet.startswith(b"OpusTags"):
                    raise OpusError("the second Ogg packet is not OpusTags: not an Ogg/Opus stream")
            else:
                out.append(self._audio(packet))
        x = np.concatenate(out) if out else np.zeros(0, np.float32)
        if self._ogg.end_granule is not None and self.head is not None:
            total = self.head.frames(self._ogg.end_granule)
            if total is not None:  # end trimming (RFC 7845 4.4)
                x = x[: max(0, total - self._samples)]
        self._samples += len(x)
        return x

    @property
    def ended(self) -> bool:
        """Whether the end-of-stream page has come."""
        return self._ogg.ended

    def _start(self, head: OpusHead) -> None:
        error = ctypes.c_int(0)
        self._decoder = self._lib.opus_decoder_create(TARGET_RATE, head.channels, ctypes.byref(error))
        if error.value != 0 or not self._decoder:
            raise OpusError(f"libopus cannot create a decoder: {self._lib.opus_strerror(error.value).decode()}")
        self.head, self.channels = head, head.channels
        self._skip = round(head.pre_skip * TARGET_RATE / OPUS_RATE)  # pre-skip counts 48 kHz samples
        self._pcm = (ctypes.c_float * (_MAX_FRAME * head.channels))()

    def _audio(self, packet: bytes) -> np.ndarray:
        n = self._lib.opus_decode_float(self._decoder, packet, len(packet), self._pcm, _MAX_FRAME, 0)
        if n < 0:
            raise OpusError(f"an Opus packet does not decode: {self._lib.opus_strerror(n).decode()}")
        self._decoded += n
        if self._on_samples is not None:
            self._on_samples(self._decoded, self.channels)
        x = np.ctypeslib.as_array(self._pcm)[: n * self.channels].astype(np.float32)
        if self.channels > 1:
            x = x.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        if self._skip:
            cut = min(self._skip, len(x))
            x, self._skip = x[cut:], self._skip - cut
        if self.head.gain != 1.0:
            x *= self.head.gain
        return x

    def __del__(self):
        if getattr(self, "_decoder", None):
            self._lib.opus_decoder_destroy(self._decoder)
            self._decoder = None


# Whole files ---------------------------------------------------------------------------------------------

def _pages(view):
    """(flags, granule, payload offset, payload end) of each whole page, in order."""
    pos, size = 0, len(view)
    while pos + _PAGE_HEADER.size <= size and bytes(view[pos:pos + 4]) == b"OggS":
        flags, granule, nseg = view[pos + 5], int.from_bytes(view[pos + 6:pos + 14], "little", signed=True), \
            view[pos + 26]
        start = pos + _PAGE_HEADER.size + nseg
        end = start + sum(view[pos + _PAGE_HEADER.size:start])
        if end > size:
            return
        yield flags, granule, start, end
        pos = end


def _declared(view) -> tuple[OpusHead, int | None]:
    """The OpusHead (alone on the first page, RFC 7845 3) and the 16 kHz frames the last page's granule position
    declares (None without a valid one), read from the page headers, before anything decodes."""
    head, last = None, None
    for flags, granule, start, end in _pages(view):
        if head is None:
            head = OpusHead(bytes(view[start:end]))
        if flags & 0x04:
            last = granule
    if head is None:
        raise OpusError("not an Ogg stream: it holds no whole page")
    return head, None if last is None else head.frames(last)


def decode_file(buf, max_seconds: float | None = None,
                max_bytes: int | None = None) -> tuple[np.ndarray, int]:
    """Decode a whole Ogg Opus file held in `buf` (bytes-like) exactly as OggOpusStream decodes it streamed:
    (1-D float32 at 16 kHz, channels averaged; 16000).

    Before decoding, the duration the last page's granule position declares is checked against `max_seconds`
    (AudioTooLong) and channels x 16 kHz frames x 4 bytes against `max_bytes` (AudioTooLarge); both are checked
    again after every packet, so nothing is sized from a header's claim. The caller (common/audio.py) has
    already refused a file without an end-of-stream page (truncated) or of several logical streams (chained).
    Raises OpusError for anything else that does not decode, or when libopus is not installed."""
    view = memoryview(buf).cast("B")
    head, frames = _declared(view)
    if frames is not None:
        if max_seconds is not None and frames > _limit(max_seconds, TARGET_RATE):
            raise _too_long(max_seconds)
        _check_decoded(frames, head.channels, TARGET_RATE, max_bytes)
    limit = _limit(max_seconds, TARGET_RATE)

    def caps(decoded: int, channels: int) -> None:
        # The pre-skip (at most 65535 / 3 samples at 16 kHz) is dropped after this: allow for it.
        if limit is not None and decoded > limit + round(head.pre_skip * TARGET_RATE / OPUS_RATE):
            raise _too_long(max_seconds)
        _check_decoded(decoded, channels, TARGET_RATE, max_bytes, declared=False)

    stream = OggOpusStream(on_samples=caps)
    pieces, step = [], 1 << 16
    for at in range(0, len(view), step):
        pieces.append(stream.decode(view[at:at + step]))
    if not stream.ended:
        raise OpusError("OGG is truncated: it ends without an end-of-stream page")
    x = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if limit is not None and len(x) > limit:
        raise _too_long(max_seconds)
    if not len(x):
        raise OpusError("OGG Opus: its stream decodes to no samples")
    return np.ascontiguousarray(x, dtype=np.float32), TARGET_RATE


def probe_seconds(source) -> float:
    """Duration of an Ogg Opus file (`source`: a path or a seekable binary file) in seconds from its OpusHead and
    its last page's granule position (the first and the last page are read, nothing decodes):
    len(decode_file(...)[0]) / 16000 for a whole file. OpusError when the file does not end with a whole
    end-of-stream page (load_file refuses it as truncated)."""
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            return probe_seconds(f)
    source.seek(0)
    first = source.read(_MAX_PAGE)
    size = source.seek(0, 2)
    source.seek(max(0, size - _MAX_PAGE))
    tail = source.read()
    page = next(_pages(memoryview(first)), None)
    if page is None:
        raise OpusError("not an Ogg stream: it holds no whole page")
    head = OpusHead(first[page[2]:page[3]])
    at = len(tail)
    while (at := tail.rfind(b"OggS", 0, at)) >= 0:  # the last page is the one ending the file, CRC intact
        found = next(_pages(memoryview(tail)[at:]), None)
        if found is not None and at + found[3] == len(tail) and found[0] & 0x04:
            crc = int.from_bytes(tail[at + 22:at + 26], "little")
            if ogg_crc(tail[at:at + 22] + b"\0\0\0\0" + tail[at + 26:]) == crc:
                frames = head.frames(found[1])
                if frames is not None:
                    return frames / TARGET_RATE
    raise OpusError("OGG Opus: it does not end with an end-of-stream page holding a granule position "
                    "(truncated?)")
