#!/usr/bin/env python3
"""An asynchronous SageMaker endpoint on this machine: the serving container, with S3 and SageMaker's request
queue stood in for, driven by the launcher's own `deploy --async`, `invoke --async` and `delete`.

What stands in for AWS:
  - moto's server (the AWS mocking library, requirements/dev.txt) for S3, STS, the SageMaker control plane,
    Application Auto Scaling and CloudWatch: `deploy --async --autoscale 0:2` creates its model, endpoint config,
    endpoint, scalable target, policies and alarm there, and `delete` must leave none of them;
  - AsyncRuntime (below) for SageMaker's asynchronous runtime: InvokeEndpointAsync answers 202 with the output
    and failure locations, queues the request, and up to MaxConcurrentInvocationsPerInstance workers read the
    input object, POST it to the container's /invocations with the request's Content-Type (waiting up to
    InvocationTimeoutSeconds), and write the answer to S3OutputPath/ID.out, or the failure to
    S3FailurePath/ID-error.out, as SageMaker does.
The container is started as SageMaker would start it from the endpoint's model: the Environment that
`deploy --async` set (payload cap and timeout raised to the async limits), model.tar.gz from (stand-in) S3
extracted at /opt/ml/model, `docker run IMAGE serve`.

The proof (`python local_test/async_local.py --serve-image IMAGE --model-dir DIR`): a recording of a few
minutes of synthetic speech (over real-time's 6 MB) is transcribed through `invoke --async` with the one-hour
invocation timeout, and the transcript equals the container's answer to the same bytes posted directly; a file
that is not audio comes back as the failure object (exit status 1); `delete` leaves nothing behind.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account
ROLE = f"arn:aws:iam::{ACCOUNT}:role/Wav2Vec2SageMaker"
BUCKET = "wav2vec2-local"
ENDPOINT = "local-async"


@dataclass
class AsyncEndpoint:
    """What SageMaker knows of one async endpoint: where its container listens and its AsyncInferenceConfig."""

    container_url: str  # http://127.0.0.1:PORT
    output_path: str
    failure_path: str
    max_concurrent: int = 1


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


class AsyncRuntime(ThreadingHTTPServer):
    """InvokeEndpointAsync for the endpoints given, on a loopback port (AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME)."""

    def __init__(self, s3_client, endpoints: dict[str, AsyncEndpoint]):
        super().__init__(("127.0.0.1", 0), _RuntimeHandler)
        self.s3 = s3_client
        self.endpoints = endpoints
        self.requests: list[dict] = []  # what each InvokeEndpointAsync carried
        self.queues = {name: queue.Queue() for name in endpoints}
        for name, endpoint in endpoints.items():
            for _ in range(endpoint.max_concurrent):
                threading.Thread(target=self._work, args=(name,), daemon=True).start()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        for q in self.queues.values():
            for _ in range(64):
                q.put(None)
        self.shutdown()
        self.server_close()

    def _work(self, name: str) -> None:
        endpoint = self.endpoints[name]
        while True:
            job = self.queues[name].get()
            if job is None:
                return
            try:
                body = self.s3.get_object(Bucket=_split(job["input"])[0], Key=_split(job["input"])[1])["Body"].read()
                request = urllib.request.Request(f"{endpoint.container_url}/invocations", data=body, method="POST",
                                                 headers={"Content-Type": job["content_type"],
                                                          "Accept": job["accept"]})
                try:
                    with urllib.request.urlopen(request, timeout=job["timeout_s"]) as response:
                        answer, failed = response.read(), None
                except urllib.error.HTTPError as exc:
                    answer, failed = None, f"Received client error ({exc.code}) from the model with message " \
                                           f"\"{exc.read().decode(errors='replace')}\""
                except (TimeoutError, OSError) as exc:
                    answer, failed = None, f"the model did not answer within {job['timeout_s']} s ({exc})"
            except Exception as exc:  # the input object cannot be read
                answer, failed = None, f"cannot read {job['input']}: {exc}"
            target = job["failure"] if failed else job["output"]
            bucket, key = _split(target)
            self.s3.put_object(Bucket=bucket, Key=key, Body=failed.encode() if failed else answer)


class _RuntimeHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        parts = urlparse(self.path).path.strip("/").split("/")
        self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        if len(parts) != 3 or parts[0] != "endpoints" or parts[2] != "async-invocations":
            return self._error(404, "UnknownOperationException", f"no such operation: {self.path}")
        name = unquote(parts[1])
        endpoint = self.server.endpoints.get(name)
        if endpoint is None:
            return self._error(400, "ValidationError", f"Endpoint {name} of account {ACCOUNT} not found.")
        h = self.headers
        inference_id = h.get("X-Amzn-SageMaker-Inference-Id") or str(uuid.uuid4())
        job = {"endpoint": name, "input": h.get("X-Amzn-SageMaker-InputLocation"),
               "content_type": h.get("X-Amzn-SageMaker-Content-Type", "application/octet-stream"),
               "accept": h.get("X-Amzn-SageMaker-Accept", "application/json"),
               "timeout_s": int(h.get("X-Amzn-SageMaker-InvocationTimeoutSeconds", 900)),
               "ttl_s": h.get("X-Amzn-SageMaker-RequestTTLSeconds"),
               "output": f"{endpoint.output_path.rstrip('/')}/{inference_id}.out",
               "failure": f"{endpoint.failure_path.rstrip('/')}/{inference_id}-error.out"}
        if not job["input"]:
            return self._error(400, "ValidationError", "InputLocation is required")
        self.server.requests.append(job)
        self.server.queues[name].put(job)
        payload = json.dumps({"InferenceId": inference_id}).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Amzn-SageMaker-OutputLocation", job["output"])
        self.send_header("X-Amzn-SageMaker-FailureLocation", job["failure"])
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: int, kind: str, message: str):
        payload = json.dumps({"message": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("x-amzn-ErrorType", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


class AwsStandIn:
    """moto's server on a loopback port, plus the environment that sends the launcher's AWS calls to it."""

    def __init__(self):
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"

    def client(self, service: str):
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name=REGION, aws_access_key_id="local",
                            aws_secret_access_key="local")

    def env(self, runtime_url: str | None = None, home: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
        env.update(AWS_ENDPOINT_URL=self.url, AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local",
                   AWS_REGION=REGION, AWS_EC2_METADATA_DISABLED="true", SAGEMAKER_ROLE_ARN=ROLE)
        if home:  # no user AWS or SDK config files
            env.update(HOME=home, AWS_CONFIG_FILE=f"{home}/none", AWS_SHARED_CREDENTIALS_FILE=f"{home}/none")
        if runtime_url:
            env["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] = runtime_url
        return env

    def stop(self) -> None:
        self.server.stop()


def launch(*args: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    print("$ launcher/launch " + " ".join(args), flush=True)
    r = subprocess.run([str(ROOT / "launcher" / "launch"), *args], capture_output=True, text=True, env=env,
                       timeout=timeout)
    sys.stdout.write(r.stdout)
    sys.stdout.write(r.stderr)
    return r


def leftovers(aws: AwsStandIn) -> list[str]:
    """Everything of the endpoint still known to the stand-in's SageMaker, Auto Scaling and CloudWatch."""
    sm, aas, cw = aws.client("sagemaker"), aws.client("application-autoscaling"), aws.client("cloudwatch")
    left = [f"endpoint {e['EndpointName']}" for e in sm.list_endpoints()["Endpoints"]]
    left += [f"endpoint config {c['EndpointConfigName']}" for c in sm.list_endpoint_configs()["EndpointConfigs"]]
    left += [f"model {m['ModelName']}" for m in sm.list_models()["Models"]]
    left += [f"scalable target {t['ResourceId']}"
             for t in aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]]
    left += [f"scaling policy {p['PolicyName']}"
             for p in aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]]
    left += [f"alarm {a['AlarmName']}" for a in cw.describe_alarms()["MetricAlarms"]]
    return left


def start_container(docker: str, aws: AwsStandIn, name: str, work: Path, image: str | None) -> tuple[str, str]:
    """The serving container as SageMaker starts it for the endpoint's model; returns (container id, url)."""
    sm, s3 = aws.client("sagemaker"), aws.client("s3")
    config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(EndpointName=name)["EndpointConfigName"])
    container = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])["PrimaryContainer"]
    model_dir = work / "opt_ml_model"
    model_dir.mkdir(parents=True, exist_ok=True)
    archive = work / "model.tar.gz"
    bucket, key = _split(container["ModelDataUrl"])
    s3.download_file(bucket, key, str(archive))
    with tarfile.open(archive) as tar:
        tar.extractall(model_dir, filter="data")
    os.chmod(model_dir, 0o755)
    env_args = [a for k, v in container.get("Environment", {}).items() for a in ("-e", f"{k}={v}")]
    run = subprocess.run([docker, "run", "-d", "--rm", "-p", "127.0.0.1::8080", *env_args, "-v",
                          f"{model_dir}:/opt/ml/model:ro", image or container["Image"], "serve"],
                         capture_output=True, text=True, check=True)
    cid = run.stdout.strip()
    port = subprocess.run([docker, "port", cid, "8080/tcp"], capture_output=True, text=True,
                          check=True).stdout.split()[0].rsplit(":", 1)[1]
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                if r.status == 200:
                    return cid, url
        except OSError:
            pass
        time.sleep(0.5)
    logs = subprocess.run([docker, "logs", cid], capture_output=True, text=True).stderr[-3000:]
    subprocess.run([docker, "rm", "-f", cid], capture_output=True)
    raise RuntimeError(f"the serving container did not pass /ping within 180 s:\n{logs}")


def make_recording(work: Path, minutes: float, clips_dir: Path | None = None) -> Path:
    """Speech clips (clips_dir, else 24 made with local_test/make_dataset.py) joined to `minutes` of 16 kHz 16-bit
    WAV with sox."""
    import soundfile as sf

    if clips_dir is None:
        clips_dir = work / "speech"
        subprocess.run([sys.executable, str(ROOT / "local_test" / "make_dataset.py"), str(clips_dir), "--train", "24",
                        "--test", "1"], check=True, capture_output=True)
    clips = sorted(Path(clips_dir).rglob("*.wav"))
    if not clips:
        raise SystemExit(f"no .wav clips under {clips_dir}")
    total, parts = 0.0, []
    while total < minutes * 60:
        for clip in clips:
            parts.append(str(clip))
            total += sf.info(str(clip)).duration
            if total >= minutes * 60:
                break
    out = work / "recording.wav"
    subprocess.run(["sox", *parts, "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve-image", default="wav2vec2-serve:latest", help="the serving image (default %(default)s)")
    p.add_argument("--model-dir", type=Path, required=True, help="a model directory (save_pretrained, safetensors)")
    p.add_argument("--minutes", type=float, default=4.0, help="length of the recording (default 4: about 7.7 MB)")
    p.add_argument("--clips", type=Path, default=None,
                   help="a folder of .wav speech clips to join (default: synthesise 24 with make_dataset.py)")
    p.add_argument("--work", type=Path, default=None, help="keep files here (default: a temporary folder)")
    p.add_argument("--docker", default=shutil.which("docker") or "docker")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="wav2vec2-async-"))
    work.mkdir(parents=True, exist_ok=True)
    aws = AwsStandIn()
    runtime, cid = None, None
    try:
        s3 = aws.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        archive = work / "upload" / "model.tar.gz"
        archive.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "w:gz") as tar:
            for f in sorted(args.model_dir.iterdir()):
                tar.add(f, arcname=f.name)
        s3.upload_file(str(archive), BUCKET, "models/model.tar.gz")
        env = aws.env(home=str(work))
        r = launch("deploy", "--async", "--model-data", f"s3://{BUCKET}/models/model.tar.gz", "--endpoint-name",
                   ENDPOINT, "--image", args.serve_image, "--instance-type", "ml.c5.xlarge", "--bucket", BUCKET,
                   "--autoscale", "0:2", env=env)
        if r.returncode != 0:
            raise SystemExit("deploy --async failed")
        sm = aws.client("sagemaker")
        config_name = sm.describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"]
        config = sm.describe_endpoint_config(EndpointConfigName=config_name)["AsyncInferenceConfig"]
        cid, url = start_container(args.docker, aws, ENDPOINT, work, args.serve_image)
        print(f"[async_local] serving container {cid[:12]} on {url}, environment from the endpoint's model", flush=True)
        runtime = AsyncRuntime(s3, {ENDPOINT: AsyncEndpoint(
            url, config["OutputConfig"]["S3OutputPath"], config["OutputConfig"]["S3FailurePath"],
            config.get("ClientConfig", {}).get("MaxConcurrentInvocationsPerInstance", 1))})
        env = aws.env(runtime.url, home=str(work))

        recording = make_recording(work, args.minutes, args.clips)
        size_mb = recording.stat().st_size / 2**20
        audio_s = __import__("soundfile").info(str(recording)).duration
        print(f"[async_local] recording {recording}: {audio_s:.0f} s, {size_mb:.1f} MB", flush=True)
        started = time.monotonic()
        r = launch("invoke", "--async", str(recording), "--endpoint-name", ENDPOINT, "--json", env=env)
        if r.returncode != 0:
            raise SystemExit("invoke --async failed")
        answer = json.loads(r.stdout)
        print(f"[async_local] invoke --async: {audio_s:.0f} s of audio transcribed in "
              f"{time.monotonic() - started:.1f} s, InvocationTimeoutSeconds "
              f"{runtime.requests[-1]['timeout_s']}", flush=True)
        direct = urllib.request.Request(f"{url}/invocations", data=recording.read_bytes(), method="POST",
                                        headers={"Content-Type": "audio/wav"})
        with urllib.request.urlopen(direct, timeout=600) as resp:
            expected = json.loads(resp.read())
        if answer != expected:
            raise SystemExit(f"the async answer differs from the container's own:\n{answer}\n{expected}")
        print(f"[async_local] transcript equals the container's direct answer ({len(answer['text'])} characters, "
              f"audio_seconds {answer['audio_seconds']})", flush=True)

        bad = work / "not-audio.wav"
        bad.write_bytes(b"this is not audio" * 100)
        r = launch("invoke", "--async", str(bad), "--endpoint-name", ENDPOINT, env=env)
        if r.returncode != 1 or "the endpoint failed the request" not in r.stderr:
            raise SystemExit("a bad recording did not come back as a failure object")
        print("[async_local] a file that is not audio came back as the failure object (exit status 1)", flush=True)

        for attempt in (1, 2):  # the second delete must find nothing and succeed
            r = launch("delete", "--endpoint-name", ENDPOINT, env=env)
            if r.returncode != 0:
                raise SystemExit(f"delete (run {attempt}) failed")
        left = leftovers(aws)
        if left:
            raise SystemExit(f"delete left: {', '.join(left)}")
        print("[async_local] delete removed everything deploy created; a second delete found nothing", flush=True)
        return 0
    finally:
        if runtime:
            runtime.close()
        if cid:
            subprocess.run([args.docker, "rm", "-f", cid], capture_output=True)
        aws.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
