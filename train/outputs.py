"""What a finished job leaves: model/ (only what serving loads) and output/data/ (metrics.json, plot)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from safetensors import SafetensorError

from common import modeldir

from .failure import TrainingError

METRICS_FILE = "metrics.json"
PLOT_FILE = "training.png"


def check_writable(*dirs: Path) -> None:
    """Fail before training, not after it, when an output location cannot be written."""
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise TrainingError(f"cannot write to output directory {d}: {exc.strerror or exc}; make it writable "
                                f"(locally: check OPT_ML and the folder's permissions)") from None


def save_model(model_dir: Path, model, processor) -> None:
    """model/ holds exactly modeldir.save's files: no checkpoints, no optimizer state, nothing left over."""
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        for old in model_dir.iterdir():
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        modeldir.save(model_dir, model, processor)
    except (OSError, SafetensorError) as exc:  # safetensors reports a full disk as a SafetensorError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TrainingError(f"cannot write the model to {model_dir}: {reason}; free space there or give the "
                            f"job a larger volume (VolumeSizeInGB)") from None


PROCESSOR_CONFIG = "processor_config.json"


def declare_processor(model_dir: Path) -> str:
    """Name the processor class in processor_config.json: Wav2Vec2ProcessorWithLM when model/ holds the LM
    (language_model/ and alphabet.json), else Wav2Vec2Processor. Returns the class named.

    AutoProcessor reads the top-level `processor_class`. transformers' ASR pipeline (5.x,
    pipelines._maybe_load_ctc_decoder) reads it from the feature extractor's dict only, which it takes from
    the nested `feature_extractor` of processor_config.json, as published LM checkpoints carry it in their
    preprocessor_config.json; so it goes in both places, and `pipeline("automatic-speech-recognition",
    model=dir)` decodes with the LM (beam search at pyctcdecode's default width) instead of greedily."""
    from common import lm as common_lm

    path = model_dir / PROCESSOR_CONFIG
    config = json.loads(path.read_text())
    with_lm = (model_dir / common_lm.LM_DIR).is_dir() and (model_dir / common_lm.ALPHABET_FILE).is_file()
    name = "Wav2Vec2ProcessorWithLM" if with_lm else "Wav2Vec2Processor"
    config["processor_class"] = name
    if isinstance(config.get("feature_extractor"), dict):
        if with_lm:
            config["feature_extractor"]["processor_class"] = name
        else:
            config["feature_extractor"].pop("processor_class", None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return name


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def write_metrics(out_dir: Path, metrics: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / METRICS_FILE
    path.write_text(json.dumps(_clean(metrics), indent=2) + "\n")
    return path


def plot(out_dir: Path, train_history: list[dict], eval_history: list[dict], lm: dict | None = None) -> Path:
    """Loss (train and eval), greedy WER/CER and the learning rate over steps, in one PNG; lm: {"step", "wer_lm",
    "cer_lm"} of the LM built after training: drawn apart from the greedy curves (hollow markers in their own
    colour on a dashed line at the last step, labelled "beam search + LM, after training")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_err, ax_lr) = plt.subplots(1, 3, figsize=(15, 4))
    if train_history:
        ax_loss.plot([r["step"] for r in train_history], [r["loss"] for r in train_history], label="train loss")
    evals = [r for r in eval_history if r.get("loss") is not None]
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval loss")
    ax_loss.set(xlabel="step", ylabel="CTC loss", title="Loss")
    ax_loss.legend(loc="upper right")
    for key in ("wer", "cer"):
        rows = [r for r in eval_history if r.get(key) is not None]
        if rows:
            ax_err.plot([r["step"] for r in rows], [r[key] for r in rows], "o-", label=f"{key.upper()} (greedy)")
    if lm and any(lm.get(k) is not None for k in ("wer_lm", "cer_lm")):
        ax_err.axvline(lm["step"], color="grey", linestyle="--", linewidth=1)
        ax_err.annotate("beam search + LM,\nafter training", (lm["step"], 0), xytext=(-4, 4),
                        textcoords="offset points", ha="right", va="bottom", fontsize=8, color="purple")
        for key, marker in (("wer_lm", "D"), ("cer_lm", "s")):
            if lm.get(key) is not None:
                ax_err.plot([lm["step"]], [lm[key]], marker, markersize=10, markerfacecolor="none",
                            markeredgecolor="purple", markeredgewidth=2, linestyle="none",
                            label=f"{key[:3].upper()} with LM")
    ax_err.set(xlabel="step", ylabel="error rate", title="Evaluation", ylim=(0, None))
    ax_err.legend(loc="upper right")
    rates = [r for r in train_history if r.get("learning_rate") is not None]
    if rates:
        ax_lr.plot([r["step"] for r in rates], [r["learning_rate"] for r in rates], color="tab:green")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="Learning rate", ylim=(0, None))
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.tight_layout()
    path = out_dir / PLOT_FILE
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
