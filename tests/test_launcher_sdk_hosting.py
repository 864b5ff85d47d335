"""deploy / invoke / delete / train / transform on the SageMaker SDK v3 (runs in .venv-launch), against moto's server standing in for AWS (S3, STS, SageMaker,
Application Auto Scaling, CloudWatch) and local_test/async_local.py's AsyncRuntime for SageMaker's asynchronous
runtime. The launcher runs in this process (launcher.cli.main); every AWS call it makes is recorded with its
exact parameters through a botocore event on its boto3 session, so the tests check the request bodies the SDK's
own objects (ModelTrainer, sagemaker.core Model / EndpointConfig / Endpoint / TransformJob) send, and moto checks
that what deploy made is what delete removes."""
from __future__ import annotations

import copy
import json
import os
import re
import time

import pytest

from launcher import aws as launcher_aws, cli, hosting, scaling
from stand_ins import StandIn, json_answer

ACCOUNT = "123456789012"
REGION = "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/Wav2Vec2SageMaker"
MODEL_DATA = "s3://my-bucket/job/output/model.tar.gz"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/wav2vec2-serve:latest"
# moto's instance-type list predates ml.g5, the launcher's default; ml.g4dn is valid in both.
INSTANCE = "ml.g4dn.xlarge"
WRITES = ("Create", "Put", "Register", "Delete", "Deregister", "Invoke", "Upload")


class Stand:
    def __init__(self, standin, calls):
        self.standin, self.calls = standin, calls

    def params(self, operation: str) -> list[dict]:
        return [p for name, p in self.calls if name == operation]

    def writes(self) -> list[str]:
        return [name for name, _ in self.calls if name.startswith(WRITES)]

    def client(self, service: str):
        return self.standin.client(service)


@pytest.fixture(scope="module")
def standin():
    from local_test.async_local import AwsStandIn

    server = AwsStandIn()
    yield server
    server.stop()


@pytest.fixture
def aws(standin, monkeypatch, tmp_path):
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{standin.url}/moto-api/reset", method="POST")).read()
    for name in list(os.environ):
        if name.startswith(("AWS_", "SAGEMAKER_")):
            monkeypatch.delenv(name)
    for name, value in standin.env(home=str(tmp_path)).items():
        if name.startswith(("AWS_", "SAGEMAKER_")) or name in ("HOME",):
            monkeypatch.setenv(name, value)
    calls: list[tuple[str, dict]] = []
    original = launcher_aws._boto_session

    def recording_session(opts):
        session = original(opts)
        session.events.register("before-parameter-build", lambda params, model, **_: calls.append(
            (model.name, {k: "<body>" if k == "Body" else copy.deepcopy(v) for k, v in params.items()})))
        return session

    monkeypatch.setattr(launcher_aws, "_boto_session", recording_session)
    # moto 5.2.5 answers Describe* with empty objects for unset fields ("VpcConfig": {}, "DataCaptureConfig": {}),
    # where SageMaker leaves them out; sagemaker.core's resources (which describe what they created) reject them.
    original_session = launcher_aws._boto_session

    def without_empty_vpc(opts):
        session = original_session(opts)
        def drop_empty(parsed, model, **_):
            if model.name.startswith("Describe"):
                for key in [k for k, v in parsed.items() if v == {}]:
                    del parsed[key]

        session.events.register("after-call.sagemaker", drop_empty)
        return session

    monkeypatch.setattr(launcher_aws, "_boto_session", without_empty_vpc)
    standin.client("s3").create_bucket(Bucket="my-bucket")
    return Stand(standin, calls)


def launch(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def put_model(aws: Stand, size: int = 1024) -> None:
    aws.client("s3").put_object(Bucket="my-bucket", Key="job/output/model.tar.gz", Body=b"\0" * size)


def test_async_deploy_scales_to_zero_and_delete_removes_everything(aws, capsys):
    from local_test.async_local import leftovers

    topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:asr-done"
    code, out, err = launch(capsys, "deploy", "--async", "--model-data", MODEL_DATA, "--endpoint-name", "asr-async",
                            "--instance-type", INSTANCE, "--autoscale", "0:3", "--bucket", "my-bucket",
                            "--max-concurrent-invocations", "2", "--success-topic", topic,
                            "--env", "SERVE_MAX_AUDIO_S=7200")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "asr-async"
    # ml.g4dn's default driver (470) cannot run the images' CUDA 12 torch: the deploy line says what was asked for
    assert "machine image al2-ami-sagemaker-inference-gpu-2 (NVIDIA driver 535: ml.g4dn runs driver 470" in out
    (model,) = aws.params("CreateModel")
    assert model["PrimaryContainer"] == {
        "Image": IMAGE, "ModelDataUrl": MODEL_DATA,
        # the async limits reach the server; --env adds to them
        "Environment": {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1024", "MODEL_SERVER_TIMEOUT": "3600",
                        "SERVE_MAX_AUDIO_S": "7200"}}
    (config,) = aws.params("CreateEndpointConfig")
    assert config == {
        "EndpointConfigName": "asr-async",
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "asr-async", "InitialVariantWeight": 1,
                                "InitialInstanceCount": 1, "InstanceType": INSTANCE,
                                "ContainerStartupHealthCheckTimeoutInSeconds": 600,
                                "InferenceAmiVersion": "al2-ami-sagemaker-inference-gpu-2"}],
        "AsyncInferenceConfig": {
            "OutputConfig": {"S3OutputPath": "s3://my-bucket/wav2vec2/async/asr-async/output",
                             "S3FailurePath": "s3://my-bucket/wav2vec2/async/asr-async/failure",
                             "NotificationConfig": {"SuccessTopic": topic}},
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 2}},
        # set explicitly: SageMaker scrapes the container's /metrics (issue 26)
        "MetricsConfig": {"EnableDetailedObservability": True, "MetricPublishFrequencyInSeconds": 60},
    }
    target = {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/asr-async/variant/AllTraffic",
              "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}
    assert aws.params("RegisterScalableTarget") == [{**target, "MinCapacity": 0, "MaxCapacity": 3}]
    tracking, from_zero = aws.params("PutScalingPolicy")
    assert tracking == {**target, "PolicyName": "wav2vec2-target-tracking", "PolicyType": "TargetTrackingScaling",
                        "TargetTrackingScalingPolicyConfiguration": {
                            "TargetValue": 5.0,
                            "CustomizedMetricSpecification": {
                                "MetricName": "ApproximateBacklogSizePerInstance", "Namespace": "AWS/SageMaker",
                                "Dimensions": [{"Name": "EndpointName", "Value": "asr-async"}],
                                "Statistic": "Average"},
                            "ScaleInCooldown": 600, "ScaleOutCooldown": 300}}
    assert from_zero == {**target, "PolicyName": "wav2vec2-scale-out-from-zero", "PolicyType": "StepScaling",
                         "StepScalingPolicyConfiguration": {
                             "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
                             "Cooldown": 300,
                             "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]}}
    (alarm,) = aws.params("PutMetricAlarm")
    (policy_arn,) = [p["PolicyARN"] for p in aws.client("application-autoscaling").describe_scaling_policies(
        ServiceNamespace="sagemaker")["ScalingPolicies"] if p["PolicyName"] == "wav2vec2-scale-out-from-zero"]
    assert alarm == {"AlarmName": "asr-async-wav2vec2-has-backlog-without-capacity",
                     "MetricName": "HasBacklogWithoutCapacity", "Namespace": "AWS/SageMaker", "Statistic": "Average",
                     "Period": 60, "EvaluationPeriods": 2, "DatapointsToAlarm": 2, "Threshold": 1,
                     "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "missing",
                     "Dimensions": [{"Name": "EndpointName", "Value": "asr-async"}], "AlarmActions": [policy_arn]}
    # Scaling is set up only once the endpoint is InService.
    names = [n for n, _ in aws.calls]
    assert names.index("DescribeEndpoint") < names.index("RegisterScalableTarget")
    assert len(leftovers(aws.standin)) == 7  # endpoint, config, model, scalable target, 2 policies, alarm

    aws.calls.clear()
    code, out, err = launch(capsys, "delete", "--endpoint-name", "asr-async")
    assert code == 0, err
    assert [(n, p) for n, p in aws.calls if n.startswith("De") and not n.startswith("Describe")] == [
        ("DeleteScalingPolicy", {**target, "PolicyName": "wav2vec2-target-tracking"}),
        ("DeleteScalingPolicy", {**target, "PolicyName": "wav2vec2-scale-out-from-zero"}),
        ("DeregisterScalableTarget", target),
        ("DeleteAlarms", {"AlarmNames": ["asr-async-wav2vec2-has-backlog-without-capacity"]}),
        ("DeleteEndpoint", {"EndpointName": "asr-async"}),
        ("DeleteEndpointConfig", {"EndpointConfigName": "asr-async"}),
        ("DeleteModel", {"ModelName": "asr-async"}),
    ]
    assert leftovers(aws.standin) == []

    aws.calls.clear()  # safe to re-run: nothing to do, nothing attempted, status 0
    code, out, err = launch(capsys, "delete", "--endpoint-name", "asr-async")
    assert code == 0, err
    assert "nothing of asr-async is left" in out
    assert aws.writes() == []


def test_realtime_autoscaling_on_invocations_per_instance(aws, capsys):
    code, _, err = launch(capsys, "deploy", "--model-data", MODEL_DATA, "--endpoint-name", "asr-rt",
                          "--instance-type", INSTANCE, "--instance-count", "2", "--autoscale", "2:6",
                          "--scale-target", "120", "--startup-timeout-s", "900", "--metric-publish-frequency-s", "10")
    assert code == 0, err
    (model,) = aws.params("CreateModel")
    assert "Environment" not in model["PrimaryContainer"]  # real-time: the server's own defaults
    (config,) = aws.params("CreateEndpointConfig")
    assert "AsyncInferenceConfig" not in config
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 2
    assert config["ProductionVariants"][0]["ContainerStartupHealthCheckTimeoutInSeconds"] == 900
    assert config["MetricsConfig"] == {"EnableDetailedObservability": True, "MetricPublishFrequencyInSeconds": 10}
    target = {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/asr-rt/variant/AllTraffic",
              "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}
    assert aws.params("RegisterScalableTarget") == [{**target, "MinCapacity": 2, "MaxCapacity": 6}]
    assert aws.params("PutScalingPolicy") == [{
        **target, "PolicyName": "wav2vec2-target-tracking", "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": 120.0,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": 300, "ScaleOutCooldown": 60}}]
    assert aws.params("PutMetricAlarm") == []  # real-time endpoints never scale from zero


def test_serverless_deploy_sizes_memory_from_the_model(aws, capsys):
    put_model(aws, 20 * 2**20)  # 714 + 2.28 x 20 MB: 1 GB holds it
    code, _, err = launch(capsys, "deploy", "--serverless", "--model-data", MODEL_DATA, "--endpoint-name", "asr-sl",
                          "--max-concurrency", "8", "--provisioned-concurrency", "2", "--no-detailed-metrics")
    assert code == 0, err
    (model,) = aws.params("CreateModel")
    assert model["PrimaryContainer"]["Environment"] == {
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "4", "MODEL_SERVER_TIMEOUT": "60", "MODEL_SERVER_WORKERS": "1"}
    (config,) = aws.params("CreateEndpointConfig")
    assert config == {"EndpointConfigName": "asr-sl", "ProductionVariants": [{
        "VariantName": "AllTraffic", "ModelName": "asr-sl", "InitialVariantWeight": 1,
        "ServerlessConfig": {"MemorySizeInMB": 1024, "MaxConcurrency": 8, "ProvisionedConcurrency": 2}}],
        "MetricsConfig": {"EnableDetailedObservability": False}}


def test_serverless_refuses_a_memory_size_the_model_does_not_fit(aws, capsys):
    put_model(aws, 140 * 2**20)  # needs about 714 + 2.28 x 140 = 1,033 MB
    code, _, err = launch(capsys, "deploy", "--serverless", "--model-data", MODEL_DATA, "--memory-mb", "1024")
    assert code == 2
    assert "--memory-mb 1024 is too small" in err and "use --memory-mb 2048" in err
    assert len(err.strip().splitlines()) == 1
    assert aws.writes() == []  # refused after reading the archive's size, before anything was created

    code, _, err = launch(capsys, "deploy", "--serverless", "--model-data", "s3://my-bucket/no/such/model.tar.gz")
    assert code == 2 and "no such object" in err
    assert aws.writes() == []


def fake_container(delay_s: float = 1.5) -> StandIn:
    """/invocations as the serving program answers: a WAV body gets a transcript after a short delay (so the
    launcher has to wait for the output object), anything else a 400 with a JSON error."""

    def answer(request):
        if request.body.startswith(b"RIFF"):
            time.sleep(delay_s)
            return 200, {"text": "the red cat runs", "audio_seconds": 2.5}, "application/json"
        return 400, {"error": "audio does not decode: not a WAV, FLAC, OGG or MP3 file"}, "application/json"

    container = StandIn(answer)
    container.delay_s = delay_s
    return container


def _async_endpoint(aws: Stand, name: str = "asr-async") -> dict:
    sm = aws.client("sagemaker")
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": IMAGE, "ModelDataUrl": MODEL_DATA})
    config = {"OutputConfig": {"S3OutputPath": f"s3://my-bucket/wav2vec2/async/{name}/output",
                               "S3FailurePath": f"s3://my-bucket/wav2vec2/async/{name}/failure"},
              "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 2}}
    sm.create_endpoint_config(EndpointConfigName=name, AsyncInferenceConfig=config, ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1, "InstanceType": INSTANCE}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    return config


@pytest.fixture
def async_runtime(aws, monkeypatch):
    from local_test.async_local import AsyncEndpoint, AsyncRuntime

    config = _async_endpoint(aws)
    container = fake_container()
    runtime = AsyncRuntime(aws.client("s3"), {"asr-async": AsyncEndpoint(
        container.url, config["OutputConfig"]["S3OutputPath"], config["OutputConfig"]["S3FailurePath"], 2)})
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", runtime.url)
    yield runtime, container
    runtime.close()
    container.close()


def test_invoke_async_uploads_queues_and_waits_for_the_transcript(aws, async_runtime, capsys, tmp_path):
    runtime, container = async_runtime
    clip = tmp_path / "meeting.wav"
    clip.write_bytes(b"RIFF" + os.urandom(5000))
    started = time.monotonic()
    code, out, err = launch(capsys, "invoke", "--async", str(clip), "--endpoint-name", "asr-async")
    assert code == 0, err
    assert out == "the red cat runs\n"  # stdout holds only the transcript
    assert time.monotonic() - started >= container.delay_s  # it waited for the output object
    (request,) = aws.params("InvokeEndpointAsync")
    assert re.fullmatch(r"s3://my-bucket/wav2vec2/async/asr-async/input/[0-9a-f]{12}-meeting\.wav",
                        request.pop("InputLocation"))
    assert request == {"EndpointName": "asr-async", "ContentType": "audio/wav", "Accept": "application/json",
                       "InvocationTimeoutSeconds": 3600}
    assert [(r.headers["content-type"], r.body) for r in container.requests] == [("audio/wav", clip.read_bytes())]  # the uploaded bytes reached the container
    assert runtime.requests[0]["timeout_s"] == 3600
    assert "waiting for the transcript" in err and "queued; output s3://my-bucket/wav2vec2/async/asr-async/output/" in err

    # --json, an object already in S3, and a shorter timeout
    aws.client("s3").put_object(Bucket="my-bucket", Key="calls/day1.flac", Body=b"RIFF" + b"\0" * 100)
    code, out, err = launch(capsys, "invoke", "--async", "s3://my-bucket/calls/day1.flac", "--endpoint-name",
                            "asr-async", "--json", "--invocation-timeout-s", "900", "--request-ttl-s", "3600")
    assert code == 0, err
    assert json.loads(out) == {"text": "the red cat runs", "audio_seconds": 2.5}
    last = aws.params("InvokeEndpointAsync")[-1]
    assert last == {"EndpointName": "asr-async", "InputLocation": "s3://my-bucket/calls/day1.flac",
                    "ContentType": "audio/flac", "Accept": "application/json", "InvocationTimeoutSeconds": 900,
                    "RequestTTLSeconds": 3600}
    assert "PutObject" not in [n for n, _ in aws.calls[-8:]]  # nothing uploaded for an s3:// FILE


def test_invoke_async_reports_the_failure_object(aws, async_runtime, capsys, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"not audio at all")
    code, out, err = launch(capsys, "invoke", "--async", str(bad), "--endpoint-name", "asr-async")
    assert code == 1
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("launch invoke: error: the endpoint failed the request (s3://my-bucket/wav2vec2/async/"
                           "asr-async/failure/")
    assert "audio does not decode" in last


def test_invoke_async_no_wait_prints_the_output_location(aws, async_runtime, capsys, tmp_path):
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"RIFF" + b"\0" * 64)
    code, out, err = launch(capsys, "invoke", "--async", str(clip), "--endpoint-name", "asr-async", "--no-wait")
    assert code == 0, err
    assert re.fullmatch(r"s3://my-bucket/wav2vec2/async/asr-async/output/[\w-]+\.out\n", out)


def test_invoke_async_refuses_an_endpoint_that_is_not_async(aws, capsys, tmp_path):
    sm = aws.client("sagemaker")
    sm.create_model(ModelName="asr-rt", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    sm.create_endpoint_config(EndpointConfigName="asr-rt", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "asr-rt", "InitialInstanceCount": 1, "InstanceType": INSTANCE}])
    sm.create_endpoint(EndpointName="asr-rt", EndpointConfigName="asr-rt")
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"RIFF" + b"\0" * 64)
    code, _, err = launch(capsys, "invoke", "--async", str(clip), "--endpoint-name", "asr-rt")
    assert code == 2 and "endpoint asr-rt is not asynchronous" in err
    assert aws.writes() == []  # nothing uploaded


def test_invoke_refuses_more_than_4_mb_for_a_serverless_endpoint(aws, capsys, tmp_path):
    sm = aws.client("sagemaker")
    sm.create_model(ModelName="asr-sl", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    sm.create_endpoint_config(EndpointConfigName="asr-sl", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "asr-sl",
         "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 5}}])
    sm.create_endpoint(EndpointName="asr-sl", EndpointConfigName="asr-sl")
    clip = tmp_path / "five.wav"
    clip.write_bytes(b"RIFF" + b"\0" * (5 * 2**20))
    code, _, err = launch(capsys, "invoke", str(clip), "--endpoint-name", "asr-sl")
    assert code == 2 and "serverless endpoints take at most 4 MB" in err
    assert aws.params("InvokeEndpoint") == []


def test_mode_settings_are_the_serving_programs_own():
    """The variables deploy sets for --async and --serverless are settings serve/settings.py reads, and the
    values it parses are the AWS limits."""
    from launcher import limits
    from serve.settings import Settings

    for mode, env in hosting.MODE_ENV.items():
        settings = Settings.from_env(env)
        if mode == "async":
            assert settings.max_payload_bytes == limits.ASYNC_MAX_BYTES
            assert settings.timeout_s == limits.INVOCATION_TIMEOUT_RANGE_S[1]
        if mode == "serverless":
            assert settings.max_payload_bytes == limits.SERVERLESS_MAX_BYTES
            assert settings.timeout_s == 60 and settings.workers == 1
    assert scaling.resource_id("e") == "endpoint/e/variant/AllTraffic"


@pytest.fixture
def no_role_simulation(monkeypatch):
    """ModelTrainer checks the role with iam:SimulatePrincipalPolicy, which moto 5.2.5 answers with a 500; the
    SDK's own switch turns that check off (on AWS it stays on)."""
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")


def test_train_sends_the_request_model_trainer_builds(aws, no_role_simulation, capsys):
    """ModelTrainer (SDK v3) builds the CreateTrainingJob request: channels, spot with checkpoints, TensorBoard
    output, metric definitions; the exact --job-name is kept."""
    from launcher.metrics import metric_definitions

    code, out, err = launch(capsys, "train", "--channel", "train=s3://my-bucket/speech/train", "--channel",
                            "test=s3://my-bucket/speech/test", "--hp", "max_steps=20", "--instance-type", INSTANCE,
                            "--instance-count", "2", "--spot", "--max-wait-s", "7200", "--max-run-s", "3600",
                            "--tensorboard", "s3://my-bucket/tb", "--job-name", "asr-train-1", "--no-wait",
                            "--bucket", "my-bucket", "--tag", "team=speech")
    assert code == 0, err
    (job,) = aws.params("CreateTrainingJob")
    assert job["TrainingJobName"] == "asr-train-1"
    assert job["AlgorithmSpecification"] == {
        "TrainingImage": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/wav2vec2-train:latest", "TrainingInputMode": "File",
        "MetricDefinitions": metric_definitions()}
    assert job["HyperParameters"] == {"max_steps": "20"}
    assert [(c["ChannelName"], c["DataSource"]["S3DataSource"]["S3Uri"]) for c in job["InputDataConfig"]] == [
        ("train", "s3://my-bucket/speech/train"), ("test", "s3://my-bucket/speech/test")]
    assert job["ResourceConfig"] == {"InstanceType": INSTANCE, "InstanceCount": 2, "VolumeSizeInGB": 50}
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert job["CheckpointConfig"] == {"S3Uri": "s3://my-bucket/wav2vec2/output/asr-train-1/checkpoints",
                                       "LocalPath": "/opt/ml/checkpoints"}
    assert job["TensorBoardOutputConfig"] == {"S3OutputPath": "s3://my-bucket/tb",
                                              "LocalPath": "/opt/ml/output/tensorboard"}
    assert job["OutputDataConfig"]["S3OutputPath"] == "s3://my-bucket/wav2vec2/output"
    assert job["Tags"] == [{"Key": "team", "Value": "speech"}]
    assert aws.client("sagemaker").describe_training_job(TrainingJobName="asr-train-1")["RoleArn"] == ROLE


def test_train_dry_run_is_the_same_request_without_aws(aws, no_role_simulation, capsys):
    args = ["train", "--channel", "train=s3://my-bucket/speech/train", "--hp", "max_steps=20", "--job-name", "j1",
            "--bucket", "my-bucket", "--instance-type", INSTANCE, "--image", "r.example/wav2vec2-train:1"]
    code, out, err = launch(capsys, *args, "--dry-run")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["operation"] == "CreateTrainingJob" and plan["sdk"].startswith("sagemaker 3.")
    assert aws.calls == []  # nothing reached the stand-in
    code, _, err = launch(capsys, *args, "--no-wait")
    assert code == 0, err
    (sent,) = aws.params("CreateTrainingJob")
    assert {k: v for k, v in plan["request"].items() if k != "RoleArn"} == \
        {k: v for k, v in sent.items() if k != "RoleArn"}


def test_transform_sets_the_machine_image_through_sagemaker_core(aws, capsys):
    code, out, err = launch(capsys, "transform", "--model-data", MODEL_DATA, "--input", "s3://my-bucket/clips/",
                            "--output-path", "s3://my-bucket/out/", "--instance-type", INSTANCE, "--job-name", "tj1",
                            "--no-wait", "--max-payload-mb", "20")
    assert code == 0, err
    (model,) = aws.params("CreateModel")
    assert model["ModelName"] == "tj1" and model["PrimaryContainer"]["Image"] == IMAGE
    (job,) = aws.params("CreateTransformJob")
    assert job == {"TransformJobName": "tj1", "ModelName": "tj1", "MaxPayloadInMB": 20, "BatchStrategy": "SingleRecord",
                   "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                                      "S3Uri": "s3://my-bucket/clips/"}},
                                      "ContentType": "application/octet-stream", "SplitType": "None"},
                   "TransformOutput": {"S3OutputPath": "s3://my-bucket/out/", "Accept": "application/json"},
                   "TransformResources": {"InstanceType": INSTANCE, "InstanceCount": 1,
                                          "TransformAmiVersion": "al2-ami-sagemaker-batch-gpu-535"}}


@pytest.fixture
def recorder():
    """Stands in for SageMaker's runtime (and a local container): records each request."""
    with StandIn(json_answer({"text": "the red cat runs"})) as server:
        yield server


def test_invoke_options_reach_the_server_as_custom_attributes(aws, recorder, monkeypatch, capsys, tmp_path):
    from serve.options import from_header

    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", recorder.url)
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"RIFF" + b"\0" * 64)
    code, out, err = launch(capsys, "invoke", str(clip), "--endpoint-name", "asr", "--option", "timestamps=true",
                            "--option", "hotwords=kwame nkosi,ravi", "--option", "decoder=beam", "--accept", "text/plain")
    assert code == 0, err
    assert out == "the red cat runs\n"
    (_, path, headers, body), = recorder.requests
    assert path == "/endpoints/asr/invocations" and body == clip.read_bytes()
    assert headers["accept"] == "text/plain" and headers["content-type"] == "audio/wav"
    # the serving program's own parser reads back what was sent
    assert from_header(headers["x-amzn-sagemaker-custom-attributes"]) == {
        "timestamps": True, "hotwords": ("kwame nkosi", "ravi"), "decoder": "beam"}


def test_invoke_openai_sends_the_multipart_body(aws, recorder, monkeypatch, capsys, tmp_path):
    import email.parser
    import email.policy

    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", recorder.url)
    clip = tmp_path / "a.flac"
    clip.write_bytes(b"fLaC" + os.urandom(200))
    code, _, err = launch(capsys, "invoke", str(clip), "--endpoint-name", "asr", "--openai", "--option", "language=fra")
    assert code == 0, err
    (_, _, headers, body), = recorder.requests
    assert headers["content-type"].startswith("multipart/form-data; boundary=")
    assert "x-amzn-sagemaker-custom-attributes" not in headers
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {headers['content-type']}\r\n\r\n".encode() + body)
    fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
    assert fields["model"].get_content().strip() == "wav2vec2" and fields["language"].get_content().strip() == "fra"
    assert fields["file"].get_filename() == "a.flac" and fields["file"].get_content_type() == "audio/flac"
    assert fields["file"].get_payload(decode=True) == clip.read_bytes()


def test_invoke_local_sends_the_same_header(recorder, capsys, tmp_path):
    port = recorder.server_address[1]
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"RIFF" + b"\0" * 64)
    code, out, err = launch(capsys, "invoke", str(clip), "--local", "--serving-port", str(port), "--option",
                            "language=fra", "--json")
    assert code == 0, err
    (_, path, headers, _), = recorder.requests
    assert path == "/invocations" and headers["x-amzn-sagemaker-custom-attributes"] == "language=fra"
    assert json.loads(out) == {"text": "the red cat runs"}
