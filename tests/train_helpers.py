"""Helpers for the training program's tests: an /opt/ml tree per run, and running train/train natively."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "train" / "train"
sys.path.insert(0, str(ROOT))

from common import modeldir  # noqa: E402

# A few optimizer steps, small batches, no periodic checkpoints: most tests only need the path to run.
FAST = {"max_steps": "2", "train_batch_size": "4", "eval_batch_size": "8", "logging_steps": "1",
        "save_steps": "1000"}


def program_env(**extra: str) -> dict[str, str]:
    from conftest import program_env as env  # the lead's: venv first on PATH, hub offline

    # One torch thread per run: on two cores shared with other test processes, two spinning OpenMP
    # threads per process made steps up to 6x slower.
    return env(**{"OMP_NUM_THREADS": "1", **extra})


def micro_model_dir(dest: Path, **overrides) -> Path:
    """config.json only (random start): an even smaller Wav2Vec2 than local_test/tiny_model, for speed."""
    dest.mkdir(parents=True, exist_ok=True)
    cfg = modeldir.tiny_config(32, 31, **{
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
        "conv_dim": (32,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2, **overrides})
    cfg.to_json_file(dest / "config.json")
    return dest


def make_opt_ml(root: Path, channels: dict[str, Path], hyperparameters: dict | None = None,
                resourceconfig: dict | None = None, raw_hyperparameters: str | None = None) -> Path:
    """An /opt/ml tree: channels linked from existing folders, hyperparameters.json as given, except that
    `lm_order` is 0 unless given: the language model step (lmplz, a tuning pool) is tested where it is
    asked for (test_train_run's learned model, test_lm_train), not in every run."""
    if hyperparameters is not None and "lm_order" not in hyperparameters:
        hyperparameters = {**hyperparameters, "lm_order": "0"}
    (root / "input" / "config").mkdir(parents=True, exist_ok=True)
    (root / "input" / "data").mkdir(parents=True, exist_ok=True)
    for name, src in channels.items():
        (root / "input" / "data" / name).symlink_to(Path(src).resolve(), target_is_directory=True)
    text = raw_hyperparameters if raw_hyperparameters is not None else json.dumps(hyperparameters or {})
    (root / "input" / "config" / "hyperparameters.json").write_text(text)
    if resourceconfig is not None:
        (root / "input" / "config" / "resourceconfig.json").write_text(json.dumps(resourceconfig))
    return root


def run_train(opt_ml: Path, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run train/train to completion; stdout and stderr together in .stdout."""
    return subprocess.run([str(TRAIN), *args], env=program_env(OPT_ML=str(opt_ml), **env), cwd=str(opt_ml),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def start_train(opt_ml: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([str(TRAIN)], env=program_env(OPT_ML=str(opt_ml), **env), cwd=str(opt_ml),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def failure_first_line(opt_ml: Path) -> str:
    return (opt_ml / "output" / "failure").read_text().splitlines()[0]


def metrics(opt_ml: Path) -> dict:
    return json.loads((opt_ml / "output" / "data" / "metrics.json").read_text())


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:]


def model_files(opt_ml: Path) -> set[str]:
    d = opt_ml / "model"
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


# What common.modeldir.save writes, and nothing else.
MODEL_FILES = {"config.json", "model.safetensors", "vocab.json", "tokenizer_config.json", "processor_config.json"}
OPTIONAL_MODEL_FILES = {"added_tokens.json", "special_tokens_map.json", "preprocessor_config.json"}


LM_FILES = {"alphabet.json", "language_model"}  # train/lm.py, in Wav2Vec2ProcessorWithLM's layout


def is_model_dir(files: set[str], lm: bool = False) -> bool:
    """Exactly the model's files; with lm, also exactly the language model's."""
    extra = LM_FILES if lm else set()
    return MODEL_FILES | extra <= files and files <= MODEL_FILES | OPTIONAL_MODEL_FILES | extra

