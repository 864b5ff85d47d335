#!/usr/bin/env python3
"""Prove the launcher against the real images in local mode (SageMaker Python SDK v3).

  1. `launch train --local --instance-count 2`: the SDK's ModelTrainer local container mode (docker compose):
     two training containers on one Docker network, one torch.distributed job across them (the program reads
     resourceconfig.json), one model.tar.gz
  2. `launch deploy --local`: the serving container (docker run: v3's local endpoint serves only its own model
     servers, README says why), /ping healthy; `launch invoke --local` with a held-out clip returns a transcript
  3. `launch transform --local` over a folder of clips: one transcript file per clip
  4. nothing the run started is left running

Needs: a running Docker engine, docker compose (local_test/ensure_compose.sh installs it), the images
wav2vec2-train:latest and wav2vec2-serve:latest (./quickstart.sh or ./build_and_push.sh --local builds them;
--train-image/--serve-image pick others).
No AWS account: the launcher's local mode uses placeholder credentials and blocks every AWS endpoint.
Usage: local_test/sdk_local_mode.py [--work DIR] [--max-steps N] [--instance-count N]
Exits non-zero, saying which step failed, if any check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common.ports import free_port  # noqa: E402

LAUNCH = ROOT / "launcher" / "launch"
# Container names: docker compose's PROJECT-algo-<n>-<index> for the SDK v3's training hosts (PROJECT: the
# output folder's name), wav2vec2-local-NAME for the launcher's local endpoints and transforms.
SDK_CONTAINER = re.compile(r"(^.+-algo-\d+-\d+$)|(^wav2vec2-local-.+$)")


class ProofError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[local-mode] {msg}", flush=True)


def sdk_containers(all_states: bool = False) -> set[str]:
    cmd = ["docker", "ps", "--format", "{{.Names}}"] + (["-a"] if all_states else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return {n for n in out.split() if SDK_CONTAINER.match(n)}


def launch(*args: str, log_file: Path, timeout_s: float) -> tuple[str, str]:
    """Run the launcher; (stdout, stdout + stderr). Both also go to log_file, and the tail into the error."""
    proc = subprocess.run([str(LAUNCH), *args], capture_output=True, text=True, timeout=timeout_s)
    log_file.write_text(proc.stdout + proc.stderr)
    both = proc.stdout + proc.stderr
    if proc.returncode != 0:
        # The containers' output goes to stdout, the SDK's own log (mostly the compose file) to stderr:
        # show the end of both, or the reason a container failed is buried under the compose file.
        raise ProofError(f"`launch {' '.join(args[:1])}` exited {proc.returncode}; see {log_file}\n"
                         f"--- last lines of its stdout (container output):\n"
                         + "\n".join(proc.stdout.splitlines()[-60:])
                         + "\n--- last lines of its stderr:\n" + "\n".join(proc.stderr.splitlines()[-8:]))
    return proc.stdout, both


def check_prerequisites(images: list[str]) -> None:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        raise ProofError("no running Docker engine (`docker info` fails)")
    compose = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if "v2" not in compose.stdout and shutil.which("docker-compose") is None:
        raise ProofError("docker compose is missing: run local_test/ensure_compose.sh")
    for image in images:
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
            raise ProofError(f"image {image} is not built: build it first (build_and_push.sh --local)")


def step_train(work: Path, data: Path, args) -> Path:
    out = work / "train-output"
    hps = {"max_steps": args.max_steps, "train_batch_size": 4, "eval_batch_size": 4, "learning_rate": 5e-4,
           "warmup_steps": 0, "logging_steps": 5, "save_steps": 1000, "seed": 0, "eval_steps": args.max_steps}
    cmd = ["train", "--local", "--image", args.train_image, "--instance-count", str(args.instance_count),
           "--channel", f"train={data / 'train'}", "--channel", f"test={data / 'test'}",
           "--channel", f"model={ROOT / 'local_test' / 'tiny_model'}", "--output-path", str(out),
           "--env", "OMP_NUM_THREADS=1", "--job-name", "sdk-local-proof"]
    for k, v in hps.items():
        cmd += ["--hp", f"{k}={v}"]
    t0 = time.monotonic()
    stdout, text = launch(*cmd, log_file=work / "train.log", timeout_s=args.timeout_s)
    log(f"training finished in {time.monotonic() - t0:.0f} s")
    # Two hosts in one job: the compose file names both, and both containers logged the same torch job.
    # Compose v2 names containers algo-1-1, v1 (docker-compose) algo-1_1; either may colour its prefixes.
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    hosts = sorted(set(re.findall(r"\b(algo-\d+)[-_]\d+\s*\|", plain)))
    if len(hosts) < args.instance_count:
        raise ProofError(f"expected {args.instance_count} training hosts in the log, saw {hosts}")
    # Each host's training program starts torchrun for the same multi-node job; torchrun only proceeds
    # once all nodes have joined the rendezvous, so a finished job means they trained together.
    ranks = sorted(set(re.findall(rf"--nnodes={args.instance_count} --node_rank=(\d+)", text)))
    log(f"training hosts: {hosts}; torchrun node ranks started: {ranks}")
    if args.instance_count > 1 and ranks != [str(i) for i in range(args.instance_count)]:
        raise ProofError(f"expected torchrun --nnodes={args.instance_count} on node ranks 0..{args.instance_count - 1}, "
                         f"saw {ranks} (see {work / 'train.log'})")
    artifact_uri = stdout.strip().splitlines()[-1]
    if not artifact_uri.startswith("file://") or not artifact_uri.endswith("model.tar.gz"):
        raise ProofError(f"the launcher did not print a model artifact URI, last line: {artifact_uri!r}")
    artifact = Path(artifact_uri[len("file://"):])
    artifacts = list(out.rglob("model.tar.gz"))
    if artifacts != [artifact]:
        raise ProofError(f"expected exactly one model.tar.gz ({artifact}), found {artifacts}")
    with tarfile.open(artifact) as tar:
        names = sorted(m.name.lstrip("./") for m in tar.getmembers() if m.isfile())
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise ProofError(f"model.tar.gz lacks config.json or safetensors weights: {names}")
    log(f"one model artifact: {artifact} ({artifact.stat().st_size / 1e6:.1f} MB, {len(names)} files)")
    return artifact


def wait_ping(port: int, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ProofError(f"`launch deploy --local` exited {proc.returncode} before the endpoint was healthy")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise ProofError(f"/ping on port {port} not healthy after {timeout_s:.0f} s")


def step_deploy_invoke(work: Path, data: Path, artifact: Path, args) -> str:
    port = free_port()
    clip = sorted((data / "test" / "audio").glob("*.wav"))[0]
    log_file = work / "deploy.log"
    with log_file.open("w") as f:
        proc = subprocess.Popen([str(LAUNCH), "deploy", "--local", "--image", args.serve_image, "--model-data",
                                 str(artifact), "--serving-port", str(port), "--endpoint-name", "sdk-local-proof",
                                 "--env", "MODEL_SERVER_WORKERS=1"], stdout=f, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        wait_ping(port, proc, args.timeout_s)
        log(f"endpoint healthy on port {port} after {time.monotonic() - t0:.0f} s")
        answer, _ = launch("invoke", "--local", "--serving-port", str(port), "--json", str(clip),
                           log_file=work / "invoke.log", timeout_s=120)
        try:
            body = json.loads(answer)
        except json.JSONDecodeError:
            raise ProofError(f"invoke printed no JSON: {answer[:300]!r}") from None
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise ProofError(f"invoke did not return a transcript object: {answer[:300]}")
        log(f"invoke {clip.name}: {body['text']!r}")
        return body["text"]
    finally:
        proc.send_signal(signal.SIGTERM)  # the launcher removes its local endpoint on SIGTERM
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise ProofError("`launch deploy --local` did not stop within 90 s of SIGTERM")
        if proc.returncode not in (0, -signal.SIGTERM):
            raise ProofError(f"`launch deploy --local` ended with {proc.returncode}; see {log_file}")


def step_transform(work: Path, data: Path, artifact: Path, args) -> int:
    clips = sorted((data / "test" / "audio").glob("*.wav"))
    out = work / "transform-output"
    t0 = time.monotonic()
    launch("transform", "--local", "--image", args.serve_image, "--model-data", str(artifact),
           "--input", str(data / "test" / "audio"), "--output-path", str(out), "--serving-port", str(free_port()),
           "--env", "MODEL_SERVER_WORKERS=1", log_file=work / "transform.log", timeout_s=args.timeout_s)
    results = sorted(out.rglob("*.out"))
    if sorted(p.name for p in results) != sorted(c.name + ".out" for c in clips):
        raise ProofError(f"expected one .out per clip ({len(clips)}), got {[p.name for p in results]}")
    for p in results:
        body = json.loads(p.read_text())
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise ProofError(f"{p} holds no transcript: {p.read_text()[:200]}")
    log(f"transform: {len(results)} transcripts for {len(clips)} clips in {time.monotonic() - t0:.0f} s")
    return len(results)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, help="working folder (default: a new temporary folder, removed at the end)")
    ap.add_argument("--instance-count", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=10)
    ap.add_argument("--train-image", default="wav2vec2-train:latest")
    ap.add_argument("--serve-image", default="wav2vec2-serve:latest")
    ap.add_argument("--timeout-s", type=float, default=900, help="limit per step (default 900)")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="sdk-local-mode-"))
    work.mkdir(parents=True, exist_ok=True)
    before = sdk_containers(all_states=True)
    t0 = time.monotonic()
    step = "prerequisites"
    ok = False
    try:
        check_prerequisites([args.train_image, args.serve_image])
        step = "data"
        data = work / "data"
        if not (data / "train" / "manifest.jsonl").is_file():
            subprocess.run([sys.executable, str(ROOT / "local_test" / "make_dataset.py"), str(data),
                            "--train", "24", "--test", "4"], check=True, capture_output=True)
        step = "1 train"
        artifact = step_train(work, data, args)
        step = "2 deploy + invoke"
        step_deploy_invoke(work, data, artifact, args)
        step = "3 transform"
        step_transform(work, data, artifact, args)
        step = "4 clean-up"
        left = sdk_containers() - before
        if left:
            raise ProofError(f"containers still running after the run: {sorted(left)}")
        log(f"no local-mode container left running; all steps passed in {time.monotonic() - t0:.0f} s")
        ok = True
        return 0
    except (ProofError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"[local-mode] FAILED at step {step}: {exc}", file=sys.stderr, flush=True)
        print(f"[local-mode] logs in {work}", file=sys.stderr, flush=True)
        return 1
    finally:
        # Stopped containers from compose runs are removed so re-runs start clean.
        stale = sdk_containers(all_states=True) - before
        if stale:
            subprocess.run(["docker", "rm", "-f", *sorted(stale)], capture_output=True)
        if ok and args.work is None and os.environ.get("KEEP_WORK") != "1":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
