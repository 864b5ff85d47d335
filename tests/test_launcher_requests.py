"""What the launcher asks SageMaker for: the real launcher, SDK and botocore send their requests over HTTP to a
loopback recorder standing in for the AWS endpoints (AWS_ENDPOINT_URL), since AWS itself is out of reach here.
The recorder answers STS GetCallerIdentity and the few calls whose answers the SDK needs to go on, and refuses
the rest, so each test checks the request bodies the launcher builds (not AWS's behaviour). Endpoints (deploy,
invoke, delete, autoscaling) are tested against moto's stateful stand-in in test_launcher_hosting.py."""
from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ROOT
from test_launcher_cli import ROLE, clean_env

ACCOUNT = "123456789012"
STS_REPLY = (f'<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult>'
             f'<Arn>arn:aws:iam::{ACCOUNT}:user/test</Arn><UserId>TEST</UserId><Account>{ACCOUNT}</Account>'
             f'</GetCallerIdentityResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>'
             f'</GetCallerIdentityResponse>').encode()
# Minimal answers that let the SDK proceed to its next call.
REPLIES = {
    "CreateModel": {"ModelArn": "arn:aws:sagemaker:eu-west-1:123456789012:model/m"},
    "CreateTransformJob": {"TransformJobArn": "a"},
}


class Recorder(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.calls: list[tuple[str, dict]] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def bodies(self, action: str) -> list[dict]:
        return [body for name, body in self.calls if name == action]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if b"Action=GetCallerIdentity" in body:
            return self._reply(200, STS_REPLY, "text/xml")
        action = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
        self.server.calls.append((action, json.loads(body or b"{}")))
        if action in REPLIES:
            return self._reply(200, json.dumps(REPLIES[action]).encode())
        self._reply(400, json.dumps({"__type": "ValidationException", "message": f"recorder stops at {action}"}).encode())

    def _reply(self, status: int, payload: bytes, ctype: str = "application/x-amz-json-1.1"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    server = Recorder()
    yield server
    server.shutdown()
    server.server_close()


def launch(recorder: Recorder, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = clean_env(tmp_path, AWS_ENDPOINT_URL=recorder.url, AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
                    AWS_SECRET_ACCESS_KEY="example", AWS_REGION="eu-west-1", SAGEMAKER_ROLE_ARN=ROLE)
    return subprocess.run([str(ROOT / "launcher" / "launch"), *args, "--bucket", "my-bucket"], capture_output=True,
                          text=True, env=env, timeout=120)


def test_training_job_request(recorder, tmp_path):
    from train.progress import METRIC_DEFINITIONS

    r = launch(recorder, tmp_path, "train", "--channel", "train=s3://my-bucket/speech/train",
               "--channel", "test=s3://my-bucket/speech/test", "--hp", "max_steps=10", "--instance-count", "2",
               "--spot", "--max-run-s", "3600", "--max-wait-s", "7200", "--output-path", "s3://my-bucket/out",
               "--job-name", "asr-job", "--env", "NCCL_DEBUG=INFO")
    assert r.returncode == 1 and "recorder stops at CreateTrainingJob" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    (job,) = recorder.bodies("CreateTrainingJob")
    algo = job["AlgorithmSpecification"]
    assert algo["TrainingImage"] == f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/wav2vec2-train:latest"
    assert algo["MetricDefinitions"] == METRIC_DEFINITIONS
    assert job["RoleArn"] == ROLE and job["TrainingJobName"] == "asr-job"
    assert job["ResourceConfig"]["InstanceCount"] == 2
    assert job["HyperParameters"] == {"max_steps": "10"}
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert job["CheckpointConfig"]["S3Uri"] == "s3://my-bucket/out/asr-job/checkpoints"
    assert job["Environment"] == {"NCCL_DEBUG": "INFO"}
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in job["InputDataConfig"]}
    assert channels["train"]["S3Uri"] == "s3://my-bucket/speech/train"
    assert channels["test"]["S3DataDistributionType"] == "FullyReplicated"


def test_transform_request_leaves_limits_to_execution_parameters(recorder, tmp_path):
    r = launch(recorder, tmp_path, "transform", "--model-data", "s3://my-bucket/m/model.tar.gz",
               "--input", "s3://my-bucket/clips/", "--output-path", "s3://my-bucket/transcripts/", "--job-name", "tj",
               "--no-wait")  # waiting starts with a 10 s sleep in the SDK
    assert r.returncode == 0, r.stderr
    (job,) = recorder.bodies("CreateTransformJob")
    assert job["BatchStrategy"] == "SingleRecord"
    assert "SplitType" not in job["TransformInput"]  # one whole file per record
    assert job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://my-bucket/clips/"
    assert job["TransformOutput"] == {"S3OutputPath": "s3://my-bucket/transcripts/", "Accept": "application/json"}
    # Unset, so SageMaker asks the container's GET /execution-parameters.
    assert "MaxConcurrentTransforms" not in job and "MaxPayloadInMB" not in job

    recorder.calls.clear()
    launch(recorder, tmp_path, "transform", "--model-data", "s3://my-bucket/m/model.tar.gz",
           "--input", "s3://my-bucket/clips/", "--job-name", "tj2", "--max-concurrent", "4", "--max-payload-mb", "50",
           "--no-wait")
    (job,) = recorder.bodies("CreateTransformJob")
    assert (job["MaxConcurrentTransforms"], job["MaxPayloadInMB"]) == (4, 50)
    assert job["TransformOutput"]["S3OutputPath"] == "s3://my-bucket/wav2vec2/transform/tj2"
