"""Incremental audio decoding for live streams: WebSocket binary frames -> 16 kHz mono float32 samples.

Each decoder keeps its state between frames (a sample split across two frames, the resampler's filter, the
Opus decoder), so every byte is decoded once however the client cuts its frames.

- `pcm_s16le`: 16-bit little-endian PCM, interleaved channels (1-8, averaged to mono) at any rate from 1 kHz to
  384 kHz; resampled to 16 kHz with soxr's streaming resampler at the quality /invocations uses (HQ), so a
  streamed clip gives the samples a request with the whole clip gives, up to the resampler's edges.
- `ogg_opus`: Ogg pages (RFC 3533) carrying one Opus stream (RFC 7845), channel mapping family 0 (mono or
  stereo), in any cut: pages are reassembled, their CRC checked, packets decoded by libopus straight at
  16 kHz (an Opus decoder outputs any of 8-48 kHz natively), the OpusHead's pre-skip and output gain applied.
  The decoder is common/opus.py's, the one /invocations decodes Ogg Opus files with: a file streamed gives the
  samples it gives whole. libopus is the system library (Debian/Ubuntu package libopus0), loaded with ctypes:
  a stream asking for Opus on a server without it is refused with a message that says so.
- `pcm_mulaw`, `pcm_alaw`: ITU-T G.711 mu-law / A-law, one byte per sample (what telephony sends, 8 kHz unless
  sample_rate says otherwise), mono. Expanded to 16-bit PCM by FFmpeg's G.711 decoders through PyAV (the `av`
  package the serving image also decodes container formats with), then resampled to 16 kHz with one soxr stream
  per stream, as `pcm_s16le` is. G.711 has no state between samples, so frames may be cut anywhere.

Errors are `StreamAudioError` (a ValueError) with a message safe to show to the client.
"""
from __future__ import annotations

import numpy as np
import soxr

from common.audio import TARGET_RATE, AudioError, check_rate
from common.opus import OggOpusStream, OggPackets, OpusError, ogg_crc, opus_available  # noqa: F401 (re-exported)

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


class _Resampled:
    """Mono float32 at `rate` -> 16 kHz, one soxr stream per live stream (what PCM and G.711 share)."""

    def __init__(self, rate: int):
        self._resampler = None if rate == TARGET_RATE else soxr.ResampleStream(rate, TARGET_RATE, 1, quality="HQ")

    def _to_target(self, x: np.ndarray) -> np.ndarray:
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    def flush(self) -> np.ndarray:
        """What the resampler still holds, at the end of the stream (a cut sample frame is dropped)."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        return np.ascontiguousarray(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True),
                                    dtype=np.float32)


class PcmDecoder(_Resampled):
    def __init__(self, rate: int, channels: int):
        super().__init__(rate)
        self.rate, self.channels = rate, channels
        self._rest = b""  # the bytes of a sample frame cut by the end of a WebSocket frame

    def decode(self, data: bytes) -> np.ndarray:
        data = self._rest + bytes(data)
        whole = len(data) - len(data) % (2 * self.channels)
        self._rest = data[whole:]
        x = np.frombuffer(data[:whole], dtype="<i2").astype(np.float32) / 32768.0
        if self.channels > 1:
            x = x.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        return self._to_target(x)


class G711Decoder(_Resampled):
    """G.711 mu-law or A-law bytes -> 16 kHz float32 (FFmpeg's pcm_mulaw / pcm_alaw decoder, through PyAV)."""

    def __init__(self, encoding: str, rate: int = G711_RATE):
        try:
            import av  # FFmpeg's G.711 tables; imported here so that a server without it still serves PCM
        except ImportError:
            raise StreamAudioError(f"{encoding} needs PyAV (the `av` package), which this server does not have; "
                                   f"send pcm_s16le instead") from None
        super().__init__(rate)
        self.encoding, self.rate = encoding, rate
        self._av = av
        self._codec = av.CodecContext.create(encoding, "r")
        self._codec.sample_rate = rate
        self._codec.layout = "mono"

    def decode(self, data: bytes) -> np.ndarray:
        data = bytes(data)
        if not data:
            return np.zeros(0, np.float32)
        frames = self._codec.decode(self._av.Packet(data))
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]) if frames else np.zeros(0, np.int16)
        x = pcm.astype(np.float32) / 32768.0
        return self._to_target(x)



# Ogg Opus: common/opus.py's decoder, the one /invocations and training decode Ogg Opus files with (the same
# samples). OggPackets, ogg_crc and opus_available are re-exported (imported above) for the stream's callers.


class OggOpusDecoder:
    """common.opus.OggOpusStream with the stream's error class and messages."""

    def __init__(self):
        if not opus_available():
            raise StreamAudioError("ogg_opus needs libopus, which this server does not have (install the "
                                   "libopus0 package); send pcm_s16le instead")
        self._stream = OggOpusStream()

    @property
    def channels(self) -> int:
        return self._stream.channels

    def decode(self, data: bytes) -> np.ndarray:
        try:
            return self._stream.decode(data)
        except OpusError as exc:
            raise StreamAudioError(str(exc)) from None

    def flush(self) -> np.ndarray:
        return np.zeros(0, np.float32)
