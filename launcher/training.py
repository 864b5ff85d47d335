"""`launch train`: a SageMaker training job of the training image, with the SDK v3's ModelTrainer
(sagemaker.train: Compute, InputData, StoppingCondition, OutputDataConfig, CheckpointConfig for spot,
TensorBoardOutputConfig), or its local container mode (`--local`: docker compose, one container per host).

The image is a bring-your-own container that starts torch.distributed itself from resourceconfig.json, so the
SDK's Torchrun driver, which runs a `source_code` entry script inside the SDK's own launcher, is not used: a
job of several instances is one distributed run all the same (docs/sagemaker.md).
ModelTrainer names a job BASE-TIMESTAMP; to keep `--job-name` exact, the request ModelTrainer builds
(ModelTrainer._create_training_job_args, an SDK internal) is sent with that name through
sagemaker.core.resources.TrainingJob.create, as ModelTrainer.train itself does.

One file because `launch train` builds one request for both targets: the options and their checks, the
ModelTrainer request for SageMaker and its local (docker compose) run all read the same `TrainOptions`, and the
local run's artifact and failure readers serve `_run_local` only.
"""
from __future__ import annotations

import argparse
import json
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import suggest

from . import aws, options
from .errors import JobFailed, LaunchError
from .metrics import metric_definitions

TRAIN_REPOSITORY = "wav2vec2-train"
DEFAULT_INSTANCE = "ml.g5.xlarge"
CHANNELS = ("train", "test", "model", "vocab", "lm")
INPUT_MODES = ("File", "FastFile")


def add_parser(sub, parents) -> None:
    p = sub.add_parser(
        "train", parents=parents, help="run a training job of the training image",
        description="Run a SageMaker training job of the training image; streams its log and prints the "
                    "model artifact URI (model.tar.gz), which `launch deploy --model-data` takes.",
        epilog="example: launcher/launch train --channel train=s3://my-bucket/speech/train "
               "--hp max_steps=2000 --hp learning_rate=1e-4 --instance-type ml.g5.xlarge")
    p.add_argument("--image", help=f"training image URI (default: ACCOUNT.dkr.ecr.REGION.amazonaws.com/"
                                   f"{TRAIN_REPOSITORY}:latest, or {TRAIN_REPOSITORY}:latest in local mode)")
    p.add_argument("--channel", action="append", metavar="NAME=LOCATION", required=True,
                   help=f"an input channel ({', '.join(CHANNELS)}): an s3:// prefix or a local folder (uploaded "
                        "to the bucket first; used in place in local mode). Repeat for each channel; `train` is "
                        "required")
    p.add_argument("--hp", action="append", metavar="NAME=VALUE", dest="hyperparameters",
                   help="a hyperparameter of the training program (docs/hyperparameters.md lists them); repeatable")
    p.add_argument("--hyperparameters-file", type=Path, help="a JSON object of hyperparameters (--hp wins)")
    p.add_argument("--instance-type", help=f"training instance type (default {DEFAULT_INSTANCE})")
    p.add_argument("--instance-count", type=int, default=1,
                   help="number of instances; more than 1 runs one torch.distributed job across them")
    p.add_argument("--volume-size-gb", type=int, default=50, help="EBS volume per instance (default 50)")
    p.add_argument("--max-run-s", type=int, default=24 * 3600, help="stop the job after this long (default 86400)")
    p.add_argument("--input-mode", choices=INPUT_MODES, default="File",
                   help="File copies channels before start; FastFile streams them from S3 (default File)")
    p.add_argument("--spot", action="store_true", help="use managed spot capacity (needs --max-wait-s; "
                                                       "checkpoints go to --checkpoint-s3-uri)")
    p.add_argument("--max-wait-s", type=int, help="spot: give up after this long, waiting included (>= --max-run-s)")
    p.add_argument("--checkpoint-s3-uri", help="where /opt/ml/checkpoints is synced (default with --spot: "
                                               "OUTPUT_PATH/JOB_NAME/checkpoints)")
    p.add_argument("--output-path", help="where model.tar.gz goes: s3:// prefix (default s3://BUCKET/wav2vec2/"
                                         "output) or, in local mode, a folder (default ./sagemaker-local/output)")
    p.add_argument("--tensorboard", metavar="S3URI",
                   help="sync the TensorBoard event files the training program writes to /opt/ml/output/tensorboard "
                        "(hyperparameter report_to=tensorboard) to this s3:// prefix while the job runs")
    p.add_argument("--env", action="append", metavar="NAME=VALUE", help="environment variable for the container")
    p.add_argument("--job-name", help="training job name (default wav2vec2-train-TIMESTAMP)")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE", help="tag the job; repeatable")
    p.add_argument("--no-wait", action="store_true", help="start the job and return without streaming its log")
    p.add_argument("--dry-run", action="store_true",
                   help="print the job settings (with the metric definitions) as JSON; the arguments and "
                        "hyperparameters are checked, nothing is created")


@dataclass
class TrainOptions:
    aws: aws.AwsOptions
    channels: dict[str, str]
    hyperparameters: dict[str, str]
    image: str | None
    instance_type: str | None
    instance_count: int
    volume_size_gb: int
    max_run_s: int
    input_mode: str
    spot: bool
    max_wait_s: int | None
    checkpoint_s3_uri: str | None
    output_path: str | None
    tensorboard: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    job_name: str | None = None
    wait: bool = True
    dry_run: bool = False

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "TrainOptions":
        aws_opts = options.aws_options(ns)
        channels = options.pairs(ns.channel, "--channel")
        for name in channels:
            if name not in CHANNELS:
                raise LaunchError(f"--channel {name}: not a channel the training program reads; "
                                  f"{suggest.did_you_mean(name, CHANNELS)} (channels: {', '.join(CHANNELS)})")
        if "train" not in channels:
            given = f" (given: {', '.join(channels)})" if channels else ""
            raise LaunchError(f"--channel train=LOCATION is required (the audio and transcripts to train on){given}")
        channels = {k: options.location(v, f"--channel {k}=", local=aws_opts.local) for k, v in channels.items()}
        for name, loc in channels.items():
            if not options.is_s3(loc):
                check_channel_folder(name, Path(loc[len("file://"):] if loc.startswith("file://") else loc))
        hps: dict[str, str] = {}
        if ns.hyperparameters_file:
            try:
                loaded = json.loads(ns.hyperparameters_file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise LaunchError(f"--hyperparameters-file {ns.hyperparameters_file}: {exc}") from None
            if not isinstance(loaded, dict):
                raise LaunchError(f"--hyperparameters-file {ns.hyperparameters_file} must hold a JSON object")
            hps.update({str(k): str(v) for k, v in loaded.items()})
        hps.update(options.pairs(ns.hyperparameters, "--hp"))
        check_hyperparameters(hps)
        options.positive(ns.instance_count, "--instance-count")
        options.positive(ns.volume_size_gb, "--volume-size-gb")
        options.positive(ns.max_run_s, "--max-run-s")
        if aws_opts.local_gpu and ns.instance_count > 1:
            raise LaunchError("the SDK's local mode runs several hosts on CPU only: use --local, or one --local-gpu host")
        if aws_opts.local and ns.spot:
            raise LaunchError("--spot is an AWS feature: drop it in local mode")
        if ns.spot and ns.max_wait_s is None:
            raise LaunchError("--spot needs --max-wait-s (how long to wait for capacity plus --max-run-s)")
        if ns.max_wait_s is not None:
            if not ns.spot:
                raise LaunchError("--max-wait-s only applies to --spot jobs")
            if ns.max_wait_s < ns.max_run_s:
                raise LaunchError(f"--max-wait-s ({ns.max_wait_s}) must be >= --max-run-s ({ns.max_run_s})")
        if ns.checkpoint_s3_uri:
            if aws_opts.local:
                raise LaunchError("--checkpoint-s3-uri is an AWS feature: drop it in local mode")
            options.check_s3(ns.checkpoint_s3_uri, "--checkpoint-s3-uri")
        if ns.tensorboard is not None:
            if aws_opts.local:
                raise LaunchError("--tensorboard is an AWS feature (SageMaker syncs the event files to S3): in local "
                                  "mode the event files are in the job's output.tar.gz")
            options.check_s3(ns.tensorboard, "--tensorboard")
        output_path = ns.output_path
        if output_path is not None:
            if aws_opts.local:
                output_path = options.location(output_path, "--output-path", local=True, must_exist=False)
            else:
                options.check_s3(output_path, "--output-path")
        instance_type = options.instance_type(ns.instance_type, DEFAULT_INSTANCE, local=aws_opts.local,
                                              local_type="local_gpu" if aws_opts.local_gpu else "local")
        return cls(aws=aws_opts, channels=channels, hyperparameters=hps, image=ns.image, instance_type=instance_type,
                   instance_count=ns.instance_count, volume_size_gb=ns.volume_size_gb, max_run_s=ns.max_run_s,
                   input_mode=ns.input_mode, spot=ns.spot, max_wait_s=ns.max_wait_s,
                   checkpoint_s3_uri=ns.checkpoint_s3_uri, output_path=output_path, tensorboard=ns.tensorboard,
                   env=options.pairs(ns.env, "--env", env_names=True), tags=options.pairs(ns.tag, "--tag"),
                   job_name=ns.job_name, wait=not ns.no_wait, dry_run=ns.dry_run)


def check_channel_folder(name: str, folder: Path) -> None:
    """A folder that holds only sub-folders named like channels (a dataset's root: train/, test/, or a
    misspelled training/) is refused, naming what is there and the flags that were meant."""
    entries = list(folder.iterdir())
    if any(e.is_file() for e in entries):
        return
    subfolders = sorted(e.name for e in entries if e.is_dir())
    meant = {sub: near[0] for sub in subfolders if (near := suggest.closest(sub, CHANNELS, n=1))}
    if meant:
        flags = " ".join(f"--channel {c}={folder / sub}" for sub, c in meant.items())
        raise LaunchError(f"--channel {name}={folder}: it holds no files, only the folders {', '.join(subfolders)}; "
                          f"did you mean {flags}?")


def check_hyperparameters(hps: dict[str, str]) -> None:
    """The training program's own parser (train/hyperparameters.py, no torch import), so that a typo or a bad
    value fails here, in a second, with the message the job would have failed with after its instance started."""
    from common.settings import unknown_name
    from train.failure import TrainingError
    from train.hyperparameters import RESERVED_PREFIXES, SPECS, parse

    for name in hps:
        if name not in SPECS and not name.startswith(RESERVED_PREFIXES):
            raise LaunchError(unknown_name("hyperparameter", name, SPECS, "docs/hyperparameters.md lists them")
                              + " (checked with the training program's parser; nothing was created)")
    try:
        parse(hps)
    except TrainingError as exc:
        raise LaunchError(f"{exc} (checked with the training program's parser; nothing was created)") from None


def job_name(base: str = TRAIN_REPOSITORY) -> str:
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


PLACEHOLDER_ACCOUNT = "000000000000"


def trainer(opts: TrainOptions, target: aws.Target, session, name: str, output_path: str):
    """The ModelTrainer of this job (SDK v3). Local mode: its local container mode, no session needed."""
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import (CheckpointConfig, Compute, MetricDefinition, OutputDataConfig,
                                         StoppingCondition, Tag, TensorBoardOutputConfig)
    from sagemaker.train.model_trainer import Mode

    checkpoint = opts.checkpoint_s3_uri or (f"{output_path}/{name}/checkpoints" if opts.spot else None)
    model_trainer = ModelTrainer(
        training_mode=Mode.LOCAL_CONTAINER if target.local else Mode.SAGEMAKER_TRAINING_JOB,
        sagemaker_session=None if target.local else session, role=target.role_arn,
        base_job_name=name if target.local else TRAIN_REPOSITORY, training_image=opts.image or target.ecr_image(TRAIN_REPOSITORY),
        compute=Compute(instance_type=opts.instance_type, instance_count=opts.instance_count,
                        volume_size_in_gb=opts.volume_size_gb, enable_managed_spot_training=opts.spot or None),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=opts.max_run_s,
                                             max_wait_time_in_seconds=opts.max_wait_s),
        output_data_config=None if target.local else OutputDataConfig(s3_output_path=output_path,
                                                                      compression_type="GZIP"),
        training_input_mode=opts.input_mode, environment=opts.env, hyperparameters=opts.hyperparameters,
        tags=[Tag(key=k, value=v) for k, v in opts.tags.items()] or None,
        # local mode: the compose file, each host's folders and the packed artifacts go under the output folder
        local_container_root=output_path[len("file://"):] if target.local else None,
    )
    model_trainer.with_metric_definitions([MetricDefinition(name=d["Name"], regex=d["Regex"])
                                          for d in metric_definitions()])
    if checkpoint:
        model_trainer.with_checkpoint_config(CheckpointConfig(s3_uri=checkpoint))
    if opts.tensorboard:
        model_trainer.with_tensorboard_output_config(TensorBoardOutputConfig(s3_output_path=opts.tensorboard))
    return model_trainer


def _inputs(opts: TrainOptions, *, uploaded_as=None) -> list:
    """InputData per channel: S3 URIs as given, local folders uploaded by the SDK (file:// in local mode).
    uploaded_as(channel) -> the S3 URI a local folder stands for in the dry-run's plan."""
    from sagemaker.train.configs import InputData

    out = []
    for channel, loc in opts.channels.items():
        if uploaded_as and not options.is_s3(loc):
            loc = uploaded_as(channel)
        elif loc.startswith("file://"):
            loc = loc[len("file://"):]
        out.append(InputData(channel_name=channel, data_source=loc))
    return out


def request(model_trainer, inputs: list, name: str) -> dict:
    """The CreateTrainingJob request ModelTrainer builds (boto3's field names), under this job name."""
    args = model_trainer._create_training_job_args(input_data_config=inputs, boto3=True)
    args["TrainingJobName"] = name
    return args


def plan(opts: TrainOptions) -> dict:
    """What --dry-run prints: the CreateTrainingJob request the SDK would send, built by ModelTrainer itself
    with placeholders for what only AWS knows (account, bucket, an unset role) and no AWS call: the SDK's
    role check (IAM) is skipped, and every AWS endpoint is a closed loopback port."""
    import boto3

    from sagemaker.core.helper.session_helper import Session

    region = opts.aws.region or aws.configured_region(opts.aws) or aws.LOCAL_REGION
    boto_session = boto3.Session(aws_access_key_id="dry-run", aws_secret_access_key="dry-run", region_name=region)
    bucket = opts.aws.bucket or "BUCKET"
    target = aws.Target(region=region, local=False, boto_session=boto_session, account=PLACEHOLDER_ACCOUNT,
                        role_arn=aws.role_arn(opts.aws.role, PLACEHOLDER_ACCOUNT)
                        or f"arn:aws:iam::{PLACEHOLDER_ACCOUNT}:role/ROLE", bucket=bucket)
    name = opts.job_name or job_name()
    output_path = opts.output_path or f"s3://{bucket}/wav2vec2/output"
    with aws.offline():
        session = Session(boto_session=boto_session, default_bucket=bucket)
        model_trainer = trainer(opts, target, session, name, output_path)
        body = request(model_trainer, _inputs(opts, uploaded_as=lambda c: f"s3://{bucket}/{TRAIN_REPOSITORY}/{name}/input/{c}"), name)
    return {"sdk": "sagemaker " + aws.sdk_version(), "operation": "CreateTrainingJob", "request": body,
            "uploads": {c: loc for c, loc in opts.channels.items() if not options.is_s3(loc)}}


def run(opts: TrainOptions) -> int:
    if opts.dry_run:
        print(json.dumps(plan(opts), indent=2, default=str))
        return 0
    target = aws.resolve(opts.aws, need_role=True)
    name = opts.job_name or job_name()
    if target.local:
        return _run_local(opts, target, name)
    session = aws.sdk_session(target)
    output_path = opts.output_path or f"s3://{aws.bucket(target, session)}/wav2vec2/output"
    model_trainer = trainer(opts, target, session, name, output_path)
    for channel, loc in opts.channels.items():
        if not options.is_s3(loc):
            print(f"[launch] uploading channel {channel} from {loc}", flush=True)
    body = request(model_trainer, _inputs(opts), name)
    from sagemaker.core.resources import TrainingJob

    print(f"[launch] training job {name}: {opts.instance_count} x {opts.instance_type}, image "
          f"{body['AlgorithmSpecification']['TrainingImage']}", flush=True)
    session.sagemaker_client.create_training_job(**body)
    if not opts.wait:
        print(f"[launch] started {name}; follow it with: aws sagemaker describe-training-job --training-job-name {name}")
        return 0
    job = TrainingJob.get(training_job_name=name, session=target.boto_session, region=target.region)
    try:
        job.wait(logs=True)
    except Exception as exc:  # FailedStatusError and the like: the job's own FailureReason says why
        job.refresh()
        if job.training_job_status == "Failed":
            raise JobFailed(f"training job {name} failed: {job.failure_reason}") from None
        raise
    artifact = job.model_artifacts.s3_model_artifacts
    print(f"[launch] model artifact: {artifact}", flush=True)
    print(artifact)
    return 0


def _run_local(opts: TrainOptions, target: aws.Target, name: str) -> int:
    """ModelTrainer's local container mode: docker compose runs one container per host (algo-1, algo-2, ...) on
    one network; the SDK packs /opt/ml/model and /opt/ml/output into OUTPUT/compressed_artifacts/."""
    output_path = opts.output_path or f"file://{Path('sagemaker-local/output').resolve()}"
    out = Path(output_path[len("file://"):])
    out.mkdir(parents=True, exist_ok=True)
    model_trainer = trainer(opts, target, None, name, output_path)
    # (the SDK names a local job BASE-TIMESTAMP, BASE being this name)
    print(f"[launch] local training job {name}: {opts.instance_count} x {opts.instance_type}, image "
          f"{model_trainer.training_image}", flush=True)
    started = time.time()
    try:
        model_trainer.train(input_data_config=_inputs(opts), wait=True, logs=True)
    except Exception:
        reason = local_failure_reason(output_path, since=started)
        if reason is None:
            raise
        raise JobFailed(f"training job {name} failed: {reason}") from None
    artifact = local_artifact(out, "model.tar.gz")
    if artifact is None:
        raise JobFailed(f"training job {name} wrote no model.tar.gz under {out}")
    print(f"[launch] model artifact: file://{artifact}", flush=True)
    print(f"file://{artifact}")
    return 0


LOCAL_ARTIFACTS = "compressed_artifacts"  # where sagemaker-train 1.27's _LocalContainer.retrieve_artifacts packs them


def local_artifact(root: Path, name: str) -> Path | None:
    """model.tar.gz or output.tar.gz of the local container mode under root, if there."""
    path = root / LOCAL_ARTIFACTS / name
    return path if path.is_file() else None


def local_failure_reason(output_path: str, since: float) -> str | None:
    """Local mode: the first line of /opt/ml/output/failure, which the SDK packs into output.tar.gz even when the
    job fails (on SageMaker the same text becomes the job's FailureReason). An archive older than this job is
    ignored."""
    archive = local_artifact(Path(output_path[len("file://"):]), "output.tar.gz")
    try:
        if archive is None or archive.stat().st_mtime < since - 1:
            return None
        with tarfile.open(archive) as tar:
            member = next((m for m in tar.getmembers() if m.name.lstrip("./") == "failure"), None)
            if member is None:
                return None
            text = tar.extractfile(member).read().decode(errors="replace").strip()
    except (OSError, tarfile.TarError):
        return None
    return text.splitlines()[0] if text else None
