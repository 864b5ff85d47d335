"""`launch deploy | invoke | delete`: a real-time endpoint of the serving image (sagemaker.model.Model)."""
from __future__ import annotations

import argparse
import json
import mimetypes
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import aws, options
from .errors import JobFailed, LaunchError

SERVE_REPOSITORY = "wav2vec2-serve"
DEFAULT_INSTANCE = "ml.g5.xlarge"
# SageMaker's bounds for ContainerStartupHealthCheckTimeoutInSeconds.
STARTUP_TIMEOUT_RANGE_S = (60, 3600)
CONTENT_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg",
                 ".json": "application/json"}
REALTIME_MAX_BYTES = 6 * 1024 * 1024


def _model_data(value: str, local: bool) -> str:
    if options.is_s3(value):
        if local:
            raise LaunchError("--model-data: local mode takes a local model.tar.gz (or file:// URI), not S3")
        return options.check_s3(value, "--model-data")
    path = Path(value[len("file://"):] if value.startswith("file://") else value).expanduser().resolve()
    if not local:
        raise LaunchError(f"--model-data {value!r}: give the s3:// URI of model.tar.gz (`launch train` prints it)")
    if not (path.is_file() and path.name.endswith(".tar.gz")) and not path.is_dir():
        raise LaunchError(f"--model-data {value!r} is neither a model.tar.gz file nor a model folder")
    return f"file://{path}"


def add_deploy_parser(sub, parents) -> None:
    p = sub.add_parser(
        "deploy", parents=parents, help="create a real-time endpoint from a model artifact",
        description="Create a SageMaker model, endpoint config and endpoint (all named --endpoint-name) from a "
                    "model.tar.gz and the serving image. In local mode the endpoint lives while this command "
                    "runs: Ctrl-C (or --local-seconds) stops and removes it.",
        epilog="example: launcher/launch deploy --model-data s3://my-bucket/wav2vec2/output/JOB/output/model.tar.gz "
               "--endpoint-name asr --instance-type ml.g5.xlarge")
    p.add_argument("--model-data", required=True, help="model.tar.gz: s3:// URI (local mode: a path)")
    p.add_argument("--image", help=f"serving image URI (default: ACCOUNT.dkr.ecr.REGION.amazonaws.com/"
                                   f"{SERVE_REPOSITORY}:latest, or {SERVE_REPOSITORY}:latest in local mode)")
    p.add_argument("--endpoint-name", help="name of the endpoint, its config and its model (default wav2vec2-TIMESTAMP)")
    p.add_argument("--instance-type", help=f"instance type (default {DEFAULT_INSTANCE})")
    p.add_argument("--instance-count", type=int, default=1, help="instances behind the endpoint (default 1)")
    p.add_argument("--startup-timeout-s", type=int, default=600,
                   help="seconds the container has to pass /ping after start (60-3600, default 600)")
    p.add_argument("--env", action="append", metavar="NAME=VALUE",
                   help="serving setting, e.g. MODEL_SERVER_WORKERS=2 (README lists them); repeatable")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE", help="tag the model and endpoint; repeatable")
    p.add_argument("--no-wait", action="store_true", help="return once the endpoint is being created (AWS only)")
    p.add_argument("--serving-port", type=int, default=8080, help="local mode: host port of the endpoint (default 8080)")
    p.add_argument("--local-seconds", type=float,
                   help="local mode: keep the endpoint up this long, then remove it (default: until Ctrl-C)")


def add_invoke_parser(sub, parents) -> None:
    p = sub.add_parser("invoke", parents=parents, help="send an audio file to an endpoint, print the transcript",
                       description="Send FILE's bytes to the endpoint and print the transcript (or the whole JSON "
                                   "answer with --json).")
    p.add_argument("file", type=Path, help="an audio file (wav, flac, ogg, mp3) or a JSON request body")
    p.add_argument("--endpoint-name", help="the endpoint (required on AWS; local mode talks to --serving-port)")
    p.add_argument("--content-type", help="Content-Type (default: from the file's suffix, else "
                                          "application/octet-stream)")
    p.add_argument("--json", action="store_true", help="print the full JSON answer, not just the text")
    p.add_argument("--serving-port", type=int, default=8080, help="local mode: port of the local endpoint")


def add_delete_parser(sub, parents) -> None:
    p = sub.add_parser("delete", parents=parents, help="delete an endpoint, its endpoint config and its model(s)",
                       description="Delete the endpoint, then its endpoint config and every model the config names.")
    p.add_argument("--endpoint-name", required=True, help="the endpoint to delete")
    p.add_argument("--keep-model", action="store_true", help="delete endpoint and config only")


@dataclass
class DeployOptions:
    aws: aws.AwsOptions
    model_data: str
    image: str | None
    endpoint_name: str
    instance_type: str
    instance_count: int
    startup_timeout_s: int
    env: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    serving_port: int = 8080
    local_seconds: float | None = None
    wait: bool = True

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "DeployOptions":
        a = options.aws_options(ns)
        lo, hi = STARTUP_TIMEOUT_RANGE_S
        if not lo <= ns.startup_timeout_s <= hi:
            raise LaunchError(f"--startup-timeout-s must be between {lo} and {hi} seconds (SageMaker's limits), "
                              f"got {ns.startup_timeout_s}")
        if ns.local_seconds is not None and not a.local:
            raise LaunchError("--local-seconds only applies with --local")
        if a.local and ns.instance_count != 1:
            raise LaunchError("local mode serves from one container: drop --instance-count")
        if a.local and ns.no_wait:
            raise LaunchError("--no-wait does not apply to local endpoints (they live while `deploy` runs)")
        name = ns.endpoint_name or f"wav2vec2-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        _check_name(name)
        return cls(aws=a, model_data=_model_data(ns.model_data, a.local), image=ns.image, endpoint_name=name,
                   instance_type=options.instance_type(ns.instance_type, DEFAULT_INSTANCE, local=a.local,
                                                       local_type="local_gpu" if a.local_gpu else "local"),
                   instance_count=options.positive(ns.instance_count, "--instance-count"),
                   startup_timeout_s=ns.startup_timeout_s, env=options.pairs(ns.env, "--env", env_names=True),
                   tags=options.pairs(ns.tag, "--tag"), serving_port=ns.serving_port,
                   local_seconds=ns.local_seconds, wait=not ns.no_wait)


def _check_name(name: str) -> None:
    import re

    if not re.match(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$", name):
        raise LaunchError(f"--endpoint-name {name!r}: up to 63 letters, digits and hyphens, starting with a letter "
                          "or digit")


def local_model_copy(model_data: str, work: str) -> str:
    """Local mode extracts a model.tar.gz in its own folder and mounts that whole folder at /opt/ml/model:
    give it a private copy so the user's folder stays as it was and the container sees only the model."""
    path = Path(model_data[len("file://"):])
    if path.is_dir():
        return model_data
    os.chmod(work, 0o755)  # the serving image runs as a non-root user; temporary folders are 0700
    copy = Path(work) / "model.tar.gz"
    shutil.copyfile(path, copy)
    return f"file://{copy}"


def make_model(target: aws.Target, session, image: str | None, model_data: str, env: dict[str, str],
               name: str | None = None):
    from sagemaker.model import Model

    return Model(image_uri=image or target.ecr_image(SERVE_REPOSITORY), model_data=model_data,
                 role=target.role_arn, env=env or None, name=name, sagemaker_session=session)


def deploy(opts: DeployOptions) -> int:
    target = aws.resolve(opts.aws, need_role=True)
    session = aws.sdk_session(target, serving_port=opts.serving_port)
    if target.local:
        with tempfile.TemporaryDirectory(prefix="wav2vec2-model-") as work:
            return _deploy(opts, target, session, local_model_copy(opts.model_data, work))
    return _deploy(opts, target, session, opts.model_data)


class _Stop(Exception):
    """SIGTERM while a local endpoint runs: unwind so that its containers are removed."""


def _raise_stop(*_):
    raise _Stop()


def _deploy(opts: DeployOptions, target: aws.Target, session, model_data: str) -> int:
    model = make_model(target, session, opts.image, model_data, opts.env, name=opts.endpoint_name)
    print(f"[launch] deploying {opts.endpoint_name}: {opts.instance_count} x {opts.instance_type}, image "
          f"{model.image_uri}", flush=True)
    if not target.local:
        model.deploy(initial_instance_count=opts.instance_count, instance_type=opts.instance_type,
                     endpoint_name=opts.endpoint_name, container_startup_health_check_timeout=opts.startup_timeout_s,
                     tags=[{"Key": k, "Value": v} for k, v in opts.tags.items()] or None, wait=opts.wait)
        print(f"[launch] endpoint {opts.endpoint_name} is {'InService' if opts.wait else 'being created'}", flush=True)
        print(f"[launch] try: launcher/launch invoke CLIP.wav --endpoint-name {opts.endpoint_name}")
        print(f"[launch] remove: launcher/launch delete --endpoint-name {opts.endpoint_name}")
        print(opts.endpoint_name)
        return 0
    # Local endpoints live in this process (the SDK runs docker compose from a thread): SIGTERM and Ctrl-C
    # must unwind through `finally` so that the containers go with it, even during start-up.
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        model.deploy(initial_instance_count=1, instance_type=opts.instance_type, endpoint_name=opts.endpoint_name,
                     wait=True)
        print(f"[launch] local endpoint {opts.endpoint_name} on http://localhost:{opts.serving_port} "
              f"({'for %.0f s' % opts.local_seconds if opts.local_seconds else 'until Ctrl-C or SIGTERM'})", flush=True)
        deadline = None if opts.local_seconds is None else time.monotonic() + opts.local_seconds
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
            if not _local_container_alive(opts.endpoint_name):
                raise JobFailed(f"the local serving container of {opts.endpoint_name} exited; its log is above")
    except (_Stop, KeyboardInterrupt):
        print("[launch] stopping the local endpoint", flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # clean-up must not be interrupted in turn
        _delete_local(session, opts.endpoint_name)
    return 0


def _local_container_alive(name: str) -> bool:
    """The SDK runs `docker compose up` for a local endpoint in a thread that ends when the container does."""
    from sagemaker.local.local_session import LocalSagemakerClient

    endpoint = LocalSagemakerClient._endpoints.get(name)
    compose = getattr(getattr(endpoint, "container", None), "container", None)
    return compose is None or compose.is_alive()


def _delete_local(session, name: str) -> None:
    """Local endpoints belong to this process: stop their containers (docker compose down) and forget them."""
    from sagemaker.local.local_session import LocalSagemakerClient

    # The SDK registers the endpoint before it starts the container, so this also stops one still starting.
    client = session.sagemaker_client
    for delete, registry in ((client.delete_endpoint, LocalSagemakerClient._endpoints),
                             (client.delete_endpoint_config, LocalSagemakerClient._endpoint_configs),
                             (client.delete_model, LocalSagemakerClient._models)):
        if name in registry:
            delete(name)
    print(f"[launch] local endpoint {name} removed", flush=True)


@dataclass
class InvokeOptions:
    aws: aws.AwsOptions
    file: Path
    endpoint_name: str | None
    content_type: str
    as_json: bool
    serving_port: int

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "InvokeOptions":
        a = options.aws_options(ns)
        if not ns.file.is_file():
            raise LaunchError(f"{ns.file} is not a file")
        size = ns.file.stat().st_size
        if size == 0:
            raise LaunchError(f"{ns.file} is empty")
        if size > REALTIME_MAX_BYTES and not a.local:
            raise LaunchError(f"{ns.file} is {size / 2**20:.1f} MB: real-time endpoints take at most 6 MB; use "
                              "`launch transform` (batch) or a shorter clip")
        if not a.local and not ns.endpoint_name:
            raise LaunchError("--endpoint-name is required (the name `launch deploy` printed)")
        ctype = ns.content_type or CONTENT_TYPES.get(ns.file.suffix.lower()) \
            or mimetypes.guess_type(ns.file.name)[0] or "application/octet-stream"
        return cls(aws=a, file=ns.file, endpoint_name=ns.endpoint_name, content_type=ctype, as_json=ns.json,
                   serving_port=ns.serving_port)


def invoke(opts: InvokeOptions) -> int:
    target = aws.resolve(opts.aws, need_role=False)
    session = aws.sdk_session(target, serving_port=opts.serving_port)
    import botocore.exceptions

    try:
        response = session.sagemaker_runtime_client.invoke_endpoint(
            EndpointName=opts.endpoint_name or "local", Body=opts.file.read_bytes(),
            ContentType=opts.content_type, Accept="application/json")
    except botocore.exceptions.ClientError as exc:
        raise LaunchError(f"the endpoint refused the request: {exc}") from None
    except Exception as exc:  # local mode: urllib3 errors when nothing listens
        if target.local:
            raise LaunchError(f"no local endpoint answers on port {opts.serving_port} ({type(exc).__name__}): "
                              "start one with `launch deploy --local`") from None
        raise
    body = response["Body"].read()
    # Local mode hands back the raw HTTP response (errors included) instead of raising.
    status = getattr(response["Body"], "status", 200)
    if status >= 400:
        raise LaunchError(f"the endpoint answered {status}: {body.decode(errors='replace')[:500]}")
    try:
        answer = json.loads(body)
    except json.JSONDecodeError:
        print(body.decode(errors="replace"))
        return 0
    if opts.as_json or not isinstance(answer, dict) or "text" not in answer:
        print(json.dumps(answer, indent=2))
    else:
        print(answer["text"])
    return 0


@dataclass
class DeleteOptions:
    aws: aws.AwsOptions
    endpoint_name: str
    keep_model: bool

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "DeleteOptions":
        a = options.aws_options(ns)
        if a.local:
            raise LaunchError("local endpoints live inside their `launch deploy --local` process: stop it with "
                              "Ctrl-C (or SIGTERM) and it removes its containers")
        _check_name(ns.endpoint_name)
        return cls(aws=a, endpoint_name=ns.endpoint_name, keep_model=ns.keep_model)


def delete(opts: DeleteOptions) -> int:
    target = aws.resolve(opts.aws, need_role=False)
    import botocore.exceptions

    sm = target.boto_session.client("sagemaker", region_name=target.region)
    name = opts.endpoint_name
    try:
        config_name = sm.describe_endpoint(EndpointName=name)["EndpointConfigName"]
    except botocore.exceptions.ClientError as exc:
        raise LaunchError(f"endpoint {name} not found in {target.region}: {exc.response['Error']['Message']}") from None
    try:
        models = [v["ModelName"] for v in sm.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]]
    except botocore.exceptions.ClientError:
        models = []  # config already gone
    sm.delete_endpoint(EndpointName=name)
    print(f"[launch] deleted endpoint {name}")
    try:
        sm.delete_endpoint_config(EndpointConfigName=config_name)
        print(f"[launch] deleted endpoint config {config_name}")
    except botocore.exceptions.ClientError as exc:
        print(f"[launch] endpoint config {config_name}: {exc.response['Error']['Message']}")
    if not opts.keep_model:
        for model in models:
            try:
                sm.delete_model(ModelName=model)
                print(f"[launch] deleted model {model}")
            except botocore.exceptions.ClientError as exc:
                print(f"[launch] model {model}: {exc.response['Error']['Message']}")
    return 0
