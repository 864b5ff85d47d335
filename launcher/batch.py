"""`launch transform`: a batch transform of a prefix or folder of audio files, one file = one record.

Each input file is sent whole (SplitType None) in its own request (BatchStrategy SingleRecord: audio files
cannot be concatenated into one body). MaxConcurrentTransforms and MaxPayloadInMB are left unset unless
given, so SageMaker takes them from the container's GET /execution-parameters. Output: one FILE.out per
input file, under the output path, next to each other, holding that file's JSON answer (or plain text).

On GPU families whose default driver cannot run the images' CUDA 12 torch, the job asks for a machine image with
a newer one (TransformResources.TransformAmiVersion, launcher/limits.py). The job is made with the SDK v3's
sagemaker.core resources (Model.create, TransformJob.create), whose TransformResources carries that field.
Local mode runs the serving image here and sends each file itself (launcher/localmode.py says why).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import aws, hosting, limits, options
from .errors import JobFailed, LaunchError

DEFAULT_INSTANCE = "ml.g5.xlarge"
ACCEPT = ("application/json", "text/plain")
MAX_PAYLOAD_MB = 100  # SageMaker's ceiling for MaxPayloadInMB


def add_parser(sub, parents) -> None:
    p = sub.add_parser(
        "transform", parents=parents, help="transcribe a prefix or folder of audio files (batch transform)",
        description="Run a batch transform of the serving image over every file under --input (one file per "
                    "record); writes FILE.out (the transcript) per input file under --output-path.",
        epilog="example: launcher/launch transform --model-data s3://b/.../model.tar.gz --input s3://b/clips/ "
               "--output-path s3://b/transcripts/")
    p.add_argument("--model-data", required=True, help="model.tar.gz: s3:// URI (local mode: a path)")
    p.add_argument("--image", help="serving image URI (default as for `deploy`)")
    p.add_argument("--input", required=True, help="s3:// prefix or (local mode) folder of audio files")
    p.add_argument("--output-path", help="where the .out files go: s3:// prefix (default s3://BUCKET/wav2vec2/"
                                         "transform/JOB) or, in local mode, a folder (default ./sagemaker-local/"
                                         "transform)")
    p.add_argument("--content-type", default="application/octet-stream",
                   help="Content-Type sent with every file (default application/octet-stream: the server "
                        "detects wav/flac/ogg/mp3 itself)")
    p.add_argument("--accept", choices=ACCEPT, default="application/json", help="answer format (default JSON)")
    p.add_argument("--instance-type", help=f"instance type (default {DEFAULT_INSTANCE})")
    p.add_argument("--instance-count", type=int, default=1, help="instances (default 1)")
    p.add_argument("--max-concurrent", type=int,
                   help="requests in flight per instance (default: the container's /execution-parameters)")
    p.add_argument("--max-payload-mb", type=int,
                   help=f"largest file in MB, up to {MAX_PAYLOAD_MB} (default: the container's /execution-parameters)")
    p.add_argument("--transform-ami-version", metavar="VERSION",
                   help="SageMaker machine image (TransformAmiVersion), i.e. the NVIDIA driver, of a GPU job: "
                        f"{limits.TRANSFORM_AMI} (driver 535; the other documented value, -batch-gpu-470, is too old "
                        "for the images). Default: that one on ml.p3, g4dn, g5, p4d and p4de, whose default driver "
                        "470 cannot run the images' CUDA 12 torch; SageMaker's default elsewhere")
    p.add_argument("--env", action="append", metavar="NAME=VALUE", help="serving setting; repeatable")
    p.add_argument("--job-name", help="transform job name (default wav2vec2-transform-TIMESTAMP)")
    p.add_argument("--no-wait", action="store_true", help="start the job and return")
    p.add_argument("--serving-port", type=int, default=8080, help="local mode: host port of the container (default 8080)")


@dataclass
class TransformOptions:
    aws: aws.AwsOptions
    model_data: str
    image: str | None
    input: str
    output_path: str | None
    content_type: str
    accept: str
    instance_type: str
    instance_count: int
    max_concurrent: int | None
    max_payload_mb: int | None
    env: dict[str, str] = field(default_factory=dict)
    job_name: str | None = None
    wait: bool = True
    serving_port: int = 8080
    ami: limits.AmiChoice = limits.AmiChoice(None, "")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "TransformOptions":
        a = options.aws_options(ns)
        if ns.max_payload_mb is not None and not 1 <= ns.max_payload_mb <= MAX_PAYLOAD_MB:
            raise LaunchError(f"--max-payload-mb must be between 1 and {MAX_PAYLOAD_MB}, got {ns.max_payload_mb}")
        if a.local and ns.instance_count != 1:
            raise LaunchError("local mode transforms with one container: drop --instance-count")
        if ns.max_concurrent is not None:
            options.positive(ns.max_concurrent, "--max-concurrent")
        if not a.local and not options.is_s3(ns.input):
            raise LaunchError(f"--input {ns.input!r}: batch transform reads from S3; upload the folder first "
                              "(aws s3 sync FOLDER s3://BUCKET/PREFIX) or use --local")
        inp = options.location(ns.input, "--input", local=a.local)
        if a.local and not any(p.is_file() for p in Path(inp[len("file://"):]).rglob("*")):
            raise LaunchError(f"--input {ns.input!r} holds no files")
        instance_type = options.instance_type(ns.instance_type, DEFAULT_INSTANCE, local=a.local,
                                              local_type="local_gpu" if a.local_gpu else "local")
        if a.local and ns.transform_ami_version is not None:
            raise LaunchError("--transform-ami-version is an AWS setting: local mode uses this machine's driver")
        ami = limits.AmiChoice(None, "") if a.local else \
            limits.choose_ami(instance_type, ns.transform_ami_version, transform=True)
        out = ns.output_path
        if out is not None:
            out = options.location(out, "--output-path", local=a.local, must_exist=False) if a.local \
                else options.check_s3(out, "--output-path")
        return cls(aws=a, model_data=hosting._model_data(ns.model_data, a.local), image=ns.image, input=inp,
                   output_path=out, content_type=ns.content_type, accept=ns.accept,
                   instance_type=instance_type, instance_count=options.positive(ns.instance_count, "--instance-count"),
                   max_concurrent=ns.max_concurrent, max_payload_mb=ns.max_payload_mb,
                   env=options.pairs(ns.env, "--env", env_names=True), job_name=ns.job_name, wait=not ns.no_wait,
                   serving_port=ns.serving_port, ami=ami)


def run(opts: TransformOptions) -> int:
    target = aws.resolve(opts.aws, need_role=True)
    name = opts.job_name or f"wav2vec2-transform-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    if target.local:
        from . import localmode

        output_path = opts.output_path or f"file://{Path('sagemaker-local/transform').resolve()}"
        out = Path(output_path[len("file://"):])
        out.mkdir(parents=True, exist_ok=True)
        print(f"[launch] transform job {name}: {opts.input} -> {output_path}, 1 x {opts.instance_type}", flush=True)
        localmode.transform(opts, out)
        print(f"[launch] transcripts: {output_path}")
        return 0
    session = aws.sdk_session(target)
    output_path = opts.output_path or f"s3://{aws.bucket(target, session)}/wav2vec2/transform/{name}"
    return _transform(opts, target, name, output_path)


def _transform(opts: TransformOptions, target: aws.Target, name: str, output_path: str) -> int:
    from sagemaker.core.resources import TransformJob
    from sagemaker.core.shapes import (TransformDataSource, TransformInput, TransformOutput, TransformResources,
                                       TransformS3DataSource)

    hosting.create_model(target, opts.image, opts.model_data, opts.env, name)
    image = f"; machine image {opts.ami.version} ({opts.ami.reason})" if opts.ami.version else \
        f"; {opts.ami.reason}" if opts.ami.reason else ""
    print(f"[launch] transform job {name}: {opts.input} -> {output_path}, {opts.instance_count} x "
          f"{opts.instance_type}{image}", flush=True)
    job = TransformJob.create(
        transform_job_name=name, model_name=name, batch_strategy="SingleRecord",
        max_concurrent_transforms=opts.max_concurrent, max_payload_in_mb=opts.max_payload_mb,
        environment=opts.env or None,
        transform_input=TransformInput(
            data_source=TransformDataSource(s3_data_source=TransformS3DataSource(s3_data_type="S3Prefix",
                                                                                 s3_uri=opts.input)),
            content_type=opts.content_type, split_type="None"),
        transform_output=TransformOutput(s3_output_path=output_path, accept=opts.accept),
        transform_resources=TransformResources(instance_type=opts.instance_type, instance_count=opts.instance_count,
                                               transform_ami_version=opts.ami.version),
        session=target.boto_session, region=target.region)
    if opts.wait:
        try:
            job.wait(logs=True)
        except Exception as exc:  # FailedStatusError: the job's FailureReason says why
            job.refresh()
            if job.transform_job_status == "Failed":
                raise JobFailed(f"transform job {name} failed: {job.failure_reason}") from None
            raise
        _delete_model(target, name)  # only needed by this job (a failed job keeps it, for inspection)
    print(f"[launch] transcripts: {output_path}")
    return 0


def _delete_model(target: aws.Target, name: str) -> None:
    """The model was only needed for this job; a failure here must not hide the job's own error."""
    try:
        target.boto_session.client("sagemaker", region_name=target.region).delete_model(ModelName=name)
    except Exception as exc:  # botocore ClientError: already gone, or never created
        print(f"[launch] model {name} not deleted: {exc}")
