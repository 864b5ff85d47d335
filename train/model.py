"""The model to fine-tune: from the `model` channel or `model_name`, with a CTC head sized to the vocab.

Any architecture serving supports (common/modeldir.py: Wav2Vec2 and its large/XLS-R/MMS variants, Conformer,
HuBERT, WavLM, Data2VecAudio, UniSpeech(-SAT), SEW, SEW-D), through the Auto classes, from a CTC fine-tune
or from the same model type's pretrained base. The loading rules are serving's: safetensors first, a
`pytorch_model.bin` only through torch's weights_only unpickler, no remote code, a directory may be one
folder down (an unpacked model.tar.gz), and every encoder weight must load (only the CTC head may be new, and
other heads' weights, such as pretraining's quantizer, are left out). A source directory with config.json
but no weights is initialised randomly from that config (how the quickstart, tests and benchmarks train the
tiny model with no download).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from common import modeldir

from .failure import TrainingError

_HP_CONFIG = ("mask_time_prob", "mask_feature_prob", "layerdrop", "hidden_dropout", "attention_dropout",
              "activation_dropout", "feat_proj_dropout", "final_dropout")


def _overrides(hp, config_defaults, vocab_size: int, pad_token_id: int, log) -> dict:
    kwargs = dict(vocab_size=vocab_size, pad_token_id=pad_token_id, ctc_loss_reduction="mean",
                  ctc_zero_infinity=hp.ctc_zero_infinity)
    unused = []
    for name in _HP_CONFIG:
        if hasattr(config_defaults, name):
            kwargs[name] = getattr(hp, name)
        elif getattr(hp, name):
            unused.append(name)
    if unused:
        log(f"[model] {config_defaults.model_type} has no {', '.join(unused)}: hyperparameter ignored")
    return kwargs


def _same_vocab(source: Path, vocab: dict[str, int]) -> bool:
    try:
        return json.loads((source / "vocab.json").read_text()) == vocab
    except (OSError, ValueError):
        return False


def _fail(source: str, exc: Exception) -> TrainingError:
    return TrainingError(f"cannot load model {source!r}: {str(exc).rstrip('.')}; give a `model` channel with a save_pretrained "
                         f"directory of a supported CTC architecture (model.safetensors, or pytorch_model.bin) or "
                         f"a reachable hub id in model_name")


def _local_folder(source: str) -> Path | None:
    """The model folder `load` would use for `source` (one folder down for an unpacked model.tar.gz); None for a
    hub id or a folder `load` will refuse."""
    path = Path(source)
    if not path.is_dir():
        return None
    try:
        return modeldir.find(path)
    except modeldir.ModelDirError:
        return None


def starts_random(source: str) -> bool:
    """Whether `source` is a local model folder (as `load` finds it) with config.json and no weights, so that
    training starts from random weights. A hub id, or a folder `load` will refuse, is not."""
    folder = _local_folder(source)
    return folder is not None and modeldir.weights_file(folder) is None


def layer_norm_encoder(source: str) -> bool:
    """Whether `source`, a local model folder (as `load` finds it), has a layer-normed feature encoder
    (config.json `feat_extract_norm` "layer": wav2vec2-large's layout, not wav2vec2-base's "group"). False for a
    hub id or a folder `load` will refuse."""
    folder = _local_folder(source)
    try:
        return folder is not None and modeldir.read_config(folder).get("feat_extract_norm") == "layer"
    except modeldir.ModelDirError:
        return False


def load(source: str, hp, vocab: dict[str, int], vocab_size: int, pad_token_id: int,
         log=print) -> tuple[torch.nn.Module, bool]:
    """(model, pretrained): `source` is a local directory or a hub id; vocab_size = len(tokenizer)."""
    from transformers import CONFIG_MAPPING, AutoConfig

    path = Path(source)
    is_dir = path.is_dir()
    try:
        if is_dir:
            path = modeldir.find(path)
            if path != Path(source):
                log(f"[model] using {path} (the only model folder in {source})")
            config_dict = modeldir.read_config(path)
        else:
            config_dict = AutoConfig.from_pretrained(source, trust_remote_code=False).to_dict()
        cls = modeldir.model_class(config_dict, serving=False)
    except modeldir.ModelDirError as exc:
        raise _fail(source, exc) from None
    except (OSError, ValueError) as exc:
        raise _fail(source, str(exc).splitlines()[0]) from None
    defaults = CONFIG_MAPPING[config_dict["model_type"]]()
    kwargs = _overrides(hp, defaults, vocab_size, pad_token_id, log)
    location = path if is_dir else source
    config = AutoConfig.from_pretrained(location, local_files_only=is_dir, trust_remote_code=False, **kwargs)
    weights = modeldir.weights_file(path) if is_dir else None
    if is_dir and weights is None:
        log(f"[model] {path} has config.json but no weights: initialising {cls.__name__} RANDOMLY from its config "
            f"(hidden {config.hidden_size}, {config.num_hidden_layers} layers)")
        return cls(config), False
    try:
        if is_dir:
            model, info = modeldir.load_weights(cls, path, config, weights, ignore_mismatched_sizes=True)
            if modeldir.is_pickled(weights):
                log(f"[model] {weights.name} read with torch's weights_only unpickler (tensors only, no code)")
        else:
            # A hub id: safetensors when the repository has them, else its .bin through weights_only.
            model, info = cls.from_pretrained(source, config=config, use_safetensors=None, weights_only=True,
                                              ignore_mismatched_sizes=True, output_loading_info=True,
                                              dtype=torch.float32)  # as modeldir.load_weights: fp32 masters
        for note in modeldir.check_loading_info(info, model, weights or Path(source), config_dict, new_head=True):
            log(f"[model] {note}")
    except modeldir.ModelDirError as exc:
        raise _fail(source, exc) from None
    except (OSError, ValueError) as exc:
        raise _fail(source, str(exc).splitlines()[0]) from None
    head_kept = is_dir and _same_vocab(path, vocab) and not any(
        k.startswith("lm_head.") for k in set(info.get("missing_keys") or ()) |
        {m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys") or ()})
    if head_kept:
        log(f"[model] loaded {cls.__name__} from {source}; its vocab.json matches, keeping its CTC head")
    else:
        # A new CTC head: the old one (if any) maps to another vocabulary.
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, model.config.initializer_range)
            model.lm_head.bias.zero_()
        log(f"[model] loaded {cls.__name__} from {source}; new CTC head for {vocab_size} tokens")
    return model, True
