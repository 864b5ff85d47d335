"""launch stream to an endpoint with the real bidirectional-stream client (aws-sdk-sagemaker-runtime-http2), in the
launcher's own environment (.venv-launch): the command reaches the SDK's client, which stops at the missing
credentials, and the launcher says so in one line."""
from __future__ import annotations

import importlib.metadata
import struct
import wave

import pytest

from launcher import cli, stream


def test_the_stream_client_is_installed_beside_sdk_v3():
    assert importlib.metadata.version("sagemaker").startswith("3.")
    assert importlib.metadata.version("aws-sdk-sagemaker-runtime-http2") == "0.12.0"


def test_stream_to_an_endpoint_reaches_the_sdk_client_up_to_the_credentials_error(tmp_path, monkeypatch, capsys):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(stream, "OPEN_TIMEOUT_S", 5.0)
    clip = tmp_path / "a.wav"
    with wave.open(str(clip), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(struct.pack("<1600h", *([0] * 1600)))
    code = cli.main(["stream", str(clip), "--endpoint-name", "asr-demo", "--region", "us-east-1", "--speed", "0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "needs the AWS SDK's bidirectional-stream client" not in err  # it is importable here
    # the SDK's own identity resolution failed (its error, or the launcher's timeout naming credentials)
    assert ("credential" in err.lower() or "identity" in err.lower()), err
    assert "Traceback" not in err
