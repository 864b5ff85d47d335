"""`launch train`: a SageMaker training job of the training image (sagemaker.estimator.Estimator)."""
from __future__ import annotations

import argparse
import json
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

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
    env: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    job_name: str | None = None
    wait: bool = True
    dry_run: bool = False

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "TrainOptions":
        aws_opts = options.aws_options(ns)
        channels = options.pairs(ns.channel, "--channel")
        unknown = set(channels) - set(CHANNELS)
        if unknown:
            raise LaunchError(f"--channel {', '.join(sorted(unknown))}: the training program reads only the "
                              f"channels {', '.join(CHANNELS)}")
        if "train" not in channels:
            raise LaunchError("--channel train=LOCATION is required (the audio and transcripts to train on)")
        channels = {k: options.location(v, f"--channel {k}=", local=aws_opts.local) for k, v in channels.items()}
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
                   checkpoint_s3_uri=ns.checkpoint_s3_uri, output_path=output_path,
                   env=options.pairs(ns.env, "--env", env_names=True), tags=options.pairs(ns.tag, "--tag"),
                   job_name=ns.job_name, wait=not ns.no_wait, dry_run=ns.dry_run)


def check_hyperparameters(hps: dict[str, str]) -> None:
    """The training program's own parser (train/hyperparameters.py, no torch import), so that a typo or a bad
    value fails here, in a second, with the message the job would have failed with after its instance started."""
    from train.failure import TrainingError
    from train.hyperparameters import parse

    try:
        parse(hps)
    except TrainingError as exc:
        raise LaunchError(f"{exc} (checked with the training program's parser; nothing was created)") from None


def job_name(base: str = TRAIN_REPOSITORY) -> str:
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def plan(opts: TrainOptions) -> dict:
    """The job settings as the launcher will pass them (what --dry-run prints)."""
    return {
        "image_uri": opts.image, "instance_type": opts.instance_type, "instance_count": opts.instance_count,
        "volume_size": opts.volume_size_gb, "max_run": opts.max_run_s, "input_mode": opts.input_mode,
        "use_spot_instances": opts.spot, "max_wait": opts.max_wait_s, "checkpoint_s3_uri": opts.checkpoint_s3_uri,
        "output_path": opts.output_path, "hyperparameters": opts.hyperparameters, "environment": opts.env,
        "metric_definitions": metric_definitions(), "channels": opts.channels,
        "job_name": opts.job_name, "tags": opts.tags,
    }


def run(opts: TrainOptions) -> int:
    if opts.dry_run:
        print(json.dumps(plan(opts), indent=2))
        return 0
    target = aws.resolve(opts.aws, need_role=True)
    from sagemaker.estimator import Estimator
    from sagemaker.inputs import TrainingInput

    session = aws.sdk_session(target)
    name = opts.job_name or job_name()
    if target.local:
        output_path = opts.output_path or f"file://{Path('sagemaker-local/output').resolve()}"
        Path(output_path[len("file://"):]).mkdir(parents=True, exist_ok=True)
    else:
        output_path = opts.output_path or f"s3://{aws.bucket(target, session)}/wav2vec2/output"
    checkpoint = opts.checkpoint_s3_uri or (f"{output_path}/{name}/checkpoints" if opts.spot else None)
    inputs = {}
    for channel, loc in opts.channels.items():
        if not target.local and not options.is_s3(loc):
            print(f"[launch] uploading channel {channel} from {loc}", flush=True)
            loc = session.upload_data(loc, bucket=aws.bucket(target, session), key_prefix=f"wav2vec2/channels/{name}/{channel}")
        inputs[channel] = TrainingInput(loc, distribution="FullyReplicated")
    estimator = Estimator(
        image_uri=opts.image or target.ecr_image(TRAIN_REPOSITORY), role=target.role_arn,
        instance_count=opts.instance_count, instance_type=opts.instance_type, volume_size=opts.volume_size_gb,
        max_run=opts.max_run_s, input_mode=opts.input_mode, output_path=output_path,
        hyperparameters=opts.hyperparameters or None, metric_definitions=metric_definitions(),
        use_spot_instances=opts.spot, max_wait=opts.max_wait_s, checkpoint_s3_uri=checkpoint,
        environment=opts.env or None, tags=[{"Key": k, "Value": v} for k, v in opts.tags.items()] or None,
        sagemaker_session=session, disable_profiler=True, debugger_hook_config=False,
    )
    print(f"[launch] training job {name}: {opts.instance_count} x {opts.instance_type}, image {estimator.image_uri}",
          flush=True)
    started = time.time()
    try:
        estimator.fit(inputs, job_name=name, wait=opts.wait, logs="All" if opts.wait else "None")
    except Exception:
        reason = local_failure_reason(output_path, since=started) if target.local else None
        if reason is None:
            raise
        raise JobFailed(f"training job {name} failed: {reason}") from None
    if not opts.wait:
        print(f"[launch] started {name}; follow it with: aws sagemaker describe-training-job --training-job-name {name}")
        return 0
    print(f"[launch] model artifact: {estimator.model_data}", flush=True)
    print(estimator.model_data)
    return 0


def local_failure_reason(output_path: str, since: float) -> str | None:
    """Local mode: the first line of /opt/ml/output/failure, which the SDK packs into output.tar.gz (on
    SageMaker the same text becomes the job's FailureReason). An archive older than this job is ignored."""
    archive = Path(output_path[len("file://"):]) / "output.tar.gz"
    try:
        if archive.stat().st_mtime < since - 1:
            return None
        with tarfile.open(archive) as tar:
            member = next((m for m in tar.getmembers() if m.name.lstrip("./") == "failure"), None)
            if member is None:
                return None
            text = tar.extractfile(member).read().decode(errors="replace").strip()
    except (OSError, tarfile.TarError):
        return None
    return text.splitlines()[0] if text else None
