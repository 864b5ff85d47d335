"""`launch invoke --async`: put the recording in S3, call InvokeEndpointAsync, wait for the output or failure object.

SageMaker queues the request, sends the S3 object's bytes to the container's POST /invocations (with the
request's Content-Type), and writes the answer to OutputLocation, or what went wrong to FailureLocation
(https://docs.aws.amazon.com/sagemaker/latest/dg/async-inference-check-predictions.html). This module polls
both objects with HEAD requests, backing off from 1 to 10 s, and prints the transcript, or the failure and
exit status 1. Progress goes to stderr, so stdout holds only the transcript.
"""
from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from . import limits
from .errors import JobFailed, LaunchError

POLL_FIRST_S = 1.0
POLL_MAX_S = 10.0
DEFAULT_TTL_S = 21600  # SageMaker's default RequestTTLSeconds (limits [rt-api])
FAILURE_CHARS = 4000  # how much of a failure object is printed


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def _error_code(exc) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def endpoint_async_config(sm, name: str, region: str) -> dict:
    """The endpoint's AsyncInferenceConfig; refuses an endpoint that is missing, not InService or not async."""
    import botocore.exceptions

    try:
        desc = sm.describe_endpoint(EndpointName=name)
    except botocore.exceptions.ClientError as exc:
        raise LaunchError(f"endpoint {name} not found in {region}: {exc.response['Error'].get('Message', exc)}") from None
    config = desc.get("AsyncInferenceConfig")
    if not config:  # DescribeEndpoint carries it; stand-ins (moto 5.2) only the endpoint config
        try:
            config = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"]).get(
                "AsyncInferenceConfig")
        except botocore.exceptions.ClientError:
            config = None
    if not config:
        raise LaunchError(f"endpoint {name} is not asynchronous: invoke it without --async (real-time and serverless "
                          "endpoints), or deploy one with `launch deploy --async`")
    if desc.get("EndpointStatus") != "InService":
        raise LaunchError(f"endpoint {name} is {desc.get('EndpointStatus')}, not InService: wait for it "
                          "(aws sagemaker wait endpoint-in-service --endpoint-name NAME)")
    return config


def object_size(s3, uri: str) -> int:
    import botocore.exceptions

    bucket, key = split_s3(uri)
    try:
        return s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            raise LaunchError(f"{uri}: no such object") from None
        raise LaunchError(f"cannot read {uri} ({_error_code(exc)}): the identity running the launcher needs "
                          "s3:GetObject on it") from None


def _exists(s3, uri: str) -> bool:
    import botocore.exceptions

    bucket, key = split_s3(uri)
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise LaunchError(f"cannot read {uri} ({_error_code(exc)}): the identity running the launcher needs "
                          "s3:GetObject on the endpoint's output and failure paths") from None


def _read(s3, uri: str) -> bytes:
    bucket, key = split_s3(uri)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


class Progress:
    """One line, rewritten in place on a terminal; elsewhere (logs, CI) a line every 30 s."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last = -1e9

    def show(self, text: str) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write(f"\r{text}\033[K")
            self.stream.flush()
        elif now - self.last >= 30:
            print(text, file=self.stream, flush=True)
            self.last = now

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def invoke(opts, target) -> int:
    """opts: hosting.InvokeOptions with is_async set."""
    session = target.boto_session
    sm = session.client("sagemaker", region_name=target.region)
    s3 = session.client("s3", region_name=target.region)
    runtime = session.client("sagemaker-runtime", region_name=target.region)
    config = endpoint_async_config(sm, opts.endpoint_name, target.region)

    if opts.s3_input:
        input_uri = opts.s3_input
        size = object_size(s3, input_uri)
        if size > limits.ASYNC_MAX_BYTES:
            raise LaunchError(f"{input_uri} is {size / limits.MB:,.0f} MB: asynchronous endpoints take at most "
                              "1 GB (1,024 MB) per request; split the recording")
        if size == 0:
            raise LaunchError(f"{input_uri} is empty")
    else:
        prefix = opts.input_path
        if prefix is None:
            bucket = target.bucket or split_s3(config["OutputConfig"]["S3OutputPath"])[0]
            prefix = f"s3://{bucket}/wav2vec2/async/{opts.endpoint_name}/input/"
        bucket, key_prefix = split_s3(prefix)
        key = f"{key_prefix.rstrip('/') + '/' if key_prefix else ''}{uuid.uuid4().hex[:12]}-{opts.file.name}"
        input_uri = f"s3://{bucket}/{key}"
        print(f"[launch] uploading {opts.file} ({opts.file.stat().st_size / limits.MB:.1f} MB) to {input_uri}",
              file=sys.stderr, flush=True)
        s3.upload_file(str(opts.file), bucket, key)

    request = {"EndpointName": opts.endpoint_name, "InputLocation": input_uri, "ContentType": opts.content_type,
               "Accept": opts.accept, "InvocationTimeoutSeconds": opts.invocation_timeout_s}
    if opts.request_options:
        from .hosting import custom_attributes

        request["CustomAttributes"] = custom_attributes(opts.request_options)
    if opts.request_ttl_s is not None:
        request["RequestTTLSeconds"] = opts.request_ttl_s
    import botocore.exceptions

    try:
        response = runtime.invoke_endpoint_async(**request)
    except botocore.exceptions.ClientError as exc:
        raise LaunchError(f"the endpoint refused the request: {exc}") from None
    output, failure = response["OutputLocation"], response.get("FailureLocation")
    print(f"[launch] request {response.get('InferenceId', '?')} queued; output {output}"
          + (f", failure {failure}" if failure else ""), file=sys.stderr, flush=True)
    if not opts.wait:
        print(output)
        return 0
    ttl = opts.request_ttl_s or DEFAULT_TTL_S
    wait_s = opts.wait_s if opts.wait_s is not None else ttl + opts.invocation_timeout_s + 60
    return _wait(s3, output, failure, wait_s, opts.as_json)


def _wait(s3, output: str, failure: str | None, wait_s: float, as_json: bool) -> int:
    progress = Progress()
    started = time.monotonic()
    delay = POLL_FIRST_S
    try:
        while True:
            if _exists(s3, output):
                progress.done()
                return _print_output(_read(s3, output), as_json)
            if failure and _exists(s3, failure):
                progress.done()
                text = _read(s3, failure).decode(errors="replace").strip()
                raise JobFailed(f"the endpoint failed the request ({failure}): {text[:FAILURE_CHARS]}")
            elapsed = time.monotonic() - started
            if elapsed > wait_s:
                progress.done()
                raise JobFailed(f"no answer after {_clock(elapsed)}: the request may still be queued or running; "
                                f"its transcript will be at {output}")
            progress.show(f"[launch] waiting for the transcript: {_clock(elapsed)} (queued or running)")
            time.sleep(delay)
            delay = min(POLL_MAX_S, delay * 1.5)
    except KeyboardInterrupt:
        progress.done()
        print(f"[launch] stopped waiting; the request goes on and its transcript will be at {output}",
              file=sys.stderr, flush=True)
        return 130


def _print_output(body: bytes, as_json: bool) -> int:
    try:
        answer = json.loads(body)
    except json.JSONDecodeError:
        print(body.decode(errors="replace"))
        return 0
    if as_json or not isinstance(answer, dict) or "text" not in answer:
        print(json.dumps(answer, indent=2))
    else:
        print(answer["text"])
    return 0


def content_type_of(name: str, given: str | None, table: dict[str, str]) -> str:
    import mimetypes

    return given or table.get(Path(name).suffix.lower()) or mimetypes.guess_type(name)[0] or "application/octet-stream"
