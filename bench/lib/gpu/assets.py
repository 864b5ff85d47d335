"""What the GPU check needs besides wheels, made here once (`--prepare`) because the lent machine has no
espeak-ng and only minutes: synthetic speech and a tiny model.

Layout of the assets folder (default .gpu_check/assets, carried with the call):
  data/train/  audio/*.flac + manifest.jsonl  training voices: the GPU training stage's `train` channel
  data/test/   audio/*.wav + manifest.jsonl   held-out voices: the clips the serving stage transcribes
  tiny_model/  the training program's output (model.safetensors, config.json, vocab.json, ...) after
               --train-seconds on this CPU (default 0: one step). Stage 1 serves the model stage 3 trains on
               the GPU when that one is better (lower held-out CER); this one is the fallback
  info.json    how they were made (utterances, training seconds, steps, CER on data/test)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path



from .. import ROOT

RATE = 16_000


def prepare(assets: Path, *, python: str, train_utterances: int, carried_train: int, test_utterances: int,
            train_seconds: float, trained_model: Path | None, log=print) -> dict:
    """Make (or reuse) the assets; returns info.json's content. python: the interpreter with the project's
    dependencies (the .venv's), which runs make_dataset.py and train/train here."""
    info_file = assets / "info.json"
    if info_file.is_file() and (assets / "tiny_model" / "config.json").is_file():
        info = json.loads(info_file.read_text())
        log(f"assets: reusing {assets} ({info.get('made')})")
        return info
    build = assets.parent / "build"
    shutil.rmtree(build, ignore_errors=True)
    data = build / "data"
    log(f"assets: synthesising {train_utterances} training and {test_utterances} held-out utterances (espeak-ng)")
    subprocess.run([python, str(ROOT / "local_test" / "make_dataset.py"), str(data), "--train",
                    str(train_utterances), "--test", str(test_utterances), "--train-voices", "6"],
                   check=True, capture_output=True)
    info: dict = {"train_utterances_used": train_utterances, "test_utterances": test_utterances}
    model_out = assets / "tiny_model"
    shutil.rmtree(model_out, ignore_errors=True)
    if trained_model is not None:
        shutil.copytree(trained_model, model_out)
        info["tiny_model"] = f"copied from {trained_model}"
    else:
        info.update(_train_tiny(build, data, model_out, python, train_seconds, log))
    # What travels: the held-out split whole (WAV: the client reads it without soundfile), the first
    # `carried_train` training utterances as FLAC (about half the bytes; the training program reads it).
    _copy_split(data / "test", assets / "data" / "test", None)
    _copy_split(data / "train", assets / "data" / "train", carried_train, flac=True)
    info["carried_train_utterances"] = carried_train
    info["made"] = __import__("datetime").datetime.now().strftime("%Y-%m-%d %H:%M")
    info_file.write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(build, ignore_errors=True)
    return info


def _train_tiny(build: Path, data: Path, model_out: Path, python: str, seconds: float, log) -> dict:
    """train/train on this CPU, the accuracy bench's recipe (bench/train_accuracy) on a time budget."""
    opt = build / "opt_ml"
    (opt / "input" / "config").mkdir(parents=True)
    (opt / "input" / "data").mkdir(parents=True)
    for ch, src in (("train", data / "train"), ("test", data / "test"), ("model", ROOT / "local_test" / "tiny_model")):
        (opt / "input" / "data" / ch).symlink_to(src)
    # bench/train_accuracy's recipe (CER 0.265 after 600 s on this project's CPU, bench/README.md).
    hp = {"train_batch_size": "8", "learning_rate": "5e-4", "epochs": "1000", "warmup_steps": "0.05",
          "lr_scheduler": "cosine", "mask_time_prob": "0.15", "weight_decay": "0.05", "speed_perturbation": "0.1",
          "precision": "bf16" if _cpu_bf16() else "fp32", "save_steps": "100000", "logging_steps": "50"}
    hp.update({"max_train_seconds": str(seconds)} if seconds > 0 else {"max_steps": "1"})
    (opt / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hp))
    env = dict(os.environ, OPT_ML=str(opt), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
               PATH=f"{Path(python).parent}:{os.environ.get('PATH', '')}")
    # One thread unless told otherwise: on a shared 2-core machine two spinning OpenMP threads ran steps up to
    # 6x slower (bench/train_accuracy's note).
    env.setdefault("OMP_NUM_THREADS", "1")
    log(f"assets: training the tiny model on this CPU for {seconds:g} s in {hp['precision']} with "
        f"{env['OMP_NUM_THREADS']} thread(s) (train/train, {opt})")
    proc = subprocess.run([str(ROOT / "train" / "train")], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training the tiny model failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    metrics = json.loads((opt / "output" / "data" / "metrics.json").read_text())
    shutil.copytree(opt / "model", model_out)
    log(f"assets: tiny model CER {metrics.get('cer')} on held-out voices after {metrics.get('steps')} steps")
    if seconds > 0 and (metrics.get("cer") is None or metrics["cer"] > 0.6):
        log(f"assets: the tiny model learned little here (CER {metrics.get('cer')}); stage 1 uses the one stage 3 "
            "trains on the GPU when that one is better")
    return {"tiny_model": "trained here by train/train", "train_seconds": seconds, "steps": metrics.get("steps"),
            "cer": metrics.get("cer"), "wer": metrics.get("wer"), "precision": metrics.get("precision")}


def _cpu_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in /proc/cpuinfo: where training in bf16 on the CPU is fast."""
    try:
        flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split(":", 1)[-1].split()))


def _copy_split(src: Path, dest: Path, limit: int | None, flac: bool = False) -> None:
    rows = [json.loads(line) for line in (src / "manifest.jsonl").open()][:limit]
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "audio").mkdir(parents=True)
    with open(dest / "manifest.jsonl", "w") as f:
        for r in rows:
            if flac:
                out = str(Path(r["audio"]).with_suffix(".flac"))
                subprocess.run(["sox", str(src / r["audio"]), str(dest / out)], check=True)
                r = {**r, "audio": out}
            else:
                shutil.copy2(src / r["audio"], dest / r["audio"])
            f.write(json.dumps(r) + "\n")


def check(assets: Path) -> list[str]:
    """What is missing from the assets folder (empty when complete)."""
    need = [assets / "info.json", assets / "tiny_model" / "config.json", assets / "tiny_model" / "model.safetensors",
            assets / "data" / "train" / "manifest.jsonl", assets / "data" / "test" / "manifest.jsonl"]
    return [str(p) for p in need if not p.is_file()]


# Reading and writing clips without soundfile (the client side runs before and apart from the programs).
def read_wav(path: Path):
    """A 16 kHz mono 16-bit PCM WAV (what make_dataset.py writes) as float32 in [-1, 1] (numpy array)."""
    import numpy as np

    with wave.open(str(path)) as w:
        if w.getframerate() != RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: need 16 kHz mono 16-bit PCM")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def wav_bytes(audio) -> bytes:
    """float32 audio as a 16 kHz mono 16-bit PCM WAV file's bytes (the request body of audio/wav)."""
    import io

    import numpy as np

    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)
    return buf.getvalue()


def read_split(split_dir: Path, limit: int | None = None):
    """[(name, audio, text)] of a split, in manifest order."""
    rows = [json.loads(line) for line in (split_dir / "manifest.jsonl").open()][:limit]
    return [(Path(r["audio"]).stem, read_wav(split_dir / r["audio"]), r["text"]) for r in rows]


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use bench/gpu_check --prepare")
