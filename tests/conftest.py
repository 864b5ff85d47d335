"""Shared fixtures: a small synthetic speech set (espeak-ng) and a tiny random Wav2Vec2 CTC model dir."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import modeldir, text  # noqa: E402
from common.ports import free_port  # noqa: E402,F401  (one helper: tests, bench, local_test)

# The launcher's own environment (setup.sh: Python 3.12, SageMaker SDK v3): scripts that import the launcher run in it.
LAUNCH_PYTHON = str(ROOT / ".venv-launch" / "bin" / "python")


def program_env(**extra: str) -> dict[str, str]:
    """Environment for running train/train or serve/serve natively with this venv's Python first."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    # Transcripts are compared with transformers' float32 path; bfloat16 (the default on CPUs with native
    # support) is tested where a test asks for it.
    env.setdefault("SERVE_CPU_BF16", "false")
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """48 training and 12 held-out utterances: DIR/train, DIR/test (audio/ + manifests), DIR/hf/{train,test}."""
    out = tmp_path_factory.mktemp("synthetic")
    subprocess.run(
        [sys.executable, str(ROOT / "local_test" / "make_dataset.py"), str(out),
         "--train", "48", "--test", "12", "--hf"],
        check=True, capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, synthetic_data) -> Path:
    """A randomly initialised tiny Wav2Vec2ForCTC + processor, saved as training would save it."""
    from transformers import Wav2Vec2ForCTC
    import torch

    torch.manual_seed(0)
    texts = [json.loads(l)["text"] for l in (synthetic_data / "train" / "manifest.jsonl").open()]
    processor = modeldir.make_processor(text.build_vocab(texts))
    cfg = modeldir.tiny_config(len(processor.tokenizer), processor.tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("tiny_model")
    modeldir.save(out, Wav2Vec2ForCTC(cfg).eval(), processor)
    return out


@pytest.fixture(scope="session")
def checkpoint_dirs(tmp_path_factory):
    """get(kind, layout="flat") -> the root of a tiny checkpoint directory of that kind, as it would sit in
    /opt/ml/model (tests/checkpoints.py: every supported architecture and layout), built once per session."""
    import checkpoints

    built: dict[tuple[str, str], Path] = {}

    def get(kind: str, layout: str = "flat") -> Path:
        if (kind, layout) not in built:
            root = tmp_path_factory.mktemp(f"ckpt_{kind}_{layout}")
            checkpoints.build(kind, root, layout)
            built[kind, layout] = root
        return built[kind, layout]

    return get


@pytest.fixture(scope="session")
def speech_clip(synthetic_data):
    """One held-out synthetic utterance, 16 kHz mono float32."""
    from common.audio import load_file

    return load_file(sorted((synthetic_data / "test" / "audio").glob("*.wav"))[0])


@pytest.fixture(scope="session")
def bomb_flac() -> bytes:
    """Issue 28's decompression bomb: a 196 KiB FLAC of silence declaring 60 s of 8 channels at 384 kHz (737 MB as
    float32)."""
    import io

    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", samplerate=384_000, channels=8, format="FLAC", subtype="PCM_16") as f:
        second = np.zeros((384_000, 8), np.int16)
        for _ in range(60):
            f.write(second)
    return buf.getvalue()
