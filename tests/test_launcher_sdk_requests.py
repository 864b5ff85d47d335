"""What the launcher asks SageMaker for: the real launcher, SDK and botocore send their requests over HTTP to a
loopback recorder standing in for the AWS endpoints (AWS_ENDPOINT_URL), since AWS itself is out of reach here.
The recorder answers STS GetCallerIdentity and the few calls whose answers the SDK needs to go on, and refuses
the rest, so each test checks the request bodies the launcher builds (not AWS's behaviour). Training and
transform requests (machine image included) are checked against moto in test_launcher_sdk_hosting.py. Endpoints (deploy,
invoke, delete, autoscaling) are tested against moto's stateful stand-in in test_launcher_sdk_hosting.py. Runs in .venv-launch (SDK v3)."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import ROOT
from stand_ins import StandIn
from test_launcher_cli import ROLE, clean_env

ACCOUNT = "123456789012"
STS_REPLY = (f'<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult>'
             f'<Arn>arn:aws:iam::{ACCOUNT}:user/test</Arn><UserId>TEST</UserId><Account>{ACCOUNT}</Account>'
             f'</GetCallerIdentityResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>'
             f'</GetCallerIdentityResponse>').encode()
# Minimal answers that let the SDK proceed to its next call.
REPLIES = {
    "CreateModel": {"ModelArn": "arn:aws:sagemaker:eu-west-1:123456789012:model/m"},
    # sagemaker.core's Model.create describes what it created
    "DescribeModel": {"ModelName": "m", "ModelArn": "arn:aws:sagemaker:eu-west-1:123456789012:model/m",
                      "CreationTime": 0},
    "CreateTransformJob": {"TransformJobArn": "a"},
    "CreateTrainingJob": {"TrainingJobArn": "a"},
}


class Recorder(StandIn):
    """The SageMaker and STS APIs: answers the calls in REPLIES and records each call's action and JSON body; any
    other call gets a ValidationException (the launcher stops there)."""

    def __init__(self):
        super().__init__(self._answer)
        self.calls: list[tuple[str, dict]] = []

    def bodies(self, action: str) -> list[dict]:
        return [body for name, body in self.calls if name == action]

    def _answer(self, request):
        if b"Action=GetCallerIdentity" in request.body:
            return 200, STS_REPLY, "text/xml"
        action = request.headers.get("x-amz-target", "").rpartition(".")[2]
        self.calls.append((action, json.loads(request.body or b"{}")))
        if action in REPLIES:
            return 200, REPLIES[action], "application/x-amz-json-1.1"
        return 400, {"__type": "ValidationException", "message": f"recorder stops at {action}"}, \
            "application/x-amz-json-1.1"


@pytest.fixture
def recorder():
    with Recorder() as server:
        yield server


def launch(recorder: Recorder, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = clean_env(tmp_path, AWS_ENDPOINT_URL=recorder.url, AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
                    AWS_SECRET_ACCESS_KEY="example", AWS_REGION="eu-west-1", SAGEMAKER_ROLE_ARN=ROLE)
    return subprocess.run([str(ROOT / "launcher" / "launch"), *args, "--bucket", "my-bucket"], capture_output=True,
                          text=True, env=env, timeout=120)






# --- The machine image (NVIDIA driver) of GPU endpoints and transform jobs -------------------------------------------
# In this process (the SDK is imported once): the recorder answers CreateModel and CreateTransformJob and stops a
# deploy at CreateEndpointConfig, whose body it has recorded by then.

GPU_2, BATCH_535 = "al2-ami-sagemaker-inference-gpu-2", "al2-ami-sagemaker-batch-gpu-535"


@pytest.fixture
def launch_here(recorder, tmp_path, monkeypatch, capsys):
    from launcher import cli

    env = clean_env(tmp_path, AWS_ENDPOINT_URL=recorder.url, AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
                    AWS_SECRET_ACCESS_KEY="example", AWS_REGION="eu-west-1", SAGEMAKER_ROLE_ARN=ROLE)
    for name in [n for n in os.environ if n.startswith(("AWS_", "SAGEMAKER_"))]:
        monkeypatch.delenv(name)
    for name in ("HOME", *[n for n in env if n.startswith(("AWS_", "SAGEMAKER_"))]):
        monkeypatch.setenv(name, env[name])

    def run(*args: str) -> tuple[int, str]:
        recorder.calls.clear()
        code = cli.main([*args, "--bucket", "my-bucket"])
        return code, capsys.readouterr().out

    return run


@pytest.mark.parametrize("instance_type,extra,ami,why", [
    # default driver 470 (AWS's table): the launcher asks for driver 535
    ("ml.g5.xlarge", [], GPU_2, "ml.g5 runs driver 470 by default"),
    ("ml.g4dn.xlarge", ["--async"], GPU_2, "ml.g4dn runs driver 470 by default"),
    ("ml.p3.2xlarge", [], GPU_2, "ml.p3 runs driver 470 by default"),
    ("ml.p4d.24xlarge", [], GPU_2, "ml.p4d runs driver 470 by default"),
    # default driver new enough, or no GPU: SageMaker's default image
    ("ml.g6.xlarge", [], None, "ml.g6 runs NVIDIA driver 535, enough"),
    ("ml.p5.48xlarge", ["--async"], None, "ml.p5 runs NVIDIA driver 535, enough"),
    ("ml.c5.xlarge", [], None, None),
    # the user's choice wins
    ("ml.g5.xlarge", ["--inference-ami-version", "al2-ami-sagemaker-inference-gpu-3-1"],
     "al2-ami-sagemaker-inference-gpu-3-1", "NVIDIA driver 550, from --inference-ami-version"),
])
def test_endpoint_machine_image_follows_the_instance_family(recorder, launch_here, instance_type, extra, ami, why):
    code, out = launch_here("deploy", "--model-data", "s3://my-bucket/m/model.tar.gz", "--endpoint-name", "asr",
                            "--instance-type", instance_type, "--no-wait", *extra)
    assert code == 1  # the recorder refuses CreateEndpointConfig after recording it
    (config,) = recorder.bodies("CreateEndpointConfig")
    (variant,) = config["ProductionVariants"]
    assert variant["InstanceType"] == instance_type
    assert variant.get("InferenceAmiVersion") == ami
    assert ("AsyncInferenceConfig" in config) == ("--async" in extra)
    (line,) = [x for x in out.splitlines() if x.startswith("[launch] deploying")]
    if why is None:
        assert line.endswith(f"image {ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/wav2vec2-serve:latest")
    else:
        assert why in line and (ami is None or f"machine image {ami}" in line), line






def test_machine_image_tables_match_what_the_api_accepts():
    """InferenceAmiVersion is an enum in botocore's service model: the launcher's table holds exactly its values.
    TransformAmiVersion is a free string: the launcher's values are the documented ones and fit its pattern."""
    import re

    import botocore.session

    from launcher import limits

    model = botocore.session.get_session().get_service_model("sagemaker")
    assert set(limits.INFERENCE_AMI_VERSIONS) == set(model.shape_for("ProductionVariantInferenceAmiVersion").enum)
    shape = model.shape_for("TransformResources").members["TransformAmiVersion"]
    for name in limits.TRANSFORM_AMI_VERSIONS:
        assert name in shape.documentation and re.fullmatch(shape.metadata["pattern"], name)
    for table in (limits.ENDPOINT_DEFAULT_DRIVER, limits.TRANSFORM_DEFAULT_DRIVER):
        for fam, driver in table.items():
            if driver < limits.IMAGES_MIN_DRIVER and fam not in limits.UNUSABLE_FAMILIES:  # the pick covers them
                assert fam in limits.INFERENCE_AMI_VERSIONS[limits.ENDPOINT_AMI].families
