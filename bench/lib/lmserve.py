"""A trained tiny model with its n-gram LM, for beam-search figures through the server (bench/serving --lm).

Beam search's cost depends on the logits: a random model's near-uniform ones put every token above
pyctcdecode's pruning threshold at every frame (its slowest case), a model that predicts only blanks makes it
trivial. Figures need a model that has learned: the quickstart's (local_test/test_dir/model), one given with
--trained-model, or the tiny model trained here with the quickstart's recipe.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import ROOT

QUICKSTART_MODEL = ROOT / "local_test" / "test_dir" / "model"
RECIPE = ROOT / "local_test" / "test_dir" / "input" / "config" / "hyperparameters.json"


def synthetic_set(work: Path, n_train: int = 600, n_test: int = 60) -> Path:
    """The quickstart's synthetic set (local_test/make_dataset.py defaults: same sentences and voices), once."""
    data = Path(work) / "data"
    if not (data / "test" / "manifest.jsonl").is_file():
        subprocess.run([sys.executable, str(ROOT / "local_test" / "make_dataset.py"), str(data),
                        "--train", str(n_train), "--test", str(n_test)], check=True, capture_output=True)
    return data


def train_tiny(work: Path, data: Path, seconds: float, threads: int) -> Path:
    """The tiny model trained by train/train with the quickstart's hyperparameters for `seconds` (its LM
    included: lm_order's default); reused when trained before in `work`."""
    opt = Path(work) / "opt_ml"
    model_dir = opt / "model"
    if (model_dir / "model.safetensors").is_file():
        print(f"bench: reusing the model trained before in {model_dir}", flush=True)
        return model_dir
    shutil.rmtree(opt, ignore_errors=True)
    (opt / "input" / "config").mkdir(parents=True)
    (opt / "input" / "data").mkdir(parents=True)
    for name, src in (("train", data / "train"), ("test", data / "test"), ("model", ROOT / "local_test" / "tiny_model")):
        (opt / "input" / "data" / name).symlink_to(src)
    hp = json.loads(RECIPE.read_text())
    hp["max_train_seconds"] = str(seconds)
    (opt / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hp))
    env = dict(os.environ, OPT_ML=str(opt), OMP_NUM_THREADS=str(threads),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    print(f"bench: training the tiny model for {seconds:g} s (quickstart recipe, {threads} thread(s))", flush=True)
    subprocess.run([str(ROOT / "train" / "train")], env=env, check=True)
    return model_dir


def with_lm(trained: Path, out: Path, data: Path, tuning_seconds: float, order: int = 3) -> tuple[Path, str]:
    """A copy of `trained` that has an LM: its own when it has one, else one estimated by train/lm.py from
    data/train's transcripts with alpha/beta tuned on data/test within `tuning_seconds`. (dir, what was done)"""
    from common import lm as common_lm

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    files = common_lm.find(trained)
    if files is not None and files.kenlm is not None:
        shutil.copytree(trained, out)
        return out, f"the model's own LM ({files.kenlm.relative_to(trained)})"
    import numpy as np
    import soundfile as sf
    import torch

    from common import audio, modeldir, text
    from train import lm

    shutil.copytree(trained, out, ignore=shutil.ignore_patterns(common_lm.ALPHABET_FILE, common_lm.LM_DIR))
    model, processor = modeldir.load(out)
    rows = [json.loads(line) for line in (data / "test" / "manifest.jsonl").open()]
    inputs = [audio.normalize(sf.read(data / "test" / r["audio"], dtype="float32")[0]) for r in rows]
    train_texts = [json.loads(line)["text"] for line in (data / "train" / "manifest.jsonl").open()]
    spf = float(np.prod(model.config.conv_stride)) / 16000
    with torch.inference_mode():
        built = lm.build(lm.plan(order, tuning_seconds, None), out, train_texts=train_texts,
                         chars_to_ignore=text.DEFAULT_CHARS_TO_IGNORE, model=model, eval_inputs=inputs,
                         eval_references=[text.normalize(r["text"]) for r in rows],
                         attention_mask=bool(processor.feature_extractor.return_attention_mask),
                         seconds_per_frame=spf, log=lambda line: print(line, flush=True))
    return out, (f"a {order}-gram estimated here from {len(train_texts)} training transcripts, alpha={built.alpha:g} "
                 f"beta={built.beta:g} tuned on the {len(rows)} held-out clips in {tuning_seconds:g} s at most")


def whole_utterances(pool: list, targets_s: list[float], gap_s: float = 0.25) -> list:
    """One clip per target length: whole utterances of `pool` in turn with short gaps, until the clip is at
    least that long (never cut, so the reference is exactly what is said, for WER)."""
    import numpy as np

    from .clips import RATE, Clip

    clips, at = [], 0
    gap = np.zeros(int(gap_s * RATE), dtype=np.float32)
    for target in targets_s:
        parts, words = [], []
        while sum(len(p) for p in parts) < target * RATE:
            u = pool[at % len(pool)]
            at += 1
            parts += [u.audio, gap]
            words.append(u.text)
        audio = np.concatenate(parts[:-1]).astype(np.float32)
        clips.append(Clip(f"{target:g}s", audio, " ".join(words)))
    return clips
