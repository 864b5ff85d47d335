"""Stage 3 of the GPU check: the training program on the GPU, through its entry points.

Each run is `train/train` under the SageMaker contract in its own $OPT_ML tree (channels: the carried
training and held-out utterances, and local_test/tiny_model, a config without weights: a random start),
or the same program under `torchrun --nproc_per_node=1 --no-python train/train` (the per-GPU launcher path,
one process, NCCL on a GPU). The first bf16 run also makes the tiny model stage 1 serves: time-boxed
(max_train_seconds), it learns enough on a GPU for confident logits. Figures come from what the program writes (metrics.json: steps, training
seconds, the logged losses) and from outside it (peak memory of its processes).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .. import ROOT
from . import device as dev


def opt_ml(tree: Path, assets: Path, hp: dict) -> Path:
    (tree / "input" / "config").mkdir(parents=True, exist_ok=True)
    (tree / "input" / "data").mkdir(parents=True, exist_ok=True)
    for ch, src in (("train", assets / "data" / "train"), ("test", assets / "data" / "test"),
                    ("model", ROOT / "local_test" / "tiny_model")):
        link = tree / "input" / "data" / ch
        if not link.exists():
            link.symlink_to(src.resolve())
    (tree / "input" / "config" / "hyperparameters.json").write_text(json.dumps({k: str(v) for k, v in hp.items()}))
    return tree


def run(name: str, precision: str, steps: int, assets: Path, work: Path, on_gpu: bool, torchrun: bool,
        timeout_s: float, log, max_train_seconds: float = 0.0) -> dict:
    """One training run; steps is max_steps, max_train_seconds (when > 0) may stop it sooner. The model it
    writes is at result["model_dir"]."""
    tree = work / f"train_{name}"
    hp = {"max_steps": steps, "precision": precision, "train_batch_size": 8, "learning_rate": "5e-4",
          "warmup_steps": "0.1", "logging_steps": max(1, min(50, steps // 10)), "save_steps": 100000, "seed": 42,
          "max_train_seconds": max_train_seconds,
          "lm_order": 0}  # the GPU path is the point; the lent machine has no KenLM tools (lm_order 3 would fail)
    opt_ml(tree, assets, hp)
    env = dict(os.environ, OPT_ML=str(tree), MPLBACKEND="Agg")
    if torchrun:
        env["NCCL_DEBUG"] = "INFO"  # NCCL says when it sets up its communicator
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "--no-python",
               str(ROOT / "train" / "train")]
    else:
        cmd = [str(ROOT / "train" / "train")]
    log_path = work / f"train_{name}.log"
    started = time.monotonic()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=str(ROOT))
        with dev.MemorySampler(proc.pid, gpu=on_gpu) as mem:
            try:
                code = proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                code = "timeout"
    wall = time.monotonic() - started
    text = log_path.read_text(errors="replace")
    result: dict = {"precision": precision, "torchrun": torchrun, "exit": code, "wall_s": round(wall, 1),
                    "memory": mem.figures()}
    metrics_file = tree / "output" / "data" / "metrics.json"
    if code != 0 or not metrics_file.is_file():
        failure = tree / "output" / "failure"
        result["error"] = (failure.read_text()[:1500] if failure.is_file() else text[-1500:])
        log(f"  training {name}: exit {code}\n    " + result["error"].replace("\n", "\n    ")[:1500])
        return result
    m = json.loads(metrics_file.read_text())
    # The `[metrics] ... loss=` lines are the program's public contract (SageMaker metric_definitions).
    losses = [float(x) for x in re.findall(r"\[metrics\] .*\bloss=([0-9.eE+-]+)", text)] or \
        [h["loss"] for h in m.get("train_history", []) if h.get("loss") is not None]
    result.update({
        "steps": m.get("steps"), "train_seconds": m.get("train_seconds"),
        "steps_per_s": (m["steps"] / m["train_seconds"]) if m.get("train_seconds") else None,
        "audio_seconds_per_second": m.get("audio_seconds_per_second"), "precision_used": m.get("precision"),
        "processes": m.get("processes"), "losses": losses,
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        "eval_cer": m.get("cer"), "stopped_by": m.get("stopped_by"), "model_dir": str(tree / "model"),
    })
    if torchrun:
        result["nccl_log_lines"] = sum("NCCL INFO" in line for line in text.splitlines())
    log(f"  training {name}: {result['steps']} steps in {result['train_seconds']} s "
        f"({result['steps_per_s'] or 0:.1f} steps/s), loss {result['loss_first']} -> {result['loss_last']}, "
        f"peak memory {result['memory']['peak_mib']} MiB ({result['memory']['method']})")
    return result
