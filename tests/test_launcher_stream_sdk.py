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
