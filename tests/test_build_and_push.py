"""build_and_push.sh: --help, the exact commands of --dry-run (ECR and any registry), clear errors, and a real
push to a local registry (Debian's docker-registry on loopback) pulled back."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, free_port
from image_fixtures import PREFIX, TAG, Images, docker_run, images, in_ci, unavailable  # noqa: F401 (fixture)

SCRIPT = str(ROOT / "build_and_push.sh")


def script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, **(env or {})})


def path_without(tmp_path: Path, *commands: str) -> str:
    """A PATH of symlinks to what the script uses, leaving out `commands`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("bash", "env", "git", "cat", "cut", "sort", "sha256sum", "find", "tar", "grep", "rm", "dirname",
                 "docker", "aws"):
        found = shutil.which(name)
        if found and name not in commands and not (bin_dir / name).exists():
            (bin_dir / name).symlink_to(found)
    return str(bin_dir)


def test_help():
    proc = script("--help")
    assert proc.returncode == 0
    for option in ("--local", "--registry HOST[:PORT]", "--dry-run", "--region", "--account", "--profile",
                   "--base-image", "--torch", "--ca-bundle"):
        assert option in proc.stdout, option


def test_dry_run_ecr_prints_every_command(tmp_path):
    # No aws on PATH: a dry run with region and account given calls nothing.
    proc = script("--dry-run", "--region", "eu-west-1", "--account", "123456789012", "--profile", "ml",
                  "--tag", "abc123", "--base-image", "local/debian:bookworm", "--torch", "torch==2.13.0+cpu",
                  env={"PATH": path_without(tmp_path, "aws"), "DOCKER": "docker"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    registry = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    for target in ("train", "serve"):
        assert (f"+ env DOCKER_BUILDKIT=1 docker build --progress=plain -f {ROOT}/docker/Dockerfile --target {target}"
                f" --build-arg BASE_IMAGE=local/debian:bookworm --build-arg TORCH_REQUIREMENT=torch==2.13.0+cpu"
                f" --build-arg GIT_COMMIT=abc123 -t wav2vec2-{target}:latest -t wav2vec2-{target}:abc123 {ROOT}") in lines
        assert (f"+ aws --profile ml ecr describe-repositories --region eu-west-1 --repository-names wav2vec2-{target}"
                f" || aws --profile ml ecr create-repository --region eu-west-1 --repository-name wav2vec2-{target}"
                f" --image-scanning-configuration scanOnPush=true") in lines
        for tag in ("latest", "abc123"):
            assert f"+ docker tag wav2vec2-{target}:{tag} {registry}/wav2vec2-{target}:{tag}" in lines
            assert f"+ docker push {registry}/wav2vec2-{target}:{tag}" in lines
    login = (f"+ aws --profile ml ecr get-login-password --region eu-west-1 | docker login --username AWS"
             f" --password-stdin {registry}")
    assert login in lines
    # Order: both builds, then repositories and login, then the pushes.
    assert lines.index(login) > max(i for i, l in enumerate(lines) if " docker build " in l)
    assert lines.index(login) < min(i for i, l in enumerate(lines) if " push " in l)


def test_dry_run_registry_one_image(tmp_path):
    proc = script("--dry-run", "--registry", "127.0.0.1:5000", "--tag", "t1", "serve",
                  env={"PATH": path_without(tmp_path, "aws"), "DOCKER": "docker"})
    assert proc.returncode == 0, proc.stderr
    assert "aws" not in proc.stdout and "wav2vec2-train" not in proc.stdout
    assert "+ docker push 127.0.0.1:5000/wav2vec2-serve:latest" in proc.stdout.splitlines()
    assert "+ docker push 127.0.0.1:5000/wav2vec2-serve:t1" in proc.stdout.splitlines()


def test_dry_run_wheels_and_ca_bundle(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "torch-9.9.9+cpu-cp311-cp311-linux_x86_64.whl").write_bytes(b"x")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    proc = script("--dry-run", "--local", "--wheels", str(tmp_path / "w"), "--ca-bundle", str(ca), "train",
                  env={"DOCKER": "docker"})
    assert proc.returncode == 0, proc.stderr
    build = next(l for l in proc.stdout.splitlines() if " docker build " in l)
    assert "--build-arg WHEELS_IMAGE=wav2vec2-wheels:local" in build
    assert f"--secret id=ca\\,src={ca}" in build  # a secret, not a build argument
    assert "push" not in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown argument: --bogus"),
    (["--ca-bundle", "/nonexistent/ca.pem", "--dry-run"], "is not a readable file"),
])
def test_bad_arguments(args, message):
    proc = script(*args)
    assert proc.returncode != 0 and message in proc.stderr


def test_clear_error_when_docker_is_not_running():
    proc = script("--local", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert proc.returncode != 0
    assert "not running or not reachable" in proc.stderr or "no docker client" in proc.stderr, proc.stderr


def test_clear_error_when_aws_is_missing_or_logged_out(images, tmp_path):
    # docker works (the images fixture made sure); ECR mode needs aws.
    proc = script("--region", "eu-west-1", "serve", env={"PATH": path_without(tmp_path, "aws"), "DOCKER": images.docker})
    assert proc.returncode != 0 and "aws CLI is not installed" in proc.stderr, proc.stderr
    if shutil.which("aws"):
        # Credentials that cannot work (and no network beyond loopback): a clear "not logged in".
        proc = script("--region", "eu-west-1", "serve", env={
            "DOCKER": images.docker, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x",
            "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_ENDPOINT_URL_STS": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"})
        assert proc.returncode != 0 and "not logged in to AWS" in proc.stderr, proc.stderr


@pytest.fixture
def local_registry(tmp_path):
    """Debian's docker-registry on a free loopback port (installed with apt-get when missing and root)."""
    binary = shutil.which("docker-registry")
    if binary is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker-registry"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
            subprocess.run(install, env=env, capture_output=True)
        binary = shutil.which("docker-registry")
    if binary is None:
        unavailable("docker-registry is not installed (apt-get install docker-registry)")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "storage")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }))
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"docker-registry did not start: {proc.stderr.read1().decode() if proc.poll() is not None else ''}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_push_to_local_registry_and_pull_back(images: Images, local_registry):
    env = {"DOCKER": images.docker}
    args = ["--registry", local_registry, "--prefix", PREFIX, "--tag", TAG, "--base-image", "local/debian:bookworm",
            "--torch", images.torch_requirement, "--ca-bundle", str(images.ca_bundle), "serve"]
    wheels = Path(os.environ.get("IMAGE_TORCH_WHEELS", "/opt/wheels"))
    if any(wheels.glob("torch-*.whl")):
        args += ["--wheels", str(wheels)]
    proc = script(*args, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    repo = f"{PREFIX}-serve"
    tags = json.load(urllib.request.urlopen(f"http://{local_registry}/v2/{repo}/tags/list", timeout=10))["tags"]
    assert sorted(tags) == sorted(["latest", TAG])

    remote = f"{local_registry}/{repo}:{TAG}"
    local_id = docker_run(images, "image", "inspect", "-f", "{{.Id}}", images.serve).stdout.strip()
    docker_run(images, "rmi", remote, f"{local_registry}/{repo}:latest")
    docker_run(images, "pull", remote, timeout=600)
    assert docker_run(images, "image", "inspect", "-f", "{{.Id}}", remote).stdout.strip() == local_id
    docker_run(images, "rmi", remote, check=False)
