"""Local mode on the SDK v3 without a Docker engine: a stand-in `docker` on PATH records what it is asked to run
and plays the containers' part. Training goes through ModelTrainer's own local container mode (the compose file
the SDK writes is checked: two hosts on one network, the channels, resourceconfig.json); deploy/invoke/transform
--local run the serving image the way launcher/localmode.py does (docker run ... serve, /ping, /invocations).
The real images in local mode: tests/test_launcher_local_mode.py (needs Docker and the built images)."""
from __future__ import annotations

import json
import os
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from launcher import cli
from stand_ins import StandIn

FAKE_DOCKER = textwrap.dedent('''\
    #!{python}
    """Stand-in for docker: logs its arguments; `compose -f FILE up` plays the training containers."""
    import json, os, sys, yaml
    from pathlib import Path
    log = Path(os.environ["FAKE_DOCKER_LOG"])
    with log.open("a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
    args = sys.argv[1:]
    if args[:2] == ["compose", "version"]:
        print("Docker Compose version v2.29.0"); sys.exit(0)
    if args[:2] == ["images", "-q"]:
        print("0123456789ab"); sys.exit(0)
    if args[:1] == ["inspect"]:
        print("true"); sys.exit(0)
    if args[:1] == ["compose"]:
        compose = yaml.safe_load(open(args[2]))
        for host, service in compose["services"].items():
            mounts = {{c: h for h, c in (v.rsplit(":", 1) for v in service["volumes"])}}
            for folder in mounts.values():  # as docker does for a missing host folder
                Path(folder).mkdir(parents=True, exist_ok=True)
            print(f"{{host}}-1  | training on {{host}}")
            if os.environ.get("FAKE_TRAIN_FAILURE"):
                Path(mounts["/opt/ml/output"], "failure").write_text(os.environ["FAKE_TRAIN_FAILURE"] + "\\nmore\\n")
            else:
                Path(mounts["/opt/ml/model"], "config.json").write_text("{{}}")
        sys.exit(2 if os.environ.get("FAKE_TRAIN_FAILURE") else 0)
    sys.exit(0)
''')


@pytest.fixture
def docker(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(FAKE_DOCKER.format(python=sys.executable))
    script.chmod(0o755)
    log = tmp_path / "docker.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    # no AWS at all: local mode must not need it
    for name in list(os.environ):
        if name.startswith(("AWS_", "SAGEMAKER_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    return lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _channel(tmp_path: Path) -> Path:
    train = tmp_path / "speech" / "train"
    train.mkdir(parents=True)
    (train / "manifest.jsonl").write_text('{"audio": "a.flac", "text": "hi"}\n')
    return train


def test_train_local_runs_the_sdk_local_container_mode_on_two_hosts(docker, tmp_path, capsys):
    train = _channel(tmp_path)
    out = tmp_path / "out"
    code = cli.main(["train", "--local", "--channel", f"train={train}", "--image", "wav2vec2-train:latest",
                     "--instance-count", "2", "--output-path", str(out), "--hp", "max_steps=2", "--job-name", "proof"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    artifact = Path(stdout.strip().splitlines()[-1][len("file://"):])
    assert artifact == out / "compressed_artifacts" / "model.tar.gz"
    with tarfile.open(artifact) as tar:
        assert [m.name.lstrip("./") for m in tar.getmembers() if m.isfile()] == ["config.json"]
    (up,) = [a for a in docker() if a[:2] == ["compose", "-f"]]
    assert up[3:] == ["up", "--build", "--abort-on-container-exit"]
    import yaml

    compose = yaml.safe_load(Path(up[2]).read_text())
    assert sorted(compose["services"]) == ["algo-1", "algo-2"]
    for host, service in compose["services"].items():
        assert service["image"] == "wav2vec2-train:latest"
        assert service["networks"] == {"sagemaker-local": {"aliases": [host]}}
        assert f"{train}:/opt/ml/input/data/train" in service["volumes"]
        assert not any(e.startswith("AWS_") for e in service["environment"])  # no credentials handed in


def test_train_local_failure_reports_the_failure_files_first_line(docker, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_FAILURE", "channel train holds no recognised data (found: notes.txt)")
    code = cli.main(["train", "--local", "--channel", f"train={_channel(tmp_path)}", "--image", "t:1",
                     "--output-path", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines()[-1] == ("launch train: error: training job wav2vec2-train-"
                                            + err.split("wav2vec2-train-")[1].split(" ")[0]
                                            + " failed: channel train holds no recognised data (found: notes.txt)")


@pytest.fixture
def container():
    """Plays the serving container's port: /ping, and /invocations answering each body's length."""

    def answer(request):
        if request.method == "GET":
            return 200, b"", ""
        return 200, {"text": f"{len(request.body)} bytes"}, ""

    with StandIn(answer) as server:
        yield server


def _model(tmp_path: Path) -> Path:
    src = tmp_path / "m"
    src.mkdir()
    (src / "config.json").write_text("{}")
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "config.json", arcname="config.json")
    return archive


def test_transform_local_sends_each_file_and_writes_its_out_file(docker, container, tmp_path, capsys):
    clips = tmp_path / "clips"
    (clips / "day1").mkdir(parents=True)
    (clips / "a.wav").write_bytes(b"RIFF" + b"\0" * 10)
    (clips / "day1" / "b.flac").write_bytes(b"fLaC" + b"\0" * 20)
    port = container.port
    out = tmp_path / "out"
    code = cli.main(["transform", "--local", "--model-data", str(_model(tmp_path)), "--input", str(clips),
                     "--output-path", str(out), "--serving-port", str(port), "--image", "serve:1",
                     "--env", "MODEL_SERVER_WORKERS=1", "--job-name", "tj"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "a.wav.out").read_text()) == {"text": "14 bytes"}
    assert json.loads((out / "day1" / "b.flac.out").read_text()) == {"text": "24 bytes"}
    (run,) = [a for a in docker() if a[:1] == ["run"]]
    assert run[-2:] == ["serve:1", "serve"] and "MODEL_SERVER_WORKERS=1" in run
    assert f"127.0.0.1:{port}:8080" in run
    mount = next(v for v in run if v.endswith(":/opt/ml/model:ro"))
    assert not Path(mount.split(":")[0]).exists()  # the extracted model was a temporary folder
    assert ["rm", "-f", "wav2vec2-local-tj"] in docker()  # and the container is removed


def test_deploy_local_serves_until_its_time_is_up_and_invoke_reaches_it(docker, container, tmp_path, capsys):
    port = container.port
    code = cli.main(["deploy", "--local", "--model-data", str(_model(tmp_path)), "--serving-port", str(port),
                     "--local-seconds", "0.2", "--endpoint-name", "asr"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"local endpoint asr on http://localhost:{port}" in out and "local endpoint asr removed" in out
    assert ["rm", "-f", "wav2vec2-local-asr"] in docker()
