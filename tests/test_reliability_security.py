"""Security basics: weights from safetensors or weights-only .bin, no remote code, nothing secret in the image
layers."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

import reliability_helpers as rh
from conftest import ROOT, free_port, program_env
from serve_helpers import SERVE

CODE_DIRS = ("serve", "train", "common", "launcher")


def python_sources():
    for d in CODE_DIRS:
        yield from (p for p in (ROOT / d).rglob("*") if p.is_file() and (p.suffix == ".py" or p.name in ("serve", "train")))


@pytest.mark.parametrize("pattern,why", [
    (r"trust_remote_code\s*=\s*True", "runs code shipped with a model"),
    (r"torch\.load\(", "unpickles"),
    (r"pickle\.loads?\(", "unpickles"),
    (r"allow_pickle\s*=\s*True", "unpickles"),
    (r"use_safetensors\s*=\s*False", "allows pickled weights"),
])
def test_no_unsafe_loading_in_the_programs(pattern, why):
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in python_sources()
            for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if re.search(pattern, line)]
    assert not hits, f"{pattern} ({why}) in {hits}"


def test_every_model_load_is_weights_only():
    """Models load in one place per program (common/modeldir.py, train/model.py), each asking transformers for
    safetensors first and torch's weights_only unpickler for a .bin."""
    calls = [(p, n) for p in python_sources() for n, line in enumerate(p.read_text().splitlines())
             if re.search(r"(\bcls|ForCTC)\.from_pretrained\(", line)]
    assert calls, "no model loading found: the check would prove nothing"
    for p, n in calls:
        call = "\n".join(p.read_text().splitlines()[n: n + 3])
        assert "weights_only=True" in call and "use_safetensors=" in call, (p, call)


@pytest.fixture(scope="module")
def bin_only_model(tmp_path_factory):
    """The tiny model saved the old way: pytorch_model.bin (a pickle of tensors), no model.safetensors."""
    from transformers import Wav2Vec2ForCTC

    d = rh.tiny_model(tmp_path_factory.mktemp("bin_only"))
    model = Wav2Vec2ForCTC.from_pretrained(d, use_safetensors=True)
    (d / "model.safetensors").unlink()
    import torch

    torch.save(model.state_dict(), d / "pytorch_model.bin")
    return d


def test_a_pickled_weights_only_model_loads_through_the_weights_only_unpickler(bin_only_model):
    from common import modeldir

    ckpt = modeldir.load_checkpoint(bin_only_model)
    assert any("pytorch_model.bin read with torch's weights_only unpickler" in n for n in ckpt.notes)


def test_the_server_refuses_to_start_on_a_bin_that_would_run_code(tmp_path):
    import checkpoints

    d = checkpoints.build_refused("evil-bin", tmp_path / "opt_ml" / "model")
    out = subprocess.run([str(SERVE), "serve"], capture_output=True, text=True, timeout=180,
                         env=program_env(OPT_ML=str(d.parent), SAGEMAKER_BIND_TO_PORT=str(free_port()),
                                         MODEL_SERVER_WORKERS="1"))
    assert out.returncode != 0
    assert "refused by torch's weights_only unpickler" in out.stdout + out.stderr
    assert not (d / "UNPICKLED").exists()


IMAGES = ("wav2vec2-serve:latest", "wav2vec2-train:latest")


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def image_present(image: str) -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return docker("image", "inspect", image, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


SECRET_IN_HISTORY = re.compile(
    r"BEGIN (CERTIFICATE|[A-Z ]*PRIVATE KEY)|AWS_SECRET_ACCESS_KEY=|AWS_SESSION_TOKEN=|AWS_ACCESS_KEY_ID=|"
    r"(PIP_CERT|REQUESTS_CA_BUNDLE|SSL_CERT_FILE|CURL_CA_BUNDLE)=/(?!run/secrets/)|"
    r"COPY [^\n]*\.(pem|crt|key)\b|--build-arg [A-Z_]*(TOKEN|SECRET|PASSWORD)", re.I)
SECRET_ENV = re.compile(r"SECRET|TOKEN|PASSWORD|CA_BUNDLE|PIP_CERT|SSL_CERT", re.I)


@pytest.mark.parametrize("image", IMAGES)
def test_no_secret_or_ca_bundle_in_the_image_layers(image):
    if not image_present(image):
        pytest.skip(f"{image} is not built here")
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image)
    assert history.returncode == 0, history.stderr
    assert history.stdout.strip()
    found = [line[:200] for line in history.stdout.splitlines() if SECRET_IN_HISTORY.search(line)]
    assert not found, found
    # The optional extra CA comes in as a BuildKit secret: mounted during RUN, never in a layer.
    assert "/run/secrets/ca" in history.stdout
    env = docker("image", "inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}", image).stdout
    assert not [e for e in env.splitlines() if SECRET_ENV.search(e.split("=", 1)[0])], env
    listing = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                     "ls -A /run/secrets 2>/dev/null; find /opt /tmp /root -xdev \\( -name '*.pem' -o -name '*.crt' "
                     "-o -name 'ca' -o -name '*.key' \\) -not -path '*/site-packages/*' 2>/dev/null; true")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.strip() == "", listing.stdout


def test_serve_image_can_run_unprivileged():
    """Root by default (SageMaker keeps model.tar.gz's file modes, model.safetensors is often 0600), but the
    image carries an unprivileged user for `docker run --user model-server` when the model is world-readable."""
    image = IMAGES[0]
    if not image_present(image):
        pytest.skip(f"{image} is not built here")
    out = docker("run", "--rm", "--network", "none", "--user", "model-server", "--entrypoint", "id", image)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("uid=10001(model-server)"), out.stdout
