"""launcher/launch: help, argument checks, metric definitions, and the AWS checks that run before anything is created.

Every test runs the real launcher in a subprocess. No AWS credentials exist here and only loopback is
reachable, so the AWS checks are exercised for real: a loopback listener stands in for every AWS endpoint
(AWS_ENDPOINT_URL) and counts connections, proving that a failed check made no AWS call at all.
"""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, program_env

LAUNCH = ROOT / "launcher" / "launch"
# The launcher's own environment (./setup.sh builds it: Python 3.12, SageMaker SDK v3); launcher/launch uses it.
LAUNCH_PYTHON = ROOT / ".venv-launch" / "bin" / "python"
COMMANDS = ["prepare", "train", "deploy", "invoke", "delete", "transform", "stream"]
ROLE = "arn:aws:iam::123456789012:role/SageMakerWav2Vec2"


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No AWS configuration at all: no credentials, no region, no profile, no config files."""
    env = {k: v for k, v in program_env().items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
    env.update(HOME=str(tmp_path), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    env.update(extra)
    return env


def launch(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(LAUNCH), *args], capture_output=True, text=True, env=env or program_env(),
                          timeout=timeout)


class ConnectionCounter:
    """A loopback TCP listener that counts connections and closes them (any AWS call would land here)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.count += 1
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def aws_listener():
    counter = ConnectionCounter()
    yield counter
    counter.close()


def test_top_level_help_lists_every_command():
    r = launch("--help")
    assert r.returncode == 0, r.stderr
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\b", r.stdout, flags=re.M), command


@pytest.mark.parametrize("command,flags", [
    ("prepare", ["--hf-dataset", "--as-is", "--max-skipped-fraction"]),
    ("train", ["--channel", "--hp", "--instance-count", "--spot", "--max-wait-s", "--checkpoint-s3-uri",
               "--output-path", "--local"]),
    ("deploy", ["--model-data", "--instance-type", "--instance-count", "--startup-timeout-s", "--env", "--async",
                "--output-path", "--failure-path", "--max-concurrent-invocations", "--success-topic", "--error-topic",
                "--serverless", "--memory-mb", "--max-concurrency", "--provisioned-concurrency", "--autoscale",
                "--scale-target"]),
    ("invoke", ["--endpoint-name", "--content-type", "--async", "--input-path", "--invocation-timeout-s",
                "--request-ttl-s", "--wait-s", "--no-wait"]),
    ("delete", ["--endpoint-name", "--keep-model"]),
    ("transform", ["--input", "--output-path", "--max-concurrent", "--max-payload-mb", "--accept"]),
])
def test_each_command_has_help(command, flags):
    r = launch(command, "--help")
    assert r.returncode == 0, r.stderr
    for flag in flags + ["--region", "--role", "--bucket", "--profile"]:
        assert flag in r.stdout, f"{command} --help lacks {flag}"


def test_no_command_is_a_usage_error():
    r = launch()
    assert r.returncode == 2
    assert "COMMAND" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["train", "--channel", "test=s3://bucket-x/t"], "--channel train=LOCATION is required"),
    (["train", "--channel", "train=s3://bucket-x/t", "--channel", "extra=s3://bucket-x/e"],
     "--channel extra: not a channel the training program reads"),
    (["train", "--channel", "training=s3://bucket-x/t"], "--channel training: not a channel the training program "
                                                         "reads; did you mean train?"),
    (["train", "--channel", "test=s3://bucket-x/t"], "(given: test)"),
    (["train", "--channel", "train=s3://bucket-x/t", "--region", "eu-west-9"],
     "--region 'eu-west-9' is not an AWS region with SageMaker (botocore's partition data): did you mean eu-west-3"),
    (["train", "--channel", "train=s3://bucket-x/t", "--dry-run", "--region", "eu-west-9"], "did you mean"),
    (["train", "--channel", "train=s3://bucket-x/t", "--tensorboard", "/tmp/tb"], "is not an S3 URI"),
    (["deploy", "--model-data", "s3://bucket-x/m/model.tar.gz", "--metric-publish-frequency-s", "45"],
     "SageMaker publishes every 10, 30, 60, 120, 180, 240, 300 seconds"),
    (["train", "--channel", "train"], "must look like NAME=VALUE"),
    (["train", "--channel", "train=ftp://host/x"], "give an s3:// URI or a local folder"),
    (["train", "--channel", "train=/no/such/folder"], "is not an existing folder"),
    (["train", "--channel", "train=s3://bucket-x/t", "--hp", "=3"], "must look like NAME=VALUE"),
    (["train", "--channel", "train=s3://bucket-x/t", "--spot"], "--spot needs --max-wait-s"),
    (["train", "--channel", "train=s3://bucket-x/t", "--spot", "--max-wait-s", "60", "--max-run-s", "3600"],
     "must be >= --max-run-s"),
    (["train", "--channel", "train=s3://bucket-x/t", "--instance-count", "0"], "--instance-count must be at least 1"),
    (["train", "--channel", "train=s3://bucket-x/t", "--instance-type", "p3.2xlarge"], "is not a SageMaker instance type"),
    (["train", "--channel", "train=s3://bucket-x/t", "--checkpoint-s3-uri", "/tmp/x"], "is not an S3 URI"),
    (["train", "--channel", "train=s3://bucket-x/t", "--env", "1BAD=x"], "not a valid environment variable name"),
    (["train", "--local", "--channel", "train=s3://bucket-x/t"], "local mode takes local folders"),
    (["deploy", "--model-data", "s3://bucket-x/m/model.tar.gz", "--startup-timeout-s", "30"], "between 60 and 3600"),
    (["deploy", "--model-data", "s3://bucket-x/m/model.tar.gz", "--endpoint-name", "bad_name!"], "--endpoint-name"),
    (["deploy", "--model-data", "/tmp"], "give the s3:// URI of model.tar.gz"),
    (["deploy", "--model-data", "s3://bucket-x/m/model.tar.gz", "--local-seconds", "5"], "only applies with --local"),
    (["transform", "--model-data", "s3://bucket-x/m.tar.gz", "--input", "/tmp"], "batch transform reads from S3"),
    (["transform", "--model-data", "s3://bucket-x/m.tar.gz", "--input", "s3://bucket-x/in", "--max-payload-mb", "101"],
     "between 1 and 100"),
    (["invoke", "/no/such/clip.wav", "--endpoint-name", "x"], "is not a file"),
    (["delete", "--endpoint-name", "x", "--local"], "stop it with Ctrl-C"),
    (["prepare", "s3://bucket-x/out"], "give either SOURCE"),
    (["deploy", "--local", "--model-data", "/tmp", "--instance-count", "2"], "one container"),
    (["train", "--local-gpu", "--channel", "train=/tmp", "--instance-count", "2"], "CPU only"),
])
def test_bad_arguments_fail_fast_with_a_clear_message(tmp_path, args, message):
    r = launch(*args, env=clean_env(tmp_path))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_invoke_refuses_bodies_over_the_realtime_cap(tmp_path):
    clip = tmp_path / "big.wav"
    clip.write_bytes(b"\0" * (6 * 1024 * 1024 + 1))
    r = launch("invoke", str(clip), "--endpoint-name", "x", env=clean_env(tmp_path))
    assert r.returncode == 2
    assert "at most 6 MB" in r.stderr and "invoke --async" in r.stderr and "launch transform" in r.stderr


MODEL = "s3://bucket-x/job/output/model.tar.gz"
SNS = "arn:aws:sns:eu-west-1:123456789012:done"


def _hosting_refusals(tmp_path: Path) -> list[tuple[list[str], str]]:
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"RIFF" + b"\0" * 100)
    huge = tmp_path / "huge.wav"  # sparse: 1 GB + 1 byte without using the disk
    with huge.open("wb") as f:
        f.truncate(1024 * 1024 * 1024 + 1)
    dep = ["deploy", "--model-data", MODEL]
    return [
        (dep + ["--serverless", "--instance-type", "ml.g5.xlarge"], "--serverless runs on CPUs only: ml.g5.xlarge"),
        (dep + ["--serverless", "--instance-type", "ml.inf2.xlarge"], "GPU/accelerator instance type"),
        (dep + ["--serverless", "--instance-type", "ml.c5.xlarge"], "take no --instance-type"),
        (dep + ["--serverless", "--instance-count", "2"], "have no instances"),
        (dep + ["--serverless", "--memory-mb", "1500"], "1024, 2048, 3072, 4096, 5120, 6144 MB"),
        (dep + ["--serverless", "--memory-mb", "8192"], "1024, 2048, 3072, 4096, 5120, 6144 MB"),
        (dep + ["--serverless", "--max-concurrency", "201"], "between 1 and 200"),
        (dep + ["--serverless", "--max-concurrency", "0"], "between 1 and 200"),
        (dep + ["--serverless", "--provisioned-concurrency", "6"], "between 1 and --max-concurrency (5)"),
        (dep + ["--serverless", "--startup-timeout-s", "300"], "fixed 3 minutes"),
        (dep + ["--serverless", "--autoscale", "1:2"], "scale by themselves"),
        (dep + ["--memory-mb", "2048"], "--memory-mb only applies with --serverless"),
        (dep + ["--async", "--serverless"], "exclude each other"),
        (dep + ["--async", "--max-concurrent-invocations", "0"], "between 1 and 1000"),
        (dep + ["--async", "--max-concurrent-invocations", "1001"], "between 1 and 1000"),
        (dep + ["--async", "--output-path", "/tmp/out"], "is not an S3 URI"),
        (dep + ["--async", "--error-topic", "my-topic"], "is not an SNS topic ARN"),
        (dep + ["--success-topic", SNS], "--success-topic only applies with --async"),
        (dep + ["--async", "--local"], "local_test/async_local.py"),
        (dep + ["--autoscale", "0:2"], "only asynchronous endpoints (--async) scale to zero"),
        (dep + ["--autoscale", "1:4"], "needs --scale-target"),
        (dep + ["--autoscale", "3:1", "--scale-target", "60"], "0 <= MIN <= MAX"),
        (dep + ["--autoscale", "4", "--scale-target", "60"], "must look like MIN:MAX"),
        (dep + ["--autoscale", "2:4", "--scale-target", "60"], "outside --autoscale 2:4"),
        (dep + ["--async", "--autoscale", "0:2", "--scale-target", "0"], "--scale-target must be positive"),
        (dep + ["--async", "--autoscale", "0:2", "--no-wait"], "drop --no-wait"),
        (dep + ["--scale-target", "60"], "only applies with --autoscale"),
        # machine images (NVIDIA drivers): values the API accepts, families AWS lists them for
        (dep + ["--inference-ami-version", "al2-ami-sagemaker-inference-gpu-9"], "is not one SageMaker accepts"),
        (dep + ["--inference-ami-version", "al2-ami-sagemaker-inference-neuron-2"], "AWS Neuron"),
        (dep + ["--instance-type", "ml.m5.xlarge", "--inference-ami-version", "al2-ami-sagemaker-inference-gpu-2"],
         "only applies to NVIDIA GPU instance types (ml.g*, ml.p*), not ml.m5.xlarge"),
        (dep + ["--instance-type", "ml.p5e.48xlarge", "--inference-ami-version", "al2-ami-sagemaker-inference-gpu-2"],
         "AWS lists it for ml.g4dn, ml.g5, ml.g6, ml.p3, ml.p4d, ml.p4de, ml.p5 only, not ml.p5e"),
        (dep + ["--serverless", "--inference-ami-version", "al2-ami-sagemaker-inference-gpu-2"],
         "does not apply to serverless endpoints"),
        (dep + ["--instance-type", "ml.p2.xlarge"], "ml.p2.xlarge cannot run the images"),
        (dep + ["--local", "--inference-ami-version", "al2-ami-sagemaker-inference-gpu-2"], "this machine's driver"),
        (["transform", "--model-data", MODEL, "--input", "s3://bucket-x/in/", "--transform-ami-version",
          "al2-ami-sagemaker-batch-gpu-470"], "runs NVIDIA driver 470, too old"),
        (["transform", "--model-data", MODEL, "--input", "s3://bucket-x/in/", "--instance-type", "ml.c5.xlarge",
          "--transform-ami-version", "al2-ami-sagemaker-batch-gpu-535"], "only applies to NVIDIA GPU instance types"),
        (["invoke", "--async", str(clip), "--endpoint-name", "e", "--invocation-timeout-s", "3601"],
         "between 1 and 3600"),
        (["invoke", "--async", str(clip), "--endpoint-name", "e", "--invocation-timeout-s", "0"], "between 1 and 3600"),
        (["invoke", "--async", str(clip), "--endpoint-name", "e", "--request-ttl-s", "59"], "between 60 and 21600"),
        (["invoke", "--async", str(clip), "--endpoint-name", "e", "--request-ttl-s", "21601"], "between 60 and 21600"),
        (["invoke", "--async", str(huge), "--endpoint-name", "e"], "at most 1 GB"),
        (["invoke", "--async", str(clip)], "--endpoint-name is required"),
        (["invoke", "--async", "s3://bucket-x/a.wav", "--endpoint-name", "e", "--input-path", "s3://bucket-x/in/"],
         "drop it when FILE is already in S3"),
        (["invoke", str(clip), "--endpoint-name", "e", "--request-ttl-s", "100"], "only applies with --async"),
        (["invoke", "s3://bucket-x/a.wav", "--endpoint-name", "e"], "needs --async"),
        (["train", "--channel", "train=s3://bucket-x/t", "--hp", "max_step=3"],
         "unknown hyperparameter max_step: did you mean max_steps"),
        (["invoke", str(clip), "--endpoint-name", "e", "--option", "timestamp=true"],
         "--option timestamp: not a request option of the serving program; did you mean timestamps?"),
        (["invoke", str(clip), "--endpoint-name", "e", "--content-type", "audiowav"], "did you mean audio/wav"),
        (["invoke", str(clip), "--endpoint-name", "e", "--accept", "json"], "--accept 'json' is not a media type"),
        (["train", "--channel", "train=s3://bucket-x/t", "--hp", "learning_rate=fast"],
         "hyperparameter learning_rate='fast' is not a valid float"),
        (["train", "--channel", "train=s3://bucket-x/t", "--hp", "precision=fp8"], "must be one of auto, fp32"),
    ]


def test_aws_limits_are_refused_before_any_aws_call(tmp_path, aws_listener):
    """With credentials, region and role all set, every limit the launcher knows fails in one line, status 2,
    and no connection reaches the (stand-in) AWS endpoint."""
    env = clean_env(tmp_path, AWS_ENDPOINT_URL=aws_listener.url, AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
                    AWS_SECRET_ACCESS_KEY="example", AWS_REGION="eu-west-1", SAGEMAKER_ROLE_ARN=ROLE)
    script = "import sys; from launcher.cli import main\nfor args in __import__('json').loads(sys.argv[1]):\n" \
             "    code = main(args); print('EXIT', code, flush=True); sys.stderr.write('END\\n')"
    cases = _hosting_refusals(tmp_path)
    # One interpreter for all cases (each would otherwise pay the start-up); main() does not exit.
    r = subprocess.run([str(LAUNCH_PYTHON), "-c", script, json.dumps([a for a, _ in cases])], capture_output=True,
                       text=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=300, cwd=str(ROOT))
    codes = [int(line.split()[1]) for line in r.stdout.splitlines() if line.startswith("EXIT")]
    errors = r.stderr.split("END\n")
    assert len(codes) == len(cases), r.stderr[-3000:]
    for (args, message), code, err in zip(cases, codes, errors):
        assert code == 2, (args, err)
        assert message in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("launch "), (args, err)
    assert aws_listener.count == 0


def test_metric_definitions_come_from_the_training_program(tmp_path):
    from train import progress

    r = launch("train", "--dry-run", "--channel", "train=s3://bucket-x/train", "--channel", "lm=s3://bucket-x/lm",
               "--hp", "max_steps=5", env=clean_env(tmp_path))
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)  # the CreateTrainingJob request the SDK v3's ModelTrainer builds
    request = plan["request"]
    assert {c["ChannelName"] for c in request["InputDataConfig"]} == {"train", "lm"}
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == progress.METRIC_DEFINITIONS
    assert request["HyperParameters"] == {"max_steps": "5"}
    plan["metric_definitions"] = request["AlgorithmSpecification"]["MetricDefinitions"]
    # And the regexes pick the numbers out of the lines the training program prints.
    by_name = {d["Name"]: d["Regex"] for d in plan["metric_definitions"]}
    eval_line = progress.line("eval", step=40, epoch=2.0, wer=0.8123, cer=0.4012, loss=3.0415)
    assert float(re.search(by_name["eval:cer"], eval_line).group(1)) == pytest.approx(0.4012)
    assert float(re.search(by_name["eval:wer"], eval_line).group(1)) == pytest.approx(0.8123)
    lm_line = progress.line("eval", step=40, wer_lm=0.61, cer_lm=0.35)
    assert float(re.search(by_name["eval:wer_lm"], lm_line).group(1)) == pytest.approx(0.61)
    assert float(re.search(by_name["eval:cer_lm"], lm_line).group(1)) == pytest.approx(0.35)
    assert not re.search(by_name["eval:wer"], lm_line) and not re.search(by_name["eval:cer"], lm_line)
    assert not re.search(by_name["eval:wer_lm"], eval_line)


def _timed(*args, env):
    t0 = time.monotonic()
    r = launch(*args, env=env, timeout=60)
    return r, time.monotonic() - t0


TRAIN = ["train", "--channel", "train=s3://bucket-x/train"]
DEPLOY = ["deploy", "--model-data", "s3://bucket-x/job/output/model.tar.gz"]
TRANSFORM = ["transform", "--model-data", "s3://bucket-x/m.tar.gz", "--input", "s3://bucket-x/clips"]


@pytest.mark.parametrize("args", [TRAIN, DEPLOY, TRANSFORM, ["delete", "--endpoint-name", "asr"],
                                  ["invoke", "CLIP", "--endpoint-name", "asr"]], ids=lambda a: a[0])
def test_missing_credentials_fail_before_any_aws_call(tmp_path, aws_listener, synthetic_data, args):
    clip = str(next((synthetic_data / "test" / "audio").glob("*.wav")))
    args = [clip if a == "CLIP" else a for a in args]
    env = clean_env(tmp_path, AWS_ENDPOINT_URL=aws_listener.url)
    r, seconds = _timed(*args, "--region", "eu-west-1", "--role", ROLE, env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "no AWS credentials found" in r.stderr and "nothing was created" in r.stderr
    assert "Traceback" not in r.stderr
    assert seconds < 15
    assert aws_listener.count == 0


def test_missing_region_fails_before_any_aws_call(tmp_path, aws_listener):
    env = clean_env(tmp_path, AWS_ENDPOINT_URL=aws_listener.url, AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
                    AWS_SECRET_ACCESS_KEY="example")
    r = launch(*TRAIN, "--role", ROLE, env=env)
    assert r.returncode == 2
    assert "no AWS region" in r.stderr
    assert aws_listener.count == 0


@pytest.mark.parametrize("args", [TRAIN, DEPLOY, TRANSFORM], ids=lambda a: a[0])
def test_missing_role_fails_before_any_aws_call(tmp_path, aws_listener, args):
    env = clean_env(tmp_path, AWS_ENDPOINT_URL=aws_listener.url, AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
                    AWS_SECRET_ACCESS_KEY="example", AWS_REGION="eu-west-1")
    r = launch(*args, env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "no SageMaker execution role" in r.stderr and "--role" in r.stderr
    assert aws_listener.count == 0


def test_unknown_profile_is_named(tmp_path, aws_listener):
    env = clean_env(tmp_path, AWS_ENDPOINT_URL=aws_listener.url)
    r = launch(*TRAIN, "--profile", "nosuchprofile", "--region", "eu-west-1", env=env)
    assert r.returncode == 2
    assert "AWS profile 'nosuchprofile'" in r.stderr
    assert aws_listener.count == 0


def test_unreachable_aws_fails_fast_and_clearly(tmp_path):
    # Credentials and role present: the one identity call goes to a closed loopback port and is refused.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = clean_env(tmp_path, AWS_ENDPOINT_URL=closed, AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
                    AWS_SECRET_ACCESS_KEY="example")
    r, seconds = _timed(*TRAIN, "--region", "eu-west-1", "--role", ROLE, env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "cannot reach AWS STS in eu-west-1" in r.stderr and "nothing was created" in r.stderr
    assert seconds < 20


def test_role_from_environment_is_accepted(tmp_path, aws_listener):
    # With the role from $SAGEMAKER_ROLE_ARN the checks get as far as the identity call (to the listener).
    env = clean_env(tmp_path, AWS_ENDPOINT_URL=aws_listener.url, AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
                    AWS_SECRET_ACCESS_KEY="example", AWS_REGION="eu-west-1", SAGEMAKER_ROLE_ARN=ROLE)
    r = launch(*TRAIN, env=env)
    assert r.returncode == 2
    assert "no SageMaker execution role" not in r.stderr
    assert "nothing was created" in r.stderr
    assert aws_listener.count >= 1


def test_region_credentials_and_role_from_aws_and_sdk_config_files(tmp_path, aws_listener):
    """No flags: the profile's region and keys (~/.aws) and the role from the SDK's config.yaml are used;
    the checks then get as far as the identity call, which lands on the loopback listener."""
    (tmp_path / "config").write_text("[profile speech]\nregion = eu-central-1\n")
    (tmp_path / "credentials").write_text("[speech]\naws_access_key_id = AKIAEXAMPLE\n"
                                          "aws_secret_access_key = example\n")
    sdk_config = tmp_path / ".config" / "sagemaker" / "config.yaml"
    sdk_config.parent.mkdir(parents=True)
    sdk_config.write_text(f"SchemaVersion: '1.0'\nSageMaker:\n  TrainingJob:\n    RoleArn: {ROLE}\n")
    env = clean_env(tmp_path, AWS_ENDPOINT_URL=aws_listener.url, AWS_PROFILE="speech",
                    AWS_CONFIG_FILE=str(tmp_path / "config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"))
    r = launch(*TRAIN, env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "cannot reach AWS STS in eu-central-1" in r.stderr
    assert aws_listener.count >= 1


def test_serverless_memory_bench_runs(tmp_path):
    # (in .venv: the bench runs the serving program, torch included)
    """bench/serverless_memory, whose figures are the memory check's constants, kept from rotting: tiny model,
    a 0.5 MB request."""
    import subprocess
    import sys

    from conftest import ROOT, program_env

    r = subprocess.run([sys.executable, str(ROOT / "bench" / "serverless_memory"), "--models", "tiny",
                        "--payload-mb", "0.5", "--workdir", str(tmp_path)], capture_output=True, text=True,
                       env=program_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    (row,) = figures["rows"]
    assert row["model"] == "tiny" and 0 < row["idle_rss_mb"] <= row["peak_rss_mb"]
    assert row["audio_s"] == pytest.approx(16.4, abs=0.1)


def test_a_dataset_root_given_as_a_channel_names_the_folders_in_it(tmp_path):
    root = tmp_path / "speech"
    for sub in ("training", "test"):
        (root / sub).mkdir(parents=True)
        (root / sub / "manifest.jsonl").write_text("")
    r = launch("train", "--dry-run", "--channel", f"train={root}", env=clean_env(tmp_path))
    assert r.returncode == 2
    assert (f"--channel train={root}: it holds no files, only the folders test, training; did you mean "
            f"--channel test={root / 'test'} --channel train={root / 'training'}?") in r.stderr
    r = launch("train", "--dry-run", "--channel", f"train={root / 'training'}", env=clean_env(tmp_path))
    assert r.returncode == 0, r.stderr
