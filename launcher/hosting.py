"""`launch deploy | invoke | delete`: endpoints of the serving image, made with the SDK v3's sagemaker.core
resources (Model, EndpointConfig, Endpoint: an image-only deploy needs no ModelBuilder) in the three
SageMaker hosting modes: real-time (instances, 6 MB, 60 s), asynchronous (`--async`: requests and answers in
S3, up to 1 GB and an hour each, scales to zero) and serverless (`--serverless`: CPU only, 1-6 GB of memory,
4 MB, 60 s, billed per request). Every limit is checked before any AWS call (launcher/limits.py cites them).

One file because `deploy`, `invoke` and `delete` act on the same endpoint: they share its name rule, its three
hosting modes and their limits (what a serverless or asynchronous endpoint accepts decides what `invoke` may
send; `delete` removes what `deploy` made), and each command's options class sits next to the code that reads
it.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import suggest

from . import asyncinvoke, aws, limits, options, scaling
from .errors import JobFailed, LaunchError

SERVE_REPOSITORY = "wav2vec2-serve"
DEFAULT_INSTANCE = "ml.g5.xlarge"
STARTUP_TIMEOUT_RANGE_S = limits.STARTUP_TIMEOUT_RANGE_S
DEFAULT_STARTUP_TIMEOUT_S = 600
from common.mediatypes import BY_SUFFIX as CONTENT_TYPES  # noqa: E402  (the server's own table: one for both)
REALTIME_MAX_BYTES = limits.REALTIME_MAX_BYTES
DEFAULT_MAX_CONCURRENT_INVOCATIONS = 4  # per instance: each may hold a body of up to 1 GB and its decoded audio
DEFAULT_SERVERLESS_CONCURRENCY = 5
ENDPOINT_POLL_S = 15
METRIC_PUBLISH_FREQUENCIES_S = (10, 30, 60, 120, 180, 240, 300)  # MetricsConfig.MetricPublishFrequencyInSeconds
DEFAULT_METRIC_PUBLISH_FREQUENCY_S = 60

# The serving program's settings (serve/settings.py) that each mode needs; --env values win.
MODE_ENV = {
    # Bodies up to SageMaker's 1 GB, answers within its one-hour invocation limit (limits [async]).
    "async": {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1024", "MODEL_SERVER_TIMEOUT": "3600"},
    # 4 MB bodies, 60 s per call, and one worker with one copy of the model, as AWS recommends (limits [sl]).
    "serverless": {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "4", "MODEL_SERVER_TIMEOUT": "60", "MODEL_SERVER_WORKERS": "1"},
    "realtime": {},
}


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
        "deploy", parents=parents, help="create an endpoint (real-time, --async or --serverless) from a model artifact",
        description="Create a SageMaker model, endpoint config and endpoint (all named --endpoint-name) from a "
                    "model.tar.gz and the serving image: real-time by default (instances, 6 MB and 60 s per "
                    "request), --async (recordings up to 1 GB and an hour, answers in S3, can scale to zero) or "
                    "--serverless (CPU, 1-6 GB of memory, 4 MB and 60 s per request, billed per request). Every "
                    "limit is checked before anything is created. In local mode the endpoint lives while this "
                    "command runs: Ctrl-C (or --local-seconds) stops and removes it.",
        epilog="examples: launcher/launch deploy --model-data s3://b/JOB/output/model.tar.gz --endpoint-name asr | "
               "... --async --autoscale 0:4 | ... --serverless --memory-mb 3072")
    p.add_argument("--model-data", required=True, help="model.tar.gz: s3:// URI (local mode: a path)")
    p.add_argument("--image", help=f"serving image URI (default: ACCOUNT.dkr.ecr.REGION.amazonaws.com/"
                                   f"{SERVE_REPOSITORY}:latest, or {SERVE_REPOSITORY}:latest in local mode)")
    p.add_argument("--endpoint-name", help="name of the endpoint, its config and its model (default wav2vec2-TIMESTAMP)")
    p.add_argument("--instance-type", help=f"instance type (default {DEFAULT_INSTANCE}; not with --serverless)")
    p.add_argument("--instance-count", type=int, default=None, help="instances to start with (default 1)")
    p.add_argument("--startup-timeout-s", type=int, default=None,
                   help=f"seconds the container has to pass /ping after start (60-3600, default "
                        f"{DEFAULT_STARTUP_TIMEOUT_S}; serverless endpoints have a fixed 3 minutes)")
    p.add_argument("--env", action="append", metavar="NAME=VALUE",
                   help="serving setting, e.g. MODEL_SERVER_WORKERS=2 (docs/settings.md lists them); repeatable; wins over "
                        "the settings --async and --serverless set")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE", help="tag the model and endpoint; repeatable")
    p.add_argument("--inference-ami-version", metavar="VERSION",
                   help="SageMaker machine image (InferenceAmiVersion), i.e. the NVIDIA driver, of a GPU endpoint: "
                        f"one of {', '.join(limits.INFERENCE_AMI_VERSIONS)}. Default: "
                        f"{limits.ENDPOINT_AMI} (driver 535) on ml.p3, g4dn, g5, p4d and p4de, whose default "
                        "driver 470 cannot run the images' CUDA 12 torch; SageMaker's default elsewhere")
    p.add_argument("--no-wait", action="store_true", help="return once the endpoint is being created (AWS only)")
    p.add_argument("--metric-publish-frequency-s", type=int, default=None,
                   help="detailed observability (MetricsConfig): SageMaker scrapes the container's GET /metrics and "
                        f"publishes to CloudWatch every N seconds, one of "
                        f"{', '.join(map(str, METRIC_PUBLISH_FREQUENCIES_S))} (default {DEFAULT_METRIC_PUBLISH_FREQUENCY_S})")
    p.add_argument("--no-detailed-metrics", action="store_true",
                   help="turn detailed observability off (EnableDetailedObservability false; SageMaker's standard "
                        "invocation metrics stay)")
    g = p.add_argument_group("asynchronous endpoint (--async)")
    g.add_argument("--async", dest="is_async", action="store_true",
                   help="an asynchronous endpoint: `invoke --async` puts recordings in S3 (up to 1 GB, an hour of "
                        "processing each), answers and failures are written to S3; the server is set to take "
                        "1 GB bodies and answer within an hour")
    g.add_argument("--output-path", help="s3:// prefix for answers (default s3://BUCKET/wav2vec2/async/ENDPOINT/output)")
    g.add_argument("--failure-path",
                   help="s3:// prefix for failures (default s3://BUCKET/wav2vec2/async/ENDPOINT/failure)")
    g.add_argument("--max-concurrent-invocations", type=int, default=None,
                   help=f"requests SageMaker sends to one instance at a time, 1-1000 "
                        f"(default {DEFAULT_MAX_CONCURRENT_INVOCATIONS})")
    g.add_argument("--success-topic", help="SNS topic ARN notified when a request succeeds")
    g.add_argument("--error-topic", help="SNS topic ARN notified when a request fails")
    g = p.add_argument_group("serverless endpoint (--serverless)")
    g.add_argument("--serverless", action="store_true",
                   help="a serverless endpoint: CPU only, no instances to manage, billed per request; 4 MB and "
                        "60 s per request")
    g.add_argument("--memory-mb", type=int, default=None,
                   help="1024, 2048, 3072, 4096, 5120 or 6144 (default: the smallest that holds the model, from "
                        "the size of model.tar.gz)")
    g.add_argument("--max-concurrency", type=int, default=None,
                   help=f"requests served at once, 1-200 (default {DEFAULT_SERVERLESS_CONCURRENCY})")
    g.add_argument("--provisioned-concurrency", type=int, default=None,
                   help="requests kept warm (no cold start), 1..--max-concurrency; billed while the endpoint exists")
    g = p.add_argument_group("autoscaling (real-time and --async)")
    g.add_argument("--autoscale", metavar="MIN:MAX",
                   help="scale between MIN and MAX instances: real-time endpoints on invocations per instance "
                        "(MIN >= 1), async endpoints on the backlog per instance (MIN 0 allowed: no instance, no "
                        "cost, while the queue is empty)")
    g.add_argument("--scale-target", type=float, default=None,
                   help="the target: invocations per instance per minute (real-time, required) or requests in "
                        f"the backlog per instance (async, default {scaling.DEFAULT_ASYNC_BACKLOG_TARGET:g})")
    g = p.add_argument_group("local mode")
    g.add_argument("--serving-port", type=int, default=8080, help="local mode: host port of the endpoint (default 8080)")
    g.add_argument("--local-seconds", type=float,
                   help="local mode: keep the endpoint up this long, then remove it (default: until Ctrl-C)")


def add_invoke_parser(sub, parents) -> None:
    p = sub.add_parser("invoke", parents=parents, help="send an audio file to an endpoint, print the transcript",
                       description="Send FILE to the endpoint and print the transcript (or the whole JSON answer "
                                   "with --json). Real-time endpoints take up to 6 MB, serverless ones 4 MB; "
                                   "--async uploads FILE to S3 (up to 1 GB), queues it and waits for the answer.")
    p.add_argument("file", help="an audio file (wav, flac, ogg, mp3) or a JSON request body; with --async also an "
                                "s3:// URI of one")
    p.add_argument("--endpoint-name", help="the endpoint (required on AWS; local mode talks to --serving-port)")
    p.add_argument("--content-type", help="Content-Type (default: from the file's suffix, else "
                                          "application/octet-stream)")
    p.add_argument("--json", action="store_true", help="print the full JSON answer, not just the text")
    p.add_argument("--option", action="append", metavar="NAME=VALUE",
                   help="a request option (timestamps=true, decoder=beam, hotwords=..., language=fra; docs/requests.md, Request "
                        "options), sent as the CustomAttributes header; repeatable")
    p.add_argument("--accept", default=DEFAULT_ACCEPT,
                   help=f"the answer's media type, sent as Accept (default {DEFAULT_ACCEPT}); an answer that is not "
                        "JSON is printed as it comes")
    p.add_argument("--openai", action="store_true",
                   help="send the OpenAI audio-transcription multipart body (multipart/form-data: file, model and the "
                        "--option values as form fields) instead of the bare audio")
    p.add_argument("--serving-port", type=int, default=8080, help="local mode: port of the local endpoint")
    g = p.add_argument_group("asynchronous endpoints (--async)")
    g.add_argument("--async", dest="is_async", action="store_true",
                   help="InvokeEndpointAsync: upload FILE, queue it, wait for the output or failure object")
    g.add_argument("--input-path", help="s3:// prefix FILE is uploaded under (default s3://BUCKET/wav2vec2/async/"
                                        "ENDPOINT/input/, BUCKET: --bucket, else the endpoint's output bucket)")
    g.add_argument("--invocation-timeout-s", type=int, default=limits.INVOCATION_TIMEOUT_RANGE_S[1],
                   help="seconds the container may take for this request, 1-3600 (default 3600)")
    g.add_argument("--request-ttl-s", type=int, default=None,
                   help="seconds the request may wait in the queue, 60-21600 (default SageMaker's 21600)")
    g.add_argument("--wait-s", type=float, default=None,
                   help="stop waiting after this long (default: queue time-to-live + invocation timeout)")
    g.add_argument("--no-wait", action="store_true", help="print the output location and return")


def add_delete_parser(sub, parents) -> None:
    p = sub.add_parser("delete", parents=parents,
                       help="delete an endpoint and what deploy made for it (config, model, autoscaling)",
                       description="Delete what `launch deploy` created for the endpoint: its scaling policies, the "
                                   "scale-out-from-zero alarm and the registered scalable target, then the endpoint, "
                                   "its endpoint config and every model the config names. Safe to re-run: what is "
                                   "already gone is skipped.")
    p.add_argument("--endpoint-name", required=True, help="the endpoint to delete")
    p.add_argument("--keep-model", action="store_true", help="keep the model(s)")


@dataclass
class AsyncSettings:
    output_path: str | None
    failure_path: str | None
    max_concurrent_invocations: int
    success_topic: str | None = None
    error_topic: str | None = None


@dataclass
class ServerlessSettings:
    memory_mb: int | None  # None: the smallest size that holds the model
    max_concurrency: int
    provisioned_concurrency: int | None = None


SNS_ARN = r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$"


@dataclass
class DeployOptions:
    aws: aws.AwsOptions
    model_data: str
    image: str | None
    endpoint_name: str
    instance_type: str | None
    instance_count: int
    startup_timeout_s: int | None
    env: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    serving_port: int = 8080
    local_seconds: float | None = None
    wait: bool = True
    async_: AsyncSettings | None = None
    serverless: ServerlessSettings | None = None
    autoscale: scaling.Autoscale | None = None
    ami: limits.AmiChoice = limits.AmiChoice(None, "")
    detailed_metrics: bool = True
    metric_publish_frequency_s: int = DEFAULT_METRIC_PUBLISH_FREQUENCY_S

    @property
    def mode(self) -> str:
        return "async" if self.async_ else "serverless" if self.serverless else "realtime"

    @property
    def server_env(self) -> dict[str, str]:
        return {**MODE_ENV[self.mode], **self.env}

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "DeployOptions":
        a = options.aws_options(ns)
        if ns.is_async and ns.serverless:
            raise LaunchError("--async and --serverless exclude each other: pick one hosting mode")
        if a.local and (ns.is_async or ns.serverless):
            raise LaunchError(f"--{'async' if ns.is_async else 'serverless'} is an AWS hosting mode; the SDK's local "
                              "mode runs real-time endpoints only. For a local asynchronous endpoint (S3 and "
                              "SageMaker's queue stood in for) run local_test/async_local.py")
        _refuse_flags(ns, "--async", not ns.is_async, ("output_path", "failure_path", "max_concurrent_invocations",
                                                      "success_topic", "error_topic"))
        _refuse_flags(ns, "--serverless", not ns.serverless,
                      ("memory_mb", "max_concurrency", "provisioned_concurrency"))
        if ns.startup_timeout_s is not None:
            lo, hi = STARTUP_TIMEOUT_RANGE_S
            if not lo <= ns.startup_timeout_s <= hi:
                raise LaunchError(f"--startup-timeout-s must be between {lo} and {hi} seconds (SageMaker's limits), "
                                  f"got {ns.startup_timeout_s}")
        if ns.local_seconds is not None and not a.local:
            raise LaunchError("--local-seconds only applies with --local")
        if a.local and ns.instance_count not in (None, 1):
            raise LaunchError("local mode serves from one container: drop --instance-count")
        if a.local and ns.no_wait:
            raise LaunchError("--no-wait does not apply to local endpoints (they live while `deploy` runs)")
        if a.local and ns.autoscale:
            raise LaunchError("--autoscale is an AWS feature: drop it in local mode")
        name = ns.endpoint_name or f"wav2vec2-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        _check_name(name)
        frequency = ns.metric_publish_frequency_s
        if frequency is not None:
            if ns.no_detailed_metrics:
                raise LaunchError("--metric-publish-frequency-s and --no-detailed-metrics exclude each other")
            if frequency not in METRIC_PUBLISH_FREQUENCIES_S:
                raise LaunchError(f"--metric-publish-frequency-s {frequency}: SageMaker publishes every "
                                  f"{', '.join(map(str, METRIC_PUBLISH_FREQUENCIES_S))} seconds")
        if a.local and (frequency is not None or ns.no_detailed_metrics):
            raise LaunchError("detailed metrics are SageMaker's (CloudWatch): in local mode read "
                              "http://localhost:PORT/metrics directly")
        serverless = _serverless_settings(ns) if ns.serverless else None
        if serverless:
            instance_type, instance_count = None, 1
        else:
            instance_type = options.instance_type(ns.instance_type, DEFAULT_INSTANCE, local=a.local,
                                                  local_type="local_gpu" if a.local_gpu else "local")
            instance_count = options.positive(1 if ns.instance_count is None else ns.instance_count,
                                              "--instance-count")
        autoscale = None
        if ns.autoscale:
            if ns.serverless:
                raise LaunchError("--autoscale does not apply to serverless endpoints: they scale by themselves, up "
                                  "to --max-concurrency requests at once")
            if ns.no_wait:
                raise LaunchError("--autoscale needs the endpoint InService before scaling can be set up: drop "
                                  "--no-wait")
            autoscale = scaling.parse(ns.autoscale, is_async=ns.is_async, target=ns.scale_target,
                                      instance_count=instance_count)
        elif ns.scale_target is not None:
            raise LaunchError("--scale-target only applies with --autoscale MIN:MAX")
        ami = limits.AmiChoice(None, "")
        if ns.inference_ami_version is not None and serverless:
            raise LaunchError("--inference-ami-version does not apply to serverless endpoints: they run on CPUs")
        if ns.inference_ami_version is not None and a.local:
            raise LaunchError("--inference-ami-version is an AWS setting: local mode uses this machine's driver")
        if not serverless and not a.local:
            ami = limits.choose_ami(instance_type, ns.inference_ami_version, transform=False)
        return cls(aws=a, model_data=_model_data(ns.model_data, a.local), image=ns.image, endpoint_name=name,
                   instance_type=instance_type, instance_count=instance_count,
                   startup_timeout_s=None if serverless else (ns.startup_timeout_s or DEFAULT_STARTUP_TIMEOUT_S),
                   env=options.pairs(ns.env, "--env", env_names=True), tags=options.pairs(ns.tag, "--tag"),
                   serving_port=ns.serving_port, local_seconds=ns.local_seconds, wait=not ns.no_wait,
                   async_=_async_settings(ns) if ns.is_async else None, serverless=serverless, autoscale=autoscale,
                   ami=ami, detailed_metrics=not ns.no_detailed_metrics,
                   metric_publish_frequency_s=frequency or DEFAULT_METRIC_PUBLISH_FREQUENCY_S)


def _refuse_flags(ns: argparse.Namespace, mode: str, refuse: bool, names: tuple[str, ...]) -> None:
    given = [n for n in names if getattr(ns, n) is not None]
    if refuse and given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise LaunchError(f"{flags} only {'applies' if len(given) == 1 else 'apply'} with {mode}")


def _async_settings(ns: argparse.Namespace) -> AsyncSettings:
    import re

    for flag, value in (("--output-path", ns.output_path), ("--failure-path", ns.failure_path)):
        if value is not None:
            options.check_s3(value, flag)
    count = DEFAULT_MAX_CONCURRENT_INVOCATIONS if ns.max_concurrent_invocations is None \
        else ns.max_concurrent_invocations
    if not limits.in_range(count, limits.MAX_CONCURRENT_INVOCATIONS_RANGE):
        raise LaunchError(f"--max-concurrent-invocations must be between 1 and 1000 (SageMaker's limits), got {count}")
    for flag, value in (("--success-topic", ns.success_topic), ("--error-topic", ns.error_topic)):
        if value is not None and not re.match(SNS_ARN, value):
            raise LaunchError(f"{flag} {value!r} is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)")
    return AsyncSettings(ns.output_path, ns.failure_path, count, ns.success_topic, ns.error_topic)


def _serverless_settings(ns: argparse.Namespace) -> ServerlessSettings:
    if ns.instance_type:
        if limits.is_accelerated(ns.instance_type):
            raise LaunchError(f"--serverless runs on CPUs only: {ns.instance_type} is a GPU/accelerator instance type. "
                              "Drop --instance-type (serverless endpoints take none), or deploy real-time or --async "
                              "for a GPU")
        raise LaunchError("--serverless endpoints take no --instance-type: SageMaker gives them CPUs in proportion "
                          "to --memory-mb")
    if ns.instance_count not in (None, 1):
        raise LaunchError("--serverless endpoints have no instances: drop --instance-count (--max-concurrency sets "
                          "how many requests run at once)")
    if ns.startup_timeout_s is not None:
        raise LaunchError("--startup-timeout-s does not apply to serverless endpoints: SageMaker gives their "
                          "container a fixed 3 minutes to download the model and pass /ping")
    if ns.memory_mb is not None and ns.memory_mb not in limits.SERVERLESS_MEMORY_MB:
        raise LaunchError(f"--memory-mb {ns.memory_mb}: serverless memory is one of "
                          f"{', '.join(map(str, limits.SERVERLESS_MEMORY_MB))} MB")
    concurrency = DEFAULT_SERVERLESS_CONCURRENCY if ns.max_concurrency is None else ns.max_concurrency
    if not limits.in_range(concurrency, limits.SERVERLESS_CONCURRENCY_RANGE):
        raise LaunchError(f"--max-concurrency must be between 1 and 200 (SageMaker's limits), got {concurrency}")
    provisioned = ns.provisioned_concurrency
    if provisioned is not None and not 1 <= provisioned <= concurrency:
        raise LaunchError(f"--provisioned-concurrency must be between 1 and --max-concurrency ({concurrency}), "
                          f"got {provisioned}")
    return ServerlessSettings(ns.memory_mb, concurrency, provisioned)


def _check_name(name: str) -> None:
    import re

    if not re.match(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$", name):
        raise LaunchError(f"--endpoint-name {name!r}: up to 63 letters, digits and hyphens, starting with a letter "
                          "or digit")


def container(target: aws.Target, image: str | None, model_data: str, env: dict[str, str]):
    from sagemaker.core.shapes import ContainerDefinition

    return ContainerDefinition(image=image or target.ecr_image(SERVE_REPOSITORY), model_data_url=model_data,
                               environment=env or {})


def create_model(target: aws.Target, image: str | None, model_data: str, env: dict[str, str], name: str,
                 tags: dict[str, str] | None = None):
    """CreateModel with the serving image and model.tar.gz, from sagemaker.core shapes, through boto3.
    sagemaker.core's Model.create describes the model after creating it and validates the answer strictly: an
    answer with an empty VpcConfig (moto's, in local_test/async_local.py) fails a model that was created."""
    from sagemaker.core.utils.utils import serialize

    request = {"ModelName": name, "PrimaryContainer": container(target, image, model_data, env),
               "ExecutionRoleArn": target.role_arn}
    if tags:
        request["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
    return target.boto_session.client("sagemaker", region_name=target.region).create_model(**serialize(request))


def metrics_config(opts: "DeployOptions") -> dict:
    """CreateEndpointConfig's MetricsConfig, set explicitly: SageMaker's detailed observability scrapes the
    container's GET /metrics (port 8080) and publishes it to CloudWatch every N seconds; --no-detailed-metrics
    turns it off. A plain request dict: sagemaker-core's serializer drops False values (`if serialize(v)`), so
    MetricsConfig(enable_detailed_observability=False) would reach AWS as {} (and leave it on)."""
    if not opts.detailed_metrics:
        return {"EnableDetailedObservability": False}
    return {"EnableDetailedObservability": True, "MetricPublishFrequencyInSeconds": opts.metric_publish_frequency_s}


# sagemaker-core 2.27.0 serializes ProductionVariantServerlessConfig.memory_size_in_mb as "MemorySizeInMb" (its
# snake-to-Pascal mapping knows only VolumeSizeInGB), which CreateEndpointConfig refuses; EndpointConfig.create
# cannot send a serverless config, so the request sagemaker.core serializes is sent with boto3, that name fixed.
SDK_FIELD_FIXES = {"MemorySizeInMb": "MemorySizeInMB"}


def _fix_names(value):
    if isinstance(value, dict):
        return {SDK_FIELD_FIXES.get(k, k): _fix_names(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fix_names(v) for v in value]
    return value


def create_endpoint_config(target: aws.Target, request: dict, metrics: dict) -> dict:
    """CreateEndpointConfig from sagemaker.core shapes (serialized by sagemaker.core), through boto3."""
    from sagemaker.core.utils.utils import serialize

    body = _fix_names(serialize({k: v for k, v in request.items() if v is not None}))
    body["MetricsConfig"] = metrics
    target.boto_session.client("sagemaker", region_name=target.region).create_endpoint_config(**body)
    return body


def deploy(opts: DeployOptions) -> int:
    target = aws.resolve(opts.aws, need_role=True)
    if target.local:
        from . import localmode

        return localmode.deploy(opts)
    serverless = None
    if opts.serverless:
        # Before anything is created: the memory must hold the model (HeadObject only reads its size).
        serverless = _serverless_config(opts.serverless, target, opts.model_data)
    return _deploy_aws(opts, target, serverless)


def _serverless_config(settings: ServerlessSettings, target: aws.Target, model_data: str):
    """The ProductionVariantServerlessConfig, its memory checked against (or, unset, chosen from) the size of
    model.tar.gz with the serving program's measured needs (limits.serverless_memory_needed_mb)."""
    archive = asyncinvoke.object_size(target.boto_session.client("s3", region_name=target.region), model_data)
    needed = limits.serverless_memory_needed_mb(archive)
    fits = limits.smallest_serverless_memory_mb(needed)
    size = f"{archive / limits.MB:,.0f} MB"
    if fits is None:
        raise LaunchError(f"the model ({size} model.tar.gz) needs about {needed:,} MB to serve, more than "
                          "serverless endpoints' 6,144 MB: deploy it real-time or --async")
    memory = settings.memory_mb or fits
    if memory < needed:
        raise LaunchError(f"--memory-mb {memory} is too small for this model ({size} model.tar.gz needs about "
                          f"{needed:,} MB to serve a 4 MB request): use --memory-mb {fits}")
    from sagemaker.core.shapes import ProductionVariantServerlessConfig

    print(f"[launch] serverless memory {memory} MB (the model needs about {needed:,} MB)", flush=True)
    return ProductionVariantServerlessConfig(memory_size_in_mb=memory, max_concurrency=settings.max_concurrency,
                                             provisioned_concurrency=settings.provisioned_concurrency)


def _async_config(settings: AsyncSettings, target: aws.Target, session, name: str):
    from sagemaker.core.shapes import (AsyncInferenceClientConfig, AsyncInferenceConfig,
                                       AsyncInferenceNotificationConfig, AsyncInferenceOutputConfig)

    base = None
    if settings.output_path is None or settings.failure_path is None:
        base = f"s3://{aws.bucket(target, session)}/wav2vec2/async/{name}"
    notification = {k: v for k, v in (("success_topic", settings.success_topic),
                                      ("error_topic", settings.error_topic)) if v}
    return AsyncInferenceConfig(
        output_config=AsyncInferenceOutputConfig(
            s3_output_path=settings.output_path or f"{base}/output",
            s3_failure_path=settings.failure_path or f"{base}/failure",
            notification_config=AsyncInferenceNotificationConfig(**notification) if notification else None),
        client_config=AsyncInferenceClientConfig(
            max_concurrent_invocations_per_instance=settings.max_concurrent_invocations))


def _deploy_aws(opts: DeployOptions, target: aws.Target, serverless) -> int:
    from sagemaker.core.shapes import ProductionVariant, Tag
    from sagemaker.core.utils.utils import serialize

    name = opts.endpoint_name
    kind = {"async": "asynchronous", "serverless": "serverless", "realtime": "real-time"}[opts.mode]
    where = "serverless" if serverless else f"{opts.instance_count} x {opts.instance_type}"
    image_uri = opts.image or target.ecr_image(SERVE_REPOSITORY)
    image = f"; machine image {opts.ami.version} ({opts.ami.reason})" if opts.ami.version else \
        f"; {opts.ami.reason}" if opts.ami.reason else ""
    print(f"[launch] deploying {kind} endpoint {name}: {where}, image {image_uri}{image}", flush=True)
    async_config = _async_config(opts.async_, target, aws.sdk_session(target), name) if opts.async_ else None
    tags = [Tag(key=k, value=v) for k, v in opts.tags.items()] or None
    create_model(target, opts.image, opts.model_data, opts.server_env, name, opts.tags)
    if serverless:
        variant = ProductionVariant(variant_name=scaling.VARIANT, model_name=name, initial_variant_weight=1,
                                    serverless_config=serverless)
    else:
        variant = ProductionVariant(variant_name=scaling.VARIANT, model_name=name, initial_variant_weight=1,
                                    initial_instance_count=opts.instance_count, instance_type=opts.instance_type,
                                    container_startup_health_check_timeout_in_seconds=opts.startup_timeout_s,
                                    inference_ami_version=opts.ami.version)
    create_endpoint_config(target, {"EndpointConfigName": name, "ProductionVariants": [variant],
                                    "AsyncInferenceConfig": async_config, "Tags": tags},
                           metrics=metrics_config(opts))
    # CreateEndpoint through boto3, as CreateModel: Endpoint.create's strict read-back fails an endpoint that was
    # created when the answer holds an empty DataCaptureConfig (moto's).
    request = {"EndpointName": name, "EndpointConfigName": name}
    if tags:
        request["Tags"] = serialize(tags)
    target.boto_session.client("sagemaker", region_name=target.region).create_endpoint(**request)
    if async_config:
        out = async_config.output_config
        print(f"[launch] answers go to {out.s3_output_path}, failures to {out.s3_failure_path}", flush=True)
    metrics = (f"every {opts.metric_publish_frequency_s} s" if opts.detailed_metrics else "off")
    print(f"[launch] detailed metrics (the container's /metrics, to CloudWatch): {metrics}", flush=True)
    if not opts.wait:
        print(f"[launch] endpoint {name} is being created")
    else:
        wait_in_service(target, name)
        if opts.autoscale:
            scaling.apply(target.boto_session, target.region, name, opts.autoscale, is_async=bool(opts.async_))
    flag = " --async" if opts.async_ else ""
    print(f"[launch] try: launcher/launch invoke{flag} CLIP.wav --endpoint-name {name}")
    print(f"[launch] remove: launcher/launch delete --endpoint-name {name}")
    print(name)
    return 0


def wait_in_service(target: aws.Target, name: str) -> None:
    """Poll DescribeEndpoint until InService (a line a minute meanwhile); Failed ends with its reason."""
    sm = target.boto_session.client("sagemaker", region_name=target.region)
    started = time.monotonic()
    last_line = -60.0
    while True:
        desc = sm.describe_endpoint(EndpointName=name)
        status = desc["EndpointStatus"]
        if status == "InService":
            print(f"[launch] endpoint {name} is InService", flush=True)
            return
        if status in ("Failed", "OutOfService", "Deleting"):
            raise JobFailed(f"endpoint {name} is {status}: {desc.get('FailureReason', 'no reason given')}")
        elapsed = time.monotonic() - started
        if elapsed - last_line >= 60:
            print(f"[launch] endpoint {name}: {status} ({elapsed / 60:.0f} min)", flush=True)
            last_line = elapsed
        time.sleep(ENDPOINT_POLL_S)


@dataclass
class InvokeOptions:
    aws: aws.AwsOptions
    file: Path | None
    endpoint_name: str | None
    content_type: str
    as_json: bool
    serving_port: int
    is_async: bool = False
    s3_input: str | None = None
    input_path: str | None = None
    invocation_timeout_s: int = limits.INVOCATION_TIMEOUT_RANGE_S[1]
    request_ttl_s: int | None = None
    wait_s: float | None = None
    wait: bool = True
    request_options: dict[str, str] = field(default_factory=dict)
    accept: str = "application/json"
    openai: bool = False

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "InvokeOptions":
        opts = cls._from_args(ns)
        opts.request_options = request_options(ns.option)
        opts.accept = _media_type(ns.accept, "--accept", ACCEPT_TYPES)
        opts.openai = ns.openai
        if ns.openai and opts.is_async:
            raise LaunchError("--openai is a real-time request body: drop --async")
        if ns.openai and ns.content_type:
            raise LaunchError("--openai sends multipart/form-data: drop --content-type")
        if ns.content_type:
            _media_type(ns.content_type, "--content-type", set(CONTENT_TYPES.values()) | {"application/octet-stream"})
        return opts

    @classmethod
    def _from_args(cls, ns: argparse.Namespace) -> "InvokeOptions":
        a = options.aws_options(ns)
        if not ns.is_async:
            given = [f for f, v in (("--input-path", ns.input_path), ("--request-ttl-s", ns.request_ttl_s),
                                    ("--wait-s", ns.wait_s)) if v is not None] + (["--no-wait"] if ns.no_wait else [])
            if given or ns.invocation_timeout_s != limits.INVOCATION_TIMEOUT_RANGE_S[1]:
                raise LaunchError(f"{', '.join(given) or '--invocation-timeout-s'} only applies with --async")
            return cls._sync(ns, a)
        if a.local:
            raise LaunchError("--async needs an asynchronous endpoint on AWS; for a local one (S3 and SageMaker's "
                              "queue stood in for) run local_test/async_local.py")
        if not ns.endpoint_name:
            raise LaunchError("--endpoint-name is required (the name `launch deploy --async` printed)")
        if not limits.in_range(ns.invocation_timeout_s, limits.INVOCATION_TIMEOUT_RANGE_S):
            raise LaunchError(f"--invocation-timeout-s must be between 1 and 3600 seconds (SageMaker's limits), "
                              f"got {ns.invocation_timeout_s}")
        if ns.request_ttl_s is not None and not limits.in_range(ns.request_ttl_s, limits.REQUEST_TTL_RANGE_S):
            raise LaunchError(f"--request-ttl-s must be between 60 and 21600 seconds (SageMaker's limits), "
                              f"got {ns.request_ttl_s}")
        if ns.wait_s is not None and ns.wait_s <= 0:
            raise LaunchError(f"--wait-s must be positive, got {ns.wait_s}")
        if ns.input_path is not None:
            options.check_s3(ns.input_path, "--input-path")
        ctype = asyncinvoke.content_type_of(ns.file, ns.content_type, CONTENT_TYPES)
        common = dict(aws=a, endpoint_name=ns.endpoint_name, content_type=ctype, as_json=ns.json,
                      serving_port=ns.serving_port, is_async=True, input_path=ns.input_path,
                      invocation_timeout_s=ns.invocation_timeout_s, request_ttl_s=ns.request_ttl_s, wait_s=ns.wait_s,
                      wait=not ns.no_wait)
        if options.is_s3(ns.file):
            if ns.input_path is not None:
                raise LaunchError("--input-path is where FILE is uploaded: drop it when FILE is already in S3")
            return cls(file=None, s3_input=options.check_s3(ns.file, "FILE"), **common)
        path = _local_file(ns.file)
        size = path.stat().st_size
        if size > limits.ASYNC_MAX_BYTES:
            raise LaunchError(f"{path} is {size / limits.MB:,.0f} MB: asynchronous endpoints take at most 1 GB "
                              "(1,024 MB) per request; split the recording")
        return cls(file=path, **common)

    @classmethod
    def _sync(cls, ns: argparse.Namespace, a: aws.AwsOptions) -> "InvokeOptions":
        if options.is_s3(ns.file):
            raise LaunchError("an s3:// FILE needs --async (real-time and serverless endpoints take the bytes)")
        path = _local_file(ns.file)
        size = path.stat().st_size
        if size > REALTIME_MAX_BYTES and not a.local:
            raise LaunchError(f"{path} is {size / limits.MB:.1f} MB: real-time endpoints take at most 6 MB (serverless "
                              "ones 4 MB); use `invoke --async` on an endpoint deployed with --async (up to 1 GB), or "
                              "`launch transform` (batch)")
        if not a.local and not ns.endpoint_name:
            raise LaunchError("--endpoint-name is required (the name `launch deploy` printed)")
        return cls(aws=a, file=path, endpoint_name=ns.endpoint_name,
                   content_type=asyncinvoke.content_type_of(path.name, ns.content_type, CONTENT_TYPES),
                   as_json=ns.json, serving_port=ns.serving_port)


DEFAULT_ACCEPT = "application/json"
# Answer formats the launcher knows the name of, for corrections; others pass if they are type/subtype.
ACCEPT_TYPES = {"application/json", "text/plain", "text/vtt", "application/x-subrip", "application/jsonlines", "*/*"}
MEDIA_TYPE = r"^[a-z0-9][\w.+-]*/[\w.+*-]+(\s*;.*)?$"


def _media_type(value: str, flag: str, known: set[str]) -> str:
    import re

    if re.match(MEDIA_TYPE, value.strip().lower()):
        return value.strip()
    raise LaunchError(f"{flag} {value!r} is not a media type like type/subtype; {suggest.did_you_mean(value, known)}")


def request_options(items: list[str] | None) -> dict[str, str]:
    """--option NAME=VALUE pairs, names checked against the serving program's option table when it can be read
    here (serve/options.py imports only numpy and the standard library)."""
    pairs = options.pairs(items, "--option")
    try:
        from serve.options import NAMES as valid
    except ImportError:  # a launcher checkout without serve/: the server checks them (400 naming the option)
        valid = None
    for name in pairs:
        if valid is not None and name not in valid:
            raise LaunchError(f"--option {name}: not a request option of the serving program; "
                              f"{suggest.did_you_mean(name, valid, where='docs/requests.md, Request options')}")
    return pairs


def custom_attributes(pairs: dict[str, str]) -> str | None:
    """The X-Amzn-SageMaker-Custom-Attributes value serve/options.py reads: name=value pairs joined by ';',
    values percent-encoded (a ';' or '&' inside a value stays one value)."""
    import urllib.parse

    if not pairs:
        return None
    return ";".join(f"{k}={urllib.parse.quote(v, safe=',')}" for k, v in pairs.items())


def openai_body(path: Path, pairs: dict[str, str]) -> tuple[bytes, str]:
    """The OpenAI audio-transcription request (POST /v1/audio/transcriptions): multipart/form-data with the
    audio as `file`, `model`, and each option as a form field. Returns (body, Content-Type)."""
    import uuid

    boundary = f"wav2vec2-{uuid.uuid4().hex}"
    parts = []
    for name, value in {"model": "wav2vec2", **pairs}.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    ctype = asyncinvoke.content_type_of(path.name, None, CONTENT_TYPES)
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
                 f"Content-Type: {ctype}\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _local_file(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise LaunchError(f"{value} is not a file")
    if path.stat().st_size == 0:
        raise LaunchError(f"{value} is empty")
    return path


def invoke(opts: InvokeOptions) -> int:
    target = aws.resolve(opts.aws, need_role=False)
    if opts.is_async:
        return asyncinvoke.invoke(opts, target)
    if not target.local and opts.file.stat().st_size > limits.SERVERLESS_MAX_BYTES:
        _refuse_if_serverless(target, opts.endpoint_name, opts.file)
    if opts.openai:
        body, ctype = openai_body(opts.file, opts.request_options)
        attributes = None  # the options are form fields
    else:
        body, ctype = opts.file.read_bytes(), opts.content_type
        attributes = custom_attributes(opts.request_options)
    if target.local:
        from . import localmode

        status, answer = localmode.invoke(opts.serving_port, body, ctype, opts.accept, attributes)
        if status >= 400:
            raise LaunchError(f"the endpoint answered {status}: {answer.decode(errors='replace')[:500]}")
        return asyncinvoke._print_output(answer, opts.as_json)
    import botocore.exceptions

    runtime = target.boto_session.client("sagemaker-runtime", region_name=target.region)
    request = {"EndpointName": opts.endpoint_name, "Body": body, "ContentType": ctype, "Accept": opts.accept}
    if attributes:
        request["CustomAttributes"] = attributes
    try:
        response = runtime.invoke_endpoint(**request)
    except botocore.exceptions.ClientError as exc:
        raise LaunchError(f"the endpoint refused the request: {exc}") from None
    return asyncinvoke._print_output(response["Body"].read(), opts.as_json)


def _refuse_if_serverless(target: aws.Target, name: str, file: Path) -> None:
    """A body between 4 and 6 MB: refused here if the endpoint is serverless (one DescribeEndpoint; when that is
    not allowed, the request goes and SageMaker answers)."""
    import botocore.exceptions

    sm = target.boto_session.client("sagemaker", region_name=target.region)
    try:
        variants = sm.describe_endpoint(EndpointName=name).get("ProductionVariants", [])
    except botocore.exceptions.ClientError:
        return
    if any("CurrentServerlessConfig" in v or "DesiredServerlessConfig" in v for v in variants):
        raise LaunchError(f"{file} is {file.stat().st_size / limits.MB:.1f} MB: serverless endpoints take at most 4 MB "
                          "per request; use a shorter clip or compressed audio (FLAC), or an --async endpoint")


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


def _missing(exc) -> bool:
    """SageMaker answers ValidationException "Could not find ..." for names that do not exist."""
    error = exc.response.get("Error", {})
    code, message = error.get("Code", ""), error.get("Message", "").lower()
    return code == "ResourceNotFound" or (code == "ValidationException" and
                                           ("could not find" in message or "not found" in message))


def delete(opts: DeleteOptions) -> int:
    """Everything deploy made for the endpoint, scaling first (as AWS asks before an endpoint goes), then the
    endpoint, its config and its models. Names come from the endpoint; when the endpoint is already gone, from
    deploy's naming (config and model are named like the endpoint), so an interrupted delete can be re-run."""
    target = aws.resolve(opts.aws, need_role=False)
    import botocore.exceptions

    sm = target.boto_session.client("sagemaker", region_name=target.region)
    name = opts.endpoint_name
    try:
        endpoint = sm.describe_endpoint(EndpointName=name)
    except botocore.exceptions.ClientError as exc:
        if not _missing(exc):
            raise
        endpoint = None
    config_name = endpoint["EndpointConfigName"] if endpoint else name
    try:
        config = sm.describe_endpoint_config(EndpointConfigName=config_name)
    except botocore.exceptions.ClientError as exc:
        if not _missing(exc):
            raise
        config = None
    variants = [v["VariantName"] for v in (config or endpoint or {}).get("ProductionVariants", [])] or [scaling.VARIANT]
    scaling.remove(target.boto_session, target.region, name, variants)
    found = False
    if endpoint:
        sm.delete_endpoint(EndpointName=name)
        print(f"[launch] deleted endpoint {name}")
        found = True
    if config:
        sm.delete_endpoint_config(EndpointConfigName=config_name)
        print(f"[launch] deleted endpoint config {config_name}")
        found = True
    models = [v["ModelName"] for v in config["ProductionVariants"]] if config else [name]
    if not opts.keep_model:
        for model in models:
            try:
                if not config:  # the model deploy named like the endpoint, if an earlier delete left it
                    sm.describe_model(ModelName=model)
                sm.delete_model(ModelName=model)
                print(f"[launch] deleted model {model}")
                found = True
            except botocore.exceptions.ClientError as exc:
                if not _missing(exc):
                    raise
    if not found:
        print(f"[launch] nothing of {name} is left in {target.region}")
    return 0
