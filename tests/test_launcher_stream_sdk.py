"""launch stream to an endpoint, against a stand-in for the AWS SDK's bidirectional-stream client (the real one needs
Python >= 3.12 and an endpoint): what our code does around the SDK, not the SDK."""
from __future__ import annotations

import asyncio
import sys
import types

import pytest

from train_helpers import ROOT

sys.path.insert(0, str(ROOT))
from launcher import stream  # noqa: E402
from launcher.aws import AwsOptions  # noqa: E402
from launcher.errors import LaunchError  # noqa: E402


class Shape:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class ResponseStreamEventPayloadPart(Shape):
    pass


def fake_sdk(monkeypatch, invoke):
    """Modules named as the SDK's (aws_sdk_sagemaker_runtime_http2, smithy_http) whose client calls `invoke`."""
    class Config:
        @classmethod
        async def resolve(cls, **kwargs):
            return Shape(**kwargs)

    class Client:
        def __init__(self, config):
            self.config = config

        async def invoke_endpoint_with_bidirectional_stream(self, request):
            return await invoke(request)

    modules = {
        "aws_sdk_sagemaker_runtime_http2": types.ModuleType("aws_sdk_sagemaker_runtime_http2"),
        "aws_sdk_sagemaker_runtime_http2.client": types.SimpleNamespace(AsyncSageMakerRuntimeHTTP2Client=Client),
        "aws_sdk_sagemaker_runtime_http2.config": types.SimpleNamespace(AsyncSageMakerRuntimeHTTP2Config=Config),
        "aws_sdk_sagemaker_runtime_http2.models": types.SimpleNamespace(
            InvokeEndpointWithBidirectionalStreamInput=Shape, RequestPayloadPart=Shape,
            RequestStreamEventPayloadPart=Shape, ResponseStreamEventPayloadPart=ResponseStreamEventPayloadPart),
        "smithy_http": types.ModuleType("smithy_http"),
        "smithy_http.aio": types.ModuleType("smithy_http.aio"),
        "smithy_http.aio.crt": types.SimpleNamespace(AWSCRTHTTPClient=lambda: None),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def options() -> stream.StreamOptions:
    return stream.StreamOptions(aws=AwsOptions(region="us-east-1"), source="-", endpoint_name="asr-demo", url="",
                                speed=0, frame_ms=100, encoding="pcm_s16le", rate=16000, channels=1)


def test_a_stream_that_never_opens_is_an_error_naming_credentials_not_a_silent_hang(monkeypatch, capsys):
    """The SDK (0.12.0), when it finds no credentials, fails in a task of its own and never returns from the call."""
    class IdentityChainError(Exception):
        pass

    IdentityChainError.__module__ = "smithy_aws_core.identity.chain.exceptions"

    async def hang(request):
        async def sign():
            raise IdentityChainError("No credential providers were configured to resolve an identity.")
        hang.task = asyncio.get_running_loop().create_task(sign())
        await asyncio.Event().wait()

    fake_sdk(monkeypatch, hang)
    monkeypatch.setattr(stream, "OPEN_TIMEOUT_S", 0.3)
    with pytest.raises(LaunchError, match=r"endpoint asr-demo did not open within 0.3 s: check that AWS credentials "
                                          r".*sagemaker:InvokeEndpointWithBidirectionalStream"):
        stream._run_sagemaker(options(), {}, iter([b"\0\0"]), stream.Printer(as_json=True))
    del hang.task  # its exception, never retrieved, reaches the loop's handler: one line, not a traceback
    import gc

    gc.collect()
    err = capsys.readouterr().err
    assert "the AWS SDK said: IdentityChainError: No credential providers" in err and "Traceback" not in err


def test_the_sdks_own_errors_become_one_line_with_the_iam_action_on_access_denied(monkeypatch):
    class AccessDeniedException(Exception):
        pass

    AccessDeniedException.__module__ = "aws_sdk_sagemaker_runtime_http2.models"

    async def denied(request):
        assert request.endpoint_name == "asr-demo"
        raise AccessDeniedException("User is not authorized to perform: sagemaker:InvokeEndpointWithBidirectionalStream")

    fake_sdk(monkeypatch, denied)
    with pytest.raises(LaunchError, match="AccessDeniedException: User is not authorized.*the caller needs the IAM "
                                          "action sagemaker:InvokeEndpointWithBidirectionalStream"):
        stream._run_sagemaker(options(), {}, iter([]), stream.Printer(as_json=True))


def test_protocol_openai_turns_audio_into_realtime_events_and_its_events_into_lines(capsys):
    """--protocol openai (docs/streaming.md, Realtime (OpenAI events)): a session.update with server VAD, 16 kHz
    PCM resampled to OpenAI's 24 kHz in base64 append events, a commit and a session.update at the end; deltas
    become the partial, each completed transcript a line, and the second session.updated ends the stream."""
    import base64
    import json

    import numpy as np

    proto = stream.OpenAIProtocol({"type": "settings", "encoding": "pcm_s16le", "sample_rate": 16000, "channels": 2,
                                   "language": "eng"})
    first = json.loads(proto.first())
    assert first["type"] == "session.update"
    inp = first["session"]["audio"]["input"]
    assert inp["format"] == {"type": "audio/pcm", "rate": 24000} and inp["turn_detection"]["type"] == "server_vad"
    assert inp["transcription"] == {"language": "eng"}
    stereo = (np.ones((16000, 2)) * 1000).astype("<i2").tobytes()  # 1 s of two channels at 16 kHz
    sent = json.loads(proto.audio(stereo))
    assert sent["type"] == "input_audio_buffer.append"
    assert 24000 - 1000 < len(base64.b64decode(sent["audio"])) // 2 <= 24000  # mono at 24 kHz
    assert [json.loads(m)["type"] for m in proto.end()] == ["input_audio_buffer.commit", "session.update"]
    printer = stream.Printer(as_json=False)
    for event in ({"type": "session.updated"}, {"type": "conversation.item.input_audio_transcription.delta",
                                                 "item_id": "i1", "delta": "the"},
                  {"type": "conversation.item.input_audio_transcription.completed", "item_id": "i1",
                   "transcript": "the red cat"}):
        shown = proto.translate(event)
        if shown:
            printer.event(shown)
    assert proto.texts == {} and not proto.finished
    proto.ending = True
    assert proto.translate({"type": "error", "error": {"code": "input_audio_buffer_commit_empty"}}) is None
    proto.translate({"type": "session.updated"})
    assert proto.finished and capsys.readouterr().out == "the red cat\n"


def test_protocol_openai_is_refused_where_it_cannot_go():
    ns = stream.argparse.Namespace(source="-", endpoint_name="asr-demo", url=None, speed=1.0, frame_ms=100,
                                   encoding="ogg_opus", rate=16000, channels=1, option=None, json=False,
                                   protocol="openai", local=True, local_gpu=False, region=None, profile=None,
                                   role=None, bucket=None)
    with pytest.raises(LaunchError, match="--endpoint-name .* or --local"):
        stream.StreamOptions.from_args(ns)
    ns.endpoint_name = None
    with pytest.raises(LaunchError, match="ogg_opus is for the native protocol"):
        stream.StreamOptions.from_args(ns)
    ns.encoding = "pcm_s16le"
    opts = stream.StreamOptions.from_args(ns)
    assert opts.protocol == "openai"
    opts.aws = AwsOptions(region="us-east-1")  # not local: an endpoint
    with pytest.raises(LaunchError, match="--protocol openai streams to a local container"):
        stream.run(opts)  # before it reads any audio (the source, "-", is stdin)
