"""`launcher/launch stream FILE|-`: live transcription of a file or of stdin, at real-time speed or faster.

Two ways to reach a serving container:
  --endpoint-name NAME   a SageMaker endpoint, through InvokeEndpointWithBidirectionalStream (HTTP/2) with the AWS
                         SDK's bidirectional-stream client, aws-sdk-sagemaker-runtime-http2 (IAM action
                         sagemaker:InvokeEndpointWithBidirectionalStream). That SDK needs Python >= 3.12: it is in
                         the launcher's environment, .venv-launch (Python 3.12, beside the SageMaker SDK v3;
                         docs/streaming.md, Live transcription).
  --local [--url URL]    the container's WebSocket itself (docker run -p 8080:8080 ... serve, or serve/serve):
                         ws://127.0.0.1:8080/invocations-bidirectional-stream by default; needs websockets only.

Partials are rewritten in place on a terminal (stderr), finals are printed as lines on stdout (`--json`: every
event as a JSON line). FILE is any audio libsndfile reads, sent as 16-bit PCM at its own rate and channel count
(the server resamples); `-` reads raw audio from stdin: 16-bit little-endian PCM (--rate, --channels), or Ogg/Opus
bytes with --encoding ogg_opus (e.g. `ffmpeg -i talk.m4a -c:a libopus -f ogg - | launcher/launch stream -
--encoding ogg_opus --local`). Light: it imports neither torch nor the SageMaker SDK.

--protocol openai speaks OpenAI's Realtime transcription events instead of our own protocol (docs/streaming.md,
Realtime (OpenAI events)): a session.update with server VAD, the audio as input_audio_buffer.append events (16-bit
PCM at 24 kHz mono, resampled here with soxr), a commit at the end; deltas are shown as partials and each
`completed` transcript is printed as a line. The stream ends when the commit's transcript has come.

One file because `launch stream` is one client with two transports and two protocols: the audio source, its
real-time pacing and the printer of events are shared by the WebSocket path and the SageMaker bidirectional-stream
path and by both protocols' framings, each a few dozen lines.
"""
from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from . import options
from .aws import AwsOptions
from .errors import LaunchError

DEFAULT_URL = "ws://127.0.0.1:8080/invocations-bidirectional-stream"
SDK_PACKAGE = "aws-sdk-sagemaker-runtime-http2"
IAM_ACTION = "sagemaker:InvokeEndpointWithBidirectionalStream"
# How long opening the stream may take. The SDK (0.12.0) never returns from the call when it cannot sign it
# (no credentials found: its error stays in a background task), so without a limit the command hangs silently.
OPEN_TIMEOUT_S = 30.0
PROTOCOLS = ("native", "openai")
OPENAI_RATE = 24_000  # OpenAI's pcm16


def add_parser(sub, parents) -> None:
    p = sub.add_parser("stream", parents=parents, help="live transcription of a file or stdin over a bidirectional "
                                                       "stream (partials and finals as they come)",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="FILE|-", help="an audio file, or - for raw audio on stdin")
    p.add_argument("--endpoint-name", help="the SageMaker endpoint (InvokeEndpointWithBidirectionalStream)")
    p.add_argument("--url", default=None, help=f"with --local: the container's WebSocket (default {DEFAULT_URL})")
    p.add_argument("--speed", type=float, default=1.0,
                   help="send audio at this multiple of real time (default 1; 0: as fast as the connection takes it)")
    p.add_argument("--frame-ms", type=int, default=100, help="audio per WebSocket frame, in ms (default 100)")
    p.add_argument("--encoding", choices=("pcm_s16le", "ogg_opus"), default="pcm_s16le",
                   help="stdin only: what the bytes are (default pcm_s16le)")
    p.add_argument("--rate", type=int, default=16000, help="stdin pcm_s16le: sample rate in Hz (default 16000)")
    p.add_argument("--channels", type=int, default=1, help="stdin pcm_s16le: interleaved channels (default 1)")
    p.add_argument("--option", action="append", metavar="NAME=VALUE",
                   help="a request option for the stream (e.g. language=fra), repeatable")
    p.add_argument("--json", action="store_true", help="print every event as a JSON line (partials too)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="native",
                   help="native: our own protocol (default); openai: OpenAI Realtime transcription events")


@dataclass
class StreamOptions:
    aws: AwsOptions
    source: str
    endpoint_name: str | None
    url: str
    speed: float
    frame_ms: int
    encoding: str
    rate: int
    channels: int
    request_options: dict[str, str] = field(default_factory=dict)
    as_json: bool = False
    protocol: str = "native"

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "StreamOptions":
        a = options.aws_options(ns)
        if a.local and ns.endpoint_name:
            raise LaunchError("give --endpoint-name (a SageMaker endpoint) or --local (a container's WebSocket), "
                              "not both")
        if not a.local and not ns.endpoint_name:
            raise LaunchError("--endpoint-name is required (or --local to stream to a local container)")
        if ns.url and not a.local:
            raise LaunchError("--url only applies with --local")
        url = ns.url or DEFAULT_URL
        if not url.startswith(("ws://", "wss://")):
            raise LaunchError(f"--url {url!r} must be a ws:// or wss:// URL")
        if ns.speed < 0:
            raise LaunchError("--speed must be 0 (as fast as possible) or more")
        if not 10 <= ns.frame_ms <= 5000:
            raise LaunchError("--frame-ms must be between 10 and 5000")
        if ns.source != "-":
            if not Path(ns.source).is_file():
                raise LaunchError(f"no such file: {ns.source}")
            if ns.encoding != "pcm_s16le":
                raise LaunchError("--encoding applies to stdin (-) only: files are decoded and sent as PCM")
        if not 1000 <= ns.rate <= 384000 or not 1 <= ns.channels <= 8:
            raise LaunchError("--rate must be 1000..384000 Hz and --channels 1..8")
        protocol = getattr(ns, "protocol", "native")
        if protocol == "openai" and ns.encoding != "pcm_s16le":
            raise LaunchError("--protocol openai sends 16-bit PCM: --encoding ogg_opus is for the native protocol")
        return cls(a, ns.source, ns.endpoint_name, url, ns.speed, ns.frame_ms, ns.encoding, ns.rate, ns.channels,
                   options.pairs(ns.option, "--option"), ns.json, protocol)


# Audio sources: (settings, iterator of (bytes, seconds of audio)) -------------------------------------------
def audio_source(opts: StreamOptions):
    if opts.source != "-":
        try:
            import soundfile as sf
        except ImportError:
            raise LaunchError("reading audio files needs soundfile (./setup.sh builds .venv-launch with it)") \
                from None
        try:
            info = sf.info(opts.source)
        except Exception as exc:  # libsndfile's own message says what is wrong with the file
            raise LaunchError(f"cannot read {opts.source}: {exc}") from None
        frames = max(1, info.samplerate * opts.frame_ms // 1000)
        settings = {"type": "settings", "encoding": "pcm_s16le", "sample_rate": info.samplerate,
                    "channels": info.channels}

        def chunks():
            for block in sf.blocks(opts.source, blocksize=frames, dtype="int16", always_2d=True):
                yield block.astype("<i2").tobytes(), len(block) / info.samplerate

        return settings, chunks()
    stdin = sys.stdin.buffer
    if opts.encoding == "ogg_opus":
        def pages():
            while True:
                data = stdin.read1(4096)
                if not data:
                    return
                yield data, 0.0  # paced by whoever writes stdin

        return {"type": "settings", "encoding": "ogg_opus"}, pages()
    size = max(2 * opts.channels, opts.rate * opts.frame_ms // 1000 * 2 * opts.channels)

    def pcm():
        while True:
            data = stdin.read(size)
            if not data:
                return
            yield data, len(data) / (2 * opts.channels * opts.rate)

    return {"type": "settings", "encoding": "pcm_s16le", "sample_rate": opts.rate, "channels": opts.channels}, pcm()


def paced(chunks, speed: float):
    """Yield the chunks no faster than `speed` times real time."""
    started, sent = time.monotonic(), 0.0
    for data, seconds in chunks:
        if speed > 0:
            wait = started + sent / speed - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        sent += seconds
        yield data


# OpenAI Realtime events ---------------------------------------------------------------------------------------
class OpenAIProtocol:
    """Our protocol's settings, audio and end turned into OpenAI Realtime client events, and its server events
    read back into the Printer's: delta -> partial (the item's text so far), completed -> final."""

    def __init__(self, settings: dict):
        self.rate, self.channels = settings.get("sample_rate", 16000), settings.get("channels", 1)
        self.options = {k: v for k, v in settings.items() if k not in ("type", "encoding", "sample_rate", "channels")}
        self._resampler = None
        self.texts: dict[str, str] = {}
        self.updates = 0  # session.updated events so far: the second answers the one sent after the commit
        self.finished = False

    def first(self) -> str:
        transcription = dict(self.options)
        return json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": OPENAI_RATE}, "transcription": transcription,
            "turn_detection": {"type": "server_vad"}}}}})

    def audio(self, data: bytes) -> str:
        import base64

        import numpy as np
        import soxr

        x = np.frombuffer(data[: len(data) - len(data) % (2 * self.channels)], "<i2").astype(np.float32) / 32768
        if self.channels > 1:
            x = x.reshape(-1, self.channels).mean(axis=1)
        if self.rate != OPENAI_RATE:
            if self._resampler is None:
                self._resampler = soxr.ResampleStream(self.rate, OPENAI_RATE, 1, quality="HQ")
            x = self._resampler.resample_chunk(x)
        pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
        return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})

    def end(self) -> list[str]:
        """The last commit, then a session.update: the server handles events in order and sends a commit's
        transcript before it answers the next event, so its session.updated says that everything came."""
        return [json.dumps({"type": "input_audio_buffer.commit"}),
                json.dumps({"type": "session.update", "session": {"type": "transcription"}})]

    def translate(self, event: dict) -> dict | None:
        """A server event as the Printer's (partial/final/error), or None for one it does not show."""
        kind = event.get("type")
        if kind == "conversation.item.input_audio_transcription.delta":
            text = self.texts.get(event["item_id"], "") + (event.get("delta") or "")
            self.texts[event["item_id"]] = text
            return {"type": "partial", "text": text}
        if kind == "input_audio_buffer.behind":
            return {"type": "partial", "text": "", "behind_s": event.get("behind_s")}
        if kind == "session.updated":
            self.updates += 1
            self.finished = self.updates >= 2
        if kind == "conversation.item.input_audio_transcription.completed":
            self.texts.pop(event.get("item_id"), None)
            return {"type": "final", "text": event.get("transcript", "")}
        if kind == "error":
            error = event.get("error") or {}
            if self.ending and error.get("code") == "input_audio_buffer_commit_empty":
                return None  # nothing was appended after the server's VAD committed it all
            return {"type": "error", "error": error.get("message", error)}
        return None

    ending = False

    def closed_early(self, close_code: int | None) -> bool:
        return not self.finished  # the connection stays open: the second session.updated ends it


# Printing ---------------------------------------------------------------------------------------------------
class Printer:
    def __init__(self, as_json: bool, out=None, err=None):
        self.as_json = as_json
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.tty = self.err.isatty()
        self.shown = 0
        self.error: dict | None = None

    def event(self, event: dict) -> None:
        kind = event.get("type")
        if self.as_json:
            print(json.dumps(event), file=self.out, flush=True)
        elif kind == "partial" and self.tty:
            behind = event.get("behind_s") or 0  # the server caught up on this much audio at once
            line = (f"[server {behind:g} s behind] " if behind else "") + event["text"][-150:]
            self.err.write("\r" + line + " " * max(0, self.shown - len(line)))
            self.err.flush()
            self.shown = len(line)
        elif kind == "final":
            self._clear()
            if event["text"]:
                print(event["text"], file=self.out, flush=True)
        if kind == "error":
            self._clear()
            self.error = event
            if not self.as_json:
                print(f"launch stream: error from the server: {event.get('error')}", file=self.err, flush=True)

    def _clear(self) -> None:
        if self.tty and self.shown:
            self.err.write("\r" + " " * self.shown + "\r")
            self.err.flush()
            self.shown = 0


# Transports -------------------------------------------------------------------------------------------------
def run(opts: StreamOptions) -> int:
    if opts.protocol == "openai" and not opts.aws.local:  # refused before any audio is read
        raise LaunchError("--protocol openai streams to a local container (--local); SageMaker endpoints take it too "
                          "(the same route), from a client of your own: docs/streaming.md, Realtime (OpenAI events)")
    settings, chunks = audio_source(opts)
    settings.update(opts.request_options)
    printer = Printer(opts.as_json)
    if opts.protocol == "openai":
        code = _run_websocket(opts, OpenAIProtocol(settings), paced(chunks, opts.speed), printer)
    elif opts.aws.local:
        code = _run_websocket(opts, NativeProtocol(settings), paced(chunks, opts.speed), printer)
    else:
        code = _run_sagemaker(opts, settings, paced(chunks, opts.speed), printer)
    return 1 if printer.error is not None else code


class NativeProtocol:
    """Our own protocol on the WebSocket: the settings frame, binary audio frames, {"type": "end"}; its events are
    the Printer's as they are, and the server closes the stream (1000) after the last final."""

    finished = False  # the close ends it
    ending = False

    def __init__(self, settings: dict):
        self.settings = settings

    def first(self) -> str:
        return json.dumps(self.settings)

    def audio(self, data: bytes) -> bytes:
        return data

    def end(self) -> list[str]:
        return [json.dumps({"type": "end"})]

    def translate(self, event: dict) -> dict:
        return event

    def closed_early(self, close_code: int | None) -> bool:
        return close_code not in (1000, None)


def _run_websocket(opts: StreamOptions, protocol, frames, printer: Printer) -> int:
    """One local WebSocket session in either protocol (NativeProtocol, OpenAIProtocol): a thread sends the first
    message, the audio and the end; this one prints what comes back until the protocol is finished or the
    server closes."""
    try:
        from websockets.exceptions import ConnectionClosed, InvalidHandshake
        from websockets.sync.client import connect
    except ImportError:
        raise LaunchError("--local needs websockets (./setup.sh builds .venv-launch with it)") from None
    try:
        conn = connect(opts.url, open_timeout=30, max_size=None, compression=None)
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        raise LaunchError(f"cannot open {opts.url}: {exc}; is the container running (local_test/serve_local.sh) and "
                          f"listening on that port?") from None
    done = threading.Event()

    def send():
        try:
            conn.send(protocol.first())
            for data in frames:
                if done.is_set():
                    return
                conn.send(protocol.audio(data))
            protocol.ending = True
            for message in protocol.end():
                conn.send(message)
        except ConnectionClosed:
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        for message in conn:
            raw = json.loads(message)
            event = protocol.translate(raw)  # None: an event the Printer does not show
            if printer.as_json:  # the server's events as they are
                print(json.dumps(raw), file=printer.out, flush=True)
                if event is not None and event.get("type") == "error":
                    printer.error = raw
            elif event is not None:
                printer.event(event)
            if protocol.finished:
                break
    except ConnectionClosed:
        pass
    finally:
        done.set()
        conn.close()
    if protocol.closed_early(conn.close_code) and printer.error is None:
        print(f"launch stream: the server closed the stream ({conn.close_code} {conn.close_reason}) before the last "
              f"transcript", file=sys.stderr)
        return 1
    return 0


def _run_sagemaker(opts: StreamOptions, settings: dict, frames, printer: Printer) -> int:
    try:
        from aws_sdk_sagemaker_runtime_http2.client import AsyncSageMakerRuntimeHTTP2Client
        from aws_sdk_sagemaker_runtime_http2.config import AsyncSageMakerRuntimeHTTP2Config
        from aws_sdk_sagemaker_runtime_http2.models import (
            InvokeEndpointWithBidirectionalStreamInput, RequestPayloadPart, RequestStreamEventPayloadPart,
            ResponseStreamEventPayloadPart)
        from smithy_http.aio.crt import AWSCRTHTTPClient  # HTTP/2 with duplex streaming (the awscrt extra)
    except ImportError:
        raise LaunchError(
            f"streaming to an endpoint needs the AWS SDK's bidirectional-stream client ({SDK_PACKAGE}, Python >= "
            f"3.12), which is not in this Python ({sys.version.split()[0]}): python3.12 -m venv .venv-stream && "
            f".venv-stream/bin/./setup.sh builds .venv-launch with it, then run this command with "
            f"LAUNCH_PYTHON=.venv-stream/bin/python launcher/launch stream ...") from None
    import asyncio

    region = opts.aws.region
    query = urllib.parse.urlencode(opts.request_options)

    sdk_modules = ("aws_sdk_sagemaker_runtime_http2", "smithy_core", "smithy_aws_core", "smithy_http")

    def on_background_error(loop, context):  # the SDK's own tasks: one line, not a stray traceback
        exc = context.get("exception")
        if exc is not None and type(exc).__module__.split(".")[0] in sdk_modules:
            print(f"launch stream: the AWS SDK said: {type(exc).__name__}: {exc}", file=sys.stderr)
        else:
            loop.default_exception_handler(context)

    async def main() -> int:
        asyncio.get_running_loop().set_exception_handler(on_background_error)
        overrides = {"region": region} if region else {}
        # The SDK's default transport (aiohttp) cannot stream both ways; the AWS CRT client can.
        config = await AsyncSageMakerRuntimeHTTP2Config.resolve(profile=opts.aws.profile, transport=AWSCRTHTTPClient(),
                                                                 **overrides)
        client = AsyncSageMakerRuntimeHTTP2Client(config=config)
        try:
            stream = await asyncio.wait_for(client.invoke_endpoint_with_bidirectional_stream(
                InvokeEndpointWithBidirectionalStreamInput(endpoint_name=opts.endpoint_name,
                                                           model_query_string=query or None)), OPEN_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise LaunchError(
                f"the stream to endpoint {opts.endpoint_name} did not open within {OPEN_TIMEOUT_S:g} s: check that AWS "
                f"credentials are set (environment, ~/.aws, --profile or an instance role; the SDK waits for ever "
                f"without them), the region ({region or 'from the AWS config'}) and the network; the caller needs "
                f"the IAM action {IAM_ACTION}") from None
        loop = asyncio.get_running_loop()
        outgoing: queue.Queue = queue.Queue(maxsize=64)

        def produce():  # pacing sleeps off the event loop
            for data in frames:
                outgoing.put(data)
            outgoing.put(None)

        threading.Thread(target=produce, daemon=True).start()

        async def send():
            await stream.input_stream.send(RequestStreamEventPayloadPart(
                value=RequestPayloadPart(bytes_=json.dumps(settings).encode(), data_type="UTF8")))
            while (data := await loop.run_in_executor(None, outgoing.get)) is not None:
                await stream.input_stream.send(RequestStreamEventPayloadPart(
                    value=RequestPayloadPart(bytes_=data, data_type="BINARY")))
            await stream.input_stream.send(RequestStreamEventPayloadPart(
                value=RequestPayloadPart(bytes_=b'{"type": "end"}', data_type="UTF8")))

        sender = asyncio.create_task(send())
        _, output = await stream.await_output()
        async for event in output:
            if isinstance(event, ResponseStreamEventPayloadPart) and event.value.bytes_:
                printer.event(json.loads(event.value.bytes_))
            elif not isinstance(event, ResponseStreamEventPayloadPart):
                raise LaunchError(f"the stream failed: {getattr(event, 'value', event)}")
        await stream.input_stream.close()
        if not sender.done():
            sender.cancel()
        return 0

    try:
        return asyncio.run(main())
    except LaunchError:
        raise
    except Exception as exc:
        if type(exc).__module__.split(".")[0] in sdk_modules:
            hint = (f" (the caller needs the IAM action {IAM_ACTION} on the endpoint)"
                    if any(k in f"{type(exc).__name__} {exc}" for k in ("ccess", "403", "not authorized")) else "")
            raise LaunchError(f"{type(exc).__name__}: {exc}{hint}") from None
        raise
