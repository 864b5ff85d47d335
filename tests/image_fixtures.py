"""Docker engine, local base image and both images, shared by test_images.py and test_build_and_push.py.

The images are built exactly as users build them (build_and_push.sh --local), from a Debian base made with
debootstrap (no registry needed) and, when a local CPU torch wheel is available, that wheel instead of the
multi-GB CUDA one. Without a usable engine the tests skip, except under CI=true where they fail.
Environment: IMAGE_TORCH_WHEELS (directory with a torch wheel, default /opt/wheels), IMAGE_TORCH_REQUIREMENT
(default: the torch version of the wheel found there, else the image default torch==2.10.0).
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "local/debian:bookworm"
PREFIX = "wav2vec2-test"  # not the user's wav2vec2-*:latest images, which may be CUDA builds about to be pushed
# IMAGE_TEST_TAG: several checkouts testing images on one engine at once each give their own.
TAG = os.environ.get("IMAGE_TEST_TAG", "ci")
SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class Images:
    docker: str
    train: str
    serve: str
    torch_requirement: str
    ca_bundle: Path | None
    marker_line: str | None  # a line of a certificate that only the build's CA secret holds
    build_seconds: float


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str):
    if in_ci():
        pytest.fail(f"CI=true but the image tests cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@functools.cache
def _engine() -> tuple[str | None, str]:
    proc = subprocess.run([str(ROOT / "docker" / "ensure-engine.sh")], capture_output=True, text=True)
    if proc.returncode != 0:
        return None, proc.stderr.strip() or "docker/ensure-engine.sh failed"
    return proc.stdout.strip().splitlines()[-1], ""


def docker_client() -> str:
    docker, reason = _engine()
    if docker is None:
        unavailable(f"no usable Docker engine: {reason}")
    return docker


def _torch_choice() -> tuple[str, Path | None]:
    wheels = Path(os.environ.get("IMAGE_TORCH_WHEELS", "/opt/wheels"))
    found = sorted(wheels.glob("torch-*-cp311-*linux*x86_64.whl")) if wheels.is_dir() else []
    requirement = os.environ.get("IMAGE_TORCH_REQUIREMENT")
    if requirement is None:
        requirement = f"torch=={found[-1].name.split('-')[1]}" if found else "torch==2.10.0"
    return requirement, (wheels if found else None)


def _ca_bundle(tmp: Path) -> tuple[Path, str]:
    """The system CA bundle (a TLS-intercepting proxy's CA is in it) plus a fresh self-signed certificate
    whose body must not turn up anywhere in the images."""
    key, cert = tmp / "marker.key", tmp / "marker.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=wav2vec2 image test marker", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    bundle = tmp / "ca-bundle.pem"
    system = SYSTEM_CA.read_text() if SYSTEM_CA.is_file() else ""
    bundle.write_text(system + "\n" + cert.read_text())
    lines = [l for l in cert.read_text().splitlines() if l and not l.startswith("-----")]
    return bundle, lines[len(lines) // 2]


@functools.cache
def _build(tmp: Path) -> Images:
    docker = docker_client()
    env = dict(os.environ, DOCKER=docker)
    base = subprocess.run([str(ROOT / "docker" / "make-base.sh"), BASE_IMAGE], env=env, capture_output=True,
                          text=True)
    if base.returncode != 0:
        unavailable(f"cannot make the local base image {BASE_IMAGE}: {base.stderr.strip()[-800:]}")
    requirement, wheels = _torch_choice()
    bundle, marker = _ca_bundle(tmp)
    cmd = [str(ROOT / "build_and_push.sh"), "--local", "--base-image", BASE_IMAGE, "--torch", requirement,
           "--prefix", PREFIX, "--tag", TAG, "--ca-bundle", str(bundle)]
    if wheels:
        cmd += ["--wheels", str(wheels)]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"build failed ({' '.join(cmd)}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}",
                    pytrace=False)
    return Images(docker, f"{PREFIX}-train:{TAG}", f"{PREFIX}-serve:{TAG}", requirement, bundle, marker,
                  time.monotonic() - start)


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Images:
    docker_client()  # skip (or fail in CI) before making anything
    return _build(tmp_path_factory.getbasetemp())


def docker_run(images: Images, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([images.docker, *args], capture_output=True, text=True, timeout=timeout, check=check)


def image_size_mb(docker: str, image: str) -> int:
    out = subprocess.run([docker, "image", "inspect", "-f", "{{.Size}}", image], capture_output=True, text=True,
                         check=True).stdout
    return int(out) // 1_000_000


def torch_in(docker: str, image: str) -> str:
    out = subprocess.run([docker, "run", "--rm", "--entrypoint", "cat", image, "/opt/venv/torch-version.txt"],
                         capture_output=True, text=True, check=True).stdout
    return re.sub(r"\s+", " ", out).strip()
