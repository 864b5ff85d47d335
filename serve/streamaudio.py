"""Incremental audio decoding for live streams: WebSocket binary frames -> 16 kHz mono float32 samples.

Each decoder keeps its state between frames (a sample split across two frames, the resampler's filter, the
Opus decoder), so every byte is decoded once however the client cuts its frames.

- `pcm_s16le`: 16-bit little-endian PCM, interleaved channels (1-8, averaged to mono) at any rate from 1 kHz to
  384 kHz; resampled to 16 kHz with soxr's streaming resampler at the quality /invocations uses (HQ), so a
  streamed clip gives the samples a request with the whole clip gives, up to the resampler's edges.
- `ogg_opus`: Ogg pages (RFC 3533) carrying one Opus stream (RFC 7845), channel mapping family 0 (mono or
  stereo), in any cut: pages are reassembled, their CRC checked, packets decoded by libopus straight at
  16 kHz (an Opus decoder outputs any of 8-48 kHz natively), the OpusHead's pre-skip and output gain applied.
  libopus is the system library (Debian/Ubuntu package libopus0), loaded with ctypes: a stream asking for
  Opus on a server without it is refused with a message that says so.
- `pcm_mulaw`, `pcm_alaw`: ITU-T G.711 mu-law / A-law, one byte per sample (what telephony sends, 8 kHz unless
  sample_rate says otherwise), mono. Expanded to 16-bit PCM by FFmpeg's G.711 decoders through PyAV (the `av`
  package, pinned for this in requirements/serve.txt), then resampled to 16 kHz with one soxr stream
  per stream, as `pcm_s16le` is. G.711 has no state between samples, so frames may be cut anywhere.

Errors are `StreamAudioError` (a ValueError) with a message safe to show to the client.

One file because every decoder here answers one interface (`make_decoder(encoding, sample_rate, channels)`: feed
bytes, get 16 kHz samples) for the stream route; each encoding is a few dozen lines.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import struct
import threading

import numpy as np
import soxr

from common.audio import TARGET_RATE, AudioError, check_rate

ENCODINGS = ("pcm_s16le", "ogg_opus", "pcm_mulaw", "pcm_alaw")
G711_RATE = 8_000  # telephony
MAX_CHANNELS = 8


class StreamAudioError(ValueError):
    """Audio frames that cannot be decoded; the message says why."""


def make_decoder(encoding: str, sample_rate: int | None = None, channels: int | None = None):
    """A fresh decoder for one stream. Raises StreamAudioError for settings it cannot honour."""
    if encoding == "pcm_s16le":
        try:
            rate = check_rate(TARGET_RATE if sample_rate is None else sample_rate)
        except AudioError as exc:
            raise StreamAudioError(f"sample_rate: {exc}") from None
        channels = 1 if channels is None else channels
        if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
            raise StreamAudioError(f"channels must be a whole number from 1 to {MAX_CHANNELS}, got {channels!r}")
        return PcmDecoder(rate, channels)
    if encoding == "ogg_opus":
        if sample_rate is not None or channels is not None:
            raise StreamAudioError("ogg_opus streams carry their own sample rate and channel count (OpusHead); "
                                   "leave sample_rate and channels out")
        return OggOpusDecoder()
    if encoding in ("pcm_mulaw", "pcm_alaw"):
        try:
            rate = check_rate(G711_RATE if sample_rate is None else sample_rate)
        except AudioError as exc:
            raise StreamAudioError(f"sample_rate: {exc}") from None
        if channels not in (None, 1):
            raise StreamAudioError(f"{encoding} streams are mono (channels 1), got {channels!r}")
        return G711Decoder(encoding, rate)
    raise StreamAudioError(f"unknown encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")


class PcmDecoder:
    def __init__(self, rate: int, channels: int):
        self.rate, self.channels = rate, channels
        self._rest = b""  # the bytes of a sample frame cut by the end of a WebSocket frame
        self._resampler = None if rate == TARGET_RATE else soxr.ResampleStream(rate, TARGET_RATE, 1, quality="HQ")

    def decode(self, data: bytes) -> np.ndarray:
        data = self._rest + bytes(data)
        whole = len(data) - len(data) % (2 * self.channels)
        self._rest = data[whole:]
        x = np.frombuffer(data[:whole], dtype="<i2").astype(np.float32) / 32768.0
        if self.channels > 1:
            x = x.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    def flush(self) -> np.ndarray:
        """What the resampler still holds, at the end of the stream (a cut sample frame is dropped)."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        return np.ascontiguousarray(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True),
                                    dtype=np.float32)


class G711Decoder:
    """G.711 mu-law or A-law bytes -> 16 kHz float32 (FFmpeg's pcm_mulaw / pcm_alaw decoder, through PyAV)."""

    def __init__(self, encoding: str, rate: int = G711_RATE):
        try:
            import av  # FFmpeg's G.711 tables; imported here so that a server without it still serves PCM
        except ImportError:
            raise StreamAudioError(f"{encoding} needs PyAV (the `av` package), which this server does not have; "
                                   f"send pcm_s16le instead") from None
        self.encoding, self.rate = encoding, rate
        self._av = av
        self._codec = av.CodecContext.create(encoding, "r")
        self._codec.sample_rate = rate
        self._codec.layout = "mono"
        self._resampler = None if rate == TARGET_RATE else soxr.ResampleStream(rate, TARGET_RATE, 1, quality="HQ")

    def decode(self, data: bytes) -> np.ndarray:
        data = bytes(data)
        if not data:
            return np.zeros(0, np.float32)
        frames = self._codec.decode(self._av.Packet(data))
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]) if frames else np.zeros(0, np.int16)
        x = pcm.astype(np.float32) / 32768.0
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    def flush(self) -> np.ndarray:
        if self._resampler is None:
            return np.zeros(0, np.float32)
        return np.ascontiguousarray(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True),
                                    dtype=np.float32)


# Ogg ------------------------------------------------------------------------------------------------------
_PAGE_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, sequence, crc, segments
_MAX_PAGE = _PAGE_HEADER.size + 255 + 255 * 255
_MAX_PACKET = 1 << 20  # an Opus packet is at most ~1.3 kB per 120 ms; anything near this is garbage


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_CRC = _crc_table()


def ogg_crc(page: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, no reflection, initial value 0) over a page whose CRC field is 0."""
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[((crc >> 24) ^ byte) & 0xFF]
    return crc


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
                raise StreamAudioError("not an Ogg stream: expected a page starting with 'OggS' (send the bytes of "
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
                raise StreamAudioError("an Ogg page failed its CRC check: the stream is corrupt")
            if self.ended:
                raise StreamAudioError("data after the Ogg stream's last page (end-of-stream flag): chained or "
                                       "concatenated streams are not supported; open a new stream")
            if self.serial is None:
                if not flags & 0x02:
                    raise StreamAudioError("the Ogg stream does not start with its first page (no beginning-of-stream "
                                           "flag): send the file from its first byte")
                self.serial = serial
            elif serial != self.serial:
                raise StreamAudioError("the Ogg stream holds several logical streams; send one Opus stream")
            if not flags & 0x01:
                self._packet.clear()  # a page that does not continue a packet: drop a dangling one
            at = head
            for n in lacing:
                self._packet += page[at: at + n]
                at += n
                if len(self._packet) > _MAX_PACKET:
                    raise StreamAudioError("an Ogg packet is larger than 1 MiB: not an Opus stream")
                if n < 255:
                    packets.append(bytes(self._packet))
                    self._packet.clear()
            if flags & 0x04:
                self.ended = True
                self.end_granule = granule
        if len(self._buf) > _MAX_PAGE:  # cannot happen with a valid header; keeps memory bounded regardless
            raise StreamAudioError("an Ogg page is larger than the format allows")
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
    return _libopus() is not None


_MAX_FRAME = TARGET_RATE * 120 // 1000  # an Opus packet holds at most 120 ms


class OggOpusDecoder:
    def __init__(self):
        self._lib = _libopus()
        if self._lib is None:
            raise StreamAudioError("ogg_opus needs libopus, which this server does not have (install the "
                                   "libopus0 package); send pcm_s16le instead")
        self._ogg = OggPackets()
        self._decoder = None
        self._packets = 0
        self._skip = 0  # pre-skip left to drop, in 16 kHz samples
        self._pre_skip = 0  # in 48 kHz samples, as the header gives it
        self._samples = 0  # samples given out so far
        self._gain = 1.0
        self.channels = 0

    def decode(self, data: bytes) -> np.ndarray:
        out = []
        for packet in self._ogg.feed(bytes(data)):
            self._packets += 1
            if self._packets == 1:
                self._head(packet)
            elif self._packets == 2:
                if not packet.startswith(b"OpusTags"):
                    raise StreamAudioError("the second Ogg packet is not OpusTags: not an Ogg/Opus stream")
            else:
                out.append(self._audio(packet))
        x = np.concatenate(out) if out else np.zeros(0, np.float32)
        if self._ogg.end_granule is not None and self._ogg.end_granule >= 0:
            # End trimming (RFC 7845 4.4): the last granule position says where the audio ends, in 48 kHz samples.
            total = round((self._ogg.end_granule - self._pre_skip) * TARGET_RATE / 48_000)
            x = x[: max(0, total - self._samples)]
        self._samples += len(x)
        return x

    def flush(self) -> np.ndarray:
        return np.zeros(0, np.float32)

    def _head(self, packet: bytes) -> None:
        if len(packet) < 19 or not packet.startswith(b"OpusHead"):
            raise StreamAudioError("the first Ogg packet is not OpusHead: the stream is not Ogg/Opus (Ogg/Vorbis "
                                   "is not supported for streams)")
        version, channels, pre_skip, _rate, gain, family = struct.unpack_from("<BBHIhB", packet, 8)
        if version >> 4 != 0:
            raise StreamAudioError(f"OpusHead version {version} is not supported")
        if family != 0 or channels not in (1, 2):
            raise StreamAudioError(f"Ogg/Opus with {channels} channels (mapping family {family}) is not supported: "
                                   f"send mono or stereo")
        error = ctypes.c_int(0)
        self._decoder = self._lib.opus_decoder_create(TARGET_RATE, channels, ctypes.byref(error))
        if error.value != 0 or not self._decoder:
            raise StreamAudioError(f"libopus cannot create a decoder: {self._lib.opus_strerror(error.value).decode()}")
        self.channels = channels
        self._pre_skip = pre_skip
        self._skip = round(pre_skip * TARGET_RATE / 48_000)  # pre-skip counts 48 kHz samples
        self._gain = float(10 ** (gain / (20 * 256)))  # Q7.8 dB
        self._pcm = (ctypes.c_float * (_MAX_FRAME * channels))()

    def _audio(self, packet: bytes) -> np.ndarray:
        n = self._lib.opus_decode_float(self._decoder, packet, len(packet), self._pcm, _MAX_FRAME, 0)
        if n < 0:
            raise StreamAudioError(f"an Opus packet does not decode: {self._lib.opus_strerror(n).decode()}")
        x = np.ctypeslib.as_array(self._pcm)[: n * self.channels].astype(np.float32)
        if self.channels > 1:
            x = x.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        if self._skip:
            cut = min(self._skip, len(x))
            x, self._skip = x[cut:], self._skip - cut
        if self._gain != 1.0:
            x *= self._gain
        return x

    def __del__(self):
        if getattr(self, "_decoder", None):
            self._lib.opus_decoder_destroy(self._decoder)
            self._decoder = None
