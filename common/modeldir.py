"""CTC model directories: what training writes, what serving loads and what training can start from.

Which folder (`find`): the directory itself when it holds config.json, else its only sub-folder that does
(a model.tar.gz packed with one top-level folder). Training checkpoints (`checkpoint-*/`, with optimizer
state) beside the final weights, as the AWS blog post's training script leaves them, are ignored.

Which architecture: config.json's `model_type`, through transformers' Auto classes, among the CTC models that
read raw 16 kHz audio through a convolutional feature encoder (`SUPPORTED`). Serving needs a CTC model
(`architectures` names the CTC class, or nothing); training may also start from the same model type's
pretrained base (`...ForPreTraining`, `...Model`). Anything else is refused with the reason.

Which weights: `model.safetensors` (or its sharded index) first; otherwise `pytorch_model.bin` (or its index),
read only through torch's `weights_only` unpickler, which rebuilds tensors and refuses any other object, so
no code in the file runs; a file it refuses stays refused. Other files (training_args.bin, optimizer.pt)
are never read. Remote code is never trusted. Every weight the model has must come from the file and every
tensor in the file must be used: a missing or unexpected key is a load failure, never random weights.

Which vocabulary: the tokenizer the directory declares (Wav2Vec2CTCTokenizer: `<pad>/<s>/</s>/<unk>` or
`[PAD]/[UNK]`, `|` or a literal space between words, `do_lower_case`), the CTC blank being its pad token. The
CTC head must have an output for every token of vocab.json, and every output must be a token of the tokenizer
(vocab.json, or tokens transformers adds such as `<s>`/`</s>`); otherwise the directory is refused.

Adapters (MMS): `adapter.<lang>.safetensors` files beside a vocab.json nested by language, in a model whose
config has `adapter_attn_dim`. `load_checkpoint` applies the requested (or declared) language's adapter.

Importing this module does not import torch or transformers (the gunicorn master calls `find`).

One file because the model directory is one format shared by training and serving: finding it, checking and
loading its weights, vocabulary and adapters, and saving it must agree on every file name and rule, and both
programs import it without torch (the gunicorn master calls `find`).
"""
from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WEIGHTS_FILE = "model.safetensors"
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER = re.compile(r"adapter\.([A-Za-z0-9_-]+)\.(safetensors|bin)")

# model_type -> the class AutoModelForCTC picks for it. Other CTC models of transformers read log-mel
# features (wav2vec2-bert) or are transducer-style (parakeet, lasr): not what this project's audio path feeds.
SUPPORTED = {
    "wav2vec2": "Wav2Vec2ForCTC",
    "wav2vec2-conformer": "Wav2Vec2ConformerForCTC",
    "hubert": "HubertForCTC",
    "wavlm": "WavLMForCTC",
    "data2vec-audio": "Data2VecAudioForCTC",
    "unispeech": "UniSpeechForCTC",
    "unispeech-sat": "UniSpeechSatForCTC",
    "sew": "SEWForCTC",
    "sew-d": "SEWDForCTC",
}
_PREFIXES = sorted({name[: -len("ForCTC")] for name in SUPPORTED.values()}, key=len, reverse=True)
# The attribute each architecture keeps its encoder under (base_model_prefix): weights under one of these
# belong to an encoder, never to a head that may be left out.
ENCODERS = ("wav2vec2", "wav2vec2_conformer", "hubert", "wavlm", "data2vec_audio", "unispeech", "unispeech_sat",
            "sew", "sew_d")


class ModelDirError(ValueError):
    """The directory cannot be used as it is; the message says what is wrong and what to do."""


# Layout ------------------------------------------------------------------------------------------------
def find(root: str | Path) -> Path:
    """The folder under `root` that holds the model (config.json): `root`, or its only sub-folder with one."""
    root = Path(root)
    if (root / "config.json").is_file():
        return root
    if not root.is_dir():
        raise ModelDirError(f"{root} is not a directory")
    candidates = [d for d in sorted(root.iterdir())
                  if d.is_dir() and not d.name.startswith((".", "__MACOSX")) and not d.name.startswith("checkpoint-")
                  and (d / "config.json").is_file()]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise ModelDirError(f"{root} has no config.json but several model folders ({', '.join(d.name for d in candidates)}):"
                            f" pack one model per model.tar.gz")
    checkpoints = sorted(d.name for d in root.glob("checkpoint-*") if (d / "config.json").is_file())
    hint = (f"; it holds only training checkpoints ({', '.join(checkpoints)}): put the final model (weights, "
            f"config.json and the processor's files) at the top of model.tar.gz") if checkpoints else ""
    raise ModelDirError(f"no config.json in {root} or in a single folder below it: not a Hugging Face model "
                        f"directory{hint}")


def read_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise ModelDirError(f"{path} is not a JSON object")
    return config


def weights_file(model_dir: str | Path) -> Path | None:
    """The weights to load: safetensors first, else the pickled .bin; None when there are neither."""
    d = Path(model_dir)
    for name in SAFETENSORS + PICKLED:
        if (d / name).is_file():
            return d / name
    return None


def has_weights(model_dir: str | Path) -> bool:
    return weights_file(model_dir) is not None


def is_pickled(weights: Path) -> bool:
    return weights.name in PICKLED


def adapter_files(model_dir: str | Path) -> dict[str, Path]:
    """Language -> adapter weights file (`adapter.<lang>.safetensors`, else `.bin`)."""
    found: dict[str, Path] = {}
    for f in sorted(Path(model_dir).iterdir()):
        m = ADAPTER.fullmatch(f.name)
        if m and f.is_file() and (m.group(2) == "safetensors" or m.group(1) not in found):
            found[m.group(1)] = f
    return found


# Architecture ------------------------------------------------------------------------------------------
def _prefix(class_name: str) -> str | None:
    return next((p for p in _PREFIXES if class_name.startswith(p)), None)


def ctc_class_name(config: dict, *, serving: bool) -> str:
    """The CTC class for a config.json (as a dict), or ModelDirError saying why there is none.

    serving: the directory must be a CTC model; otherwise (training) any model of a supported type, e.g. a
    pretrained base, is a starting point for a new CTC head."""
    model_type = config.get("model_type")
    supported = ", ".join(SUPPORTED)
    if model_type not in SUPPORTED:
        if model_type in ("wav2vec2-bert", "parakeet_ctc", "lasr_ctc", "granite_speech5_ctc"):
            why = "is a CTC model this project does not run (it reads other features than raw 16 kHz audio)"
        elif model_type:
            why = "is not a CTC speech recognition model"
        else:
            why = "is missing"
        raise ModelDirError(f"config.json's model_type {model_type!r} {why}; supported model types: {supported}")
    ctc = SUPPORTED[model_type]
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise ModelDirError(f"config.json's architectures must be a list of class names, got {architectures!r}")
    for arch in architectures:
        if _prefix(arch) != ctc[: -len("ForCTC")]:
            raise ModelDirError(f"config.json names {arch} but its model_type is {model_type!r} (whose CTC class is "
                                f"{ctc}): the config was edited or comes from another checkpoint")
    if serving and architectures and ctc not in architectures:
        raise ModelDirError(
            f"config.json declares {', '.join(architectures)}: a model without a CTC head (a pretrained base, or "
            f"a model for another task), so it cannot transcribe. Fine-tune it for CTC first (the training image "
            f"does: give this directory as the model channel), then serve the result")
    return ctc


def model_class(config: dict, *, serving: bool):
    """The transformers class (…ForCTC) for config.json, through the Auto mapping."""
    import transformers

    name = ctc_class_name(config, serving=serving)
    return getattr(transformers, name)


def feature_encoder_norm(config) -> str:
    """'group' (one group norm after the first convolution: wav2vec2-base style, trained without an
    attention mask) or 'layer' (layer norm after every convolution; Data2VecAudio always)."""
    return getattr(config, "feat_extract_norm", None) or "layer"


def base_model(model):
    """The encoder under the CTC head (model.wav2vec2, model.hubert, ...), whatever the architecture."""
    return getattr(model, model.base_model_prefix)


# Weights ----------------------------------------------------------------------------------------------
def check_loading_info(info: dict, model, weights: Path, config: dict, *, new_head: bool) -> list[str]:
    """Refuse a load whose weights do not fit the model. With new_head (training), the CTC head may be
    missing or of another size (it is replaced) and keys of other heads (pretraining's quantizer,
    project_q, ...) may be left over; weights of the encoder never. Returns notes for the log."""
    prefix = model.base_model_prefix
    missing = set(info.get("missing_keys") or ())
    unexpected = set(info.get("unexpected_keys") or ())
    mismatched = {k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or ()}
    notes = []
    if new_head:
        head = {k for k in missing | mismatched if k.startswith("lm_head.")}
        missing -= head
        mismatched -= head
        other_heads = {k for k in unexpected if k.split(".", 1)[0] not in (prefix, *ENCODERS)}
        unexpected -= other_heads
        if other_heads:
            roots = sorted({k.split(".", 1)[0] for k in other_heads})
            notes.append(f"{len(other_heads)} weights of other heads not used ({', '.join(roots)})")
    errors = [str(e) for e in info.get("error_msgs") or ()]
    if not (missing or unexpected or mismatched or errors):
        return notes
    cls = type(model).__name__
    parts = []
    for what, keys in (("missing from the file", missing), ("in the file but not in the model", unexpected),
                       ("of another shape", mismatched)):
        if keys:
            parts.append(f"{len(keys)} {what} ({', '.join(sorted(keys)[:3])}{', ...' if len(keys) > 3 else ''})")
    if errors:
        parts.append(f"errors: {'; '.join(e.splitlines()[0] for e in errors[:2])}")
    roots = sorted({k.split(".", 1)[0] for k in unexpected} - {prefix, "lm_head"})
    hint = (f" The file holds a '{roots[0]}' model, not a {cls}: config.json and the weights come from different "
            f"checkpoints; use the config.json saved with these weights." if roots else
            " The weights and config.json do not belong together; re-save the model with save_pretrained.")
    raise ModelDirError(f"{weights.name} does not fit {cls} (config.json: model_type {config.get('model_type')!r}): "
                        f"{'; '.join(parts)}.{hint}")


def load_weights(cls, model_dir: Path, config, weights: Path, **kwargs):
    """cls.from_pretrained with this project's rules; returns (model, loading info). Pickled weights go
    through torch's weights_only unpickler (transformers' load_state_dict, weights_only=True). Always in
    float32, whatever the file holds (transformers 5 loads a float16/bfloat16 checkpoint in its own dtype by
    default): training keeps float32 master weights (mixed precision only in autocast) and saves float32;
    serving casts to its own dtype."""
    import torch

    try:
        return cls.from_pretrained(
            model_dir, config=config, local_files_only=True, use_safetensors=not is_pickled(weights),
            weights_only=True, output_loading_info=True, dtype=torch.float32, **kwargs)
    except Exception as exc:  # noqa: BLE001 - each cause becomes one message naming the file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if is_pickled(weights) and type(exc).__name__ == "UnpicklingError":
            raise ModelDirError(
                f"{weights.name} was refused by torch's weights_only unpickler: it holds objects other than "
                f"tensors, and unpickling them could run code ({first[:200]}). Convert it on a machine you trust "
                f"(from_pretrained, then save_pretrained(safe_serialization=True)) and ship model.safetensors"
            ) from None
        raise ModelDirError(f"cannot load the weights in {weights}: {type(exc).__name__}: {first[:300]}") from None


def read_adapter(path: Path) -> dict:
    """An adapter file's tensors on the CPU: safetensors, or .bin through the weights_only unpickler."""
    # transformers.modeling_utils.load_state_dict (5.x): safetensors via safe_open; anything else via
    # torch's weights-only unpickler (weights_only=True) after transformers' own torch-version check.
    from transformers.modeling_utils import load_state_dict

    try:
        return load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelDirError(f"cannot read adapter weights {path.name}: {type(exc).__name__}: {first[:200]}") from None


def adapter_parameters(model) -> dict[str, Any]:
    """Name -> parameter of every weight an MMS adapter file replaces: the attention adapter layers and the
    CTC head (what transformers' Wav2Vec2 load_adapter expects a file to hold)."""
    out = {}
    for name, module in model.named_modules():
        if type(module).__name__.endswith("AttnAdapterLayer"):
            for pname, p in module.named_parameters():
                out[f"{name}.{pname}"] = p
    for pname, p in model.lm_head.named_parameters():
        out[f"lm_head.{pname}"] = p
    return out


def check_adapter(model, tensors: dict, path: Path) -> int:
    """The adapter's CTC head size; ModelDirError when its keys or shapes do not fit the model."""
    expected = adapter_parameters(model)
    missing, extra = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or extra:
        raise ModelDirError(f"{path.name} does not fit this model: {len(missing)} adapter weights missing "
                            f"({', '.join(sorted(missing)[:3])}), {len(extra)} unexpected ({', '.join(sorted(extra)[:3])})")
    for name, t in tensors.items():
        want = tuple(expected[name].shape)
        if name.startswith("lm_head."):
            want = (t.shape[0],) + want[1:]
        if tuple(t.shape) != want:
            raise ModelDirError(f"{path.name}: {name} has shape {tuple(t.shape)}, the model needs {want}")
    return int(tensors["lm_head.weight"].shape[0])


def set_adapter(model, parameters: dict) -> None:
    """Make the model use these adapter parameters (name -> torch.nn.Parameter, already on the model's
    device and dtype): the modules' parameters are replaced, nothing is copied."""
    for name, param in parameters.items():
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, param)
    model.lm_head.out_features = parameters["lm_head.weight"].shape[0]


# Vocabulary -------------------------------------------------------------------------------------------
def check_vocabulary(tokenizer, head_size: int, config_pad_token_id: int | None = None) -> str:
    """Refuse a tokenizer that does not fit a CTC head of `head_size` outputs; a one-line description of
    what was found, for the log."""
    vocab_ids = {int(i) for i in tokenizer.encoder.values()}
    added = {int(i): t.content for i, t in tokenizer.added_tokens_decoder.items() if int(i) not in vocab_ids}
    n = len(vocab_ids)
    if max(vocab_ids) >= head_size:
        raise ModelDirError(
            f"the vocabulary has {n} tokens (ids up to {max(vocab_ids)}) but the CTC head has {head_size} outputs: "
            f"vocab.json and the weights do not belong together")
    undecodable = [i for i in range(head_size) if i not in vocab_ids and i not in added]
    if undecodable:
        raise ModelDirError(
            f"the CTC head has {head_size} outputs but the tokenizer has no token for ids "
            f"{', '.join(map(str, undecodable[:5]))}{', ...' if len(undecodable) > 5 else ''} ({n} in vocab.json, "
            f"{len(added)} added): vocab.json and the weights do not belong together")
    pad, pad_id = tokenizer.pad_token, tokenizer.pad_token_id
    if pad is None or pad_id is None or pad_id not in vocab_ids:
        raise ModelDirError(f"the tokenizer's pad token {pad!r} (the CTC blank) is not in vocab.json")
    emitted_added = [t for i, t in sorted(added.items()) if i < head_size and t != tokenizer.word_delimiter_token]
    delimiter = tokenizer.word_delimiter_token
    space = " " in tokenizer.encoder
    drop = sorted(set(tokenizer.all_special_tokens) - {delimiter, pad} & set(tokenizer.encoder) | set(emitted_added))
    plus = f" + {len(emitted_added)} added ({' '.join(emitted_added)})" if emitted_added else ""
    note = (f"vocabulary: {n} tokens in vocab.json{plus}, CTC head "
            f"{head_size} outputs; blank = pad token {pad!r} (id {pad_id}); words split at "
            f"{'a literal space' if space else repr(delimiter)}; dropped from transcripts: "
            f"{', '.join(drop) or 'none'}; lower-cased: {'yes' if getattr(tokenizer, 'do_lower_case', False) else 'no'}")
    if config_pad_token_id is not None and config_pad_token_id != pad_id:
        note += (f"; config.json's pad_token_id {config_pad_token_id} differs from the tokenizer's: the tokenizer's "
                 f"is used as the blank")
    return note


def nested_vocab(model_dir: Path) -> dict[str, dict] | None:
    """vocab.json's languages when it is nested by language (MMS), else None."""
    try:
        vocab = json.loads((model_dir / "vocab.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(vocab, dict) and vocab and all(isinstance(v, dict) for v in vocab.values()):
        return vocab
    return None


def load_processor_parts(model_dir: Path, language: str | None = None):
    """(feature extractor, tokenizer) the directory declares, checked to be what a CTC model over raw
    16 kHz audio needs."""
    from transformers import AutoFeatureExtractor, AutoTokenizer, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

    try:
        fe = AutoFeatureExtractor.from_pretrained(model_dir, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelDirError(f"cannot load the feature extractor (preprocessor_config.json) from {model_dir}: "
                            f"{first[:200]}; save the processor with the model (processor.save_pretrained)") from None
    if not isinstance(fe, Wav2Vec2FeatureExtractor) or fe.feature_size != 1:
        raise ModelDirError(f"the feature extractor is {type(fe).__name__} (feature_size "
                            f"{getattr(fe, 'feature_size', '?')}): a raw-waveform Wav2Vec2FeatureExtractor is needed")
    kwargs = {"target_lang": language} if language else {}
    try:
        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, **kwargs)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelDirError(f"cannot load the tokenizer (vocab.json, tokenizer_config.json) from {model_dir}: "
                            f"{type(exc).__name__}: {first[:200]}") from None
    if not isinstance(tok, Wav2Vec2CTCTokenizer):
        raise ModelDirError(f"the tokenizer is {type(tok).__name__}: a character CTC tokenizer "
                            f"(Wav2Vec2CTCTokenizer) is needed")
    if any(isinstance(v, dict) for v in tok.encoder.values()):
        raise ModelDirError("vocab.json is nested by language but no language was chosen")
    if language and getattr(tok, "target_lang", None) != language:
        # The vocabulary that decodes must be the applied adapter's, or every transcript is in the wrong alphabet.
        raise ModelDirError(f"the tokenizer loaded language {getattr(tok, 'target_lang', None)!r} when "
                            f"{language!r} was asked for: its vocabulary would not be the adapter's")
    return fe, tok


def declared_processor(model_dir: Path) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        try:
            cls = json.loads((model_dir / name).read_text()).get("processor_class")
        except (OSError, ValueError, AttributeError):
            continue
        if cls:
            return cls
    return None


# Loading -------------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A model directory loaded for serving: the model in float32 on the CPU, in eval mode."""
    path: Path
    model: Any
    feature_extractor: Any
    tokenizer: Any  # for `language` when the model has adapters
    weights: Path
    languages: dict[str, Path] = field(default_factory=dict)  # adapter file per language; {} without adapters
    language: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return type(self.model).__name__

    @property
    def processor(self):
        from transformers import Wav2Vec2Processor

        return Wav2Vec2Processor(feature_extractor=self.feature_extractor, tokenizer=self.tokenizer)


def _quiet_transformers():
    """transformers' own load report (a table of every key) would repeat, less clearly, what is checked
    here; keep its warnings out of the log."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def choose_language(model_dir: Path, config: dict, requested: str | None) -> tuple[str | None, dict[str, Path], list[str]]:
    """(default language, adapter file per language, notes) for a directory; (None, {}, []) without adapters."""
    files = adapter_files(model_dir)
    nested = nested_vocab(model_dir)
    notes: list[str] = []
    if not nested:
        if requested:
            raise ModelDirError(f"SERVE_LANGUAGE={requested} but this model has no vocabulary nested by language "
                                f"(it transcribes one language); unset SERVE_LANGUAGE")
        if files and config.get("adapter_attn_dim"):
            notes.append(f"{len(files)} adapter files ignored: vocab.json holds one language, so the weights in "
                         f"the model file are used as they are")
        return None, {}, notes
    if not config.get("adapter_attn_dim"):
        raise ModelDirError("vocab.json is nested by language but config.json has no adapter_attn_dim: "
                            "this is not an adapter (MMS) model")
    languages = {lang: files[lang] for lang in sorted(nested) if lang in files}
    if not languages:
        raise ModelDirError("vocab.json is nested by language but there is no adapter.<lang>.safetensors file "
                            "for any of its languages")
    no_adapter = sorted(set(nested) - set(files))
    no_vocab = sorted(set(files) - set(nested))
    if no_adapter:
        notes.append(f"languages without an adapter file (not served): {', '.join(no_adapter[:10])}"
                     f"{', ...' if len(no_adapter) > 10 else ''}")
    if no_vocab:
        notes.append(f"adapter files without a vocabulary (not served): {', '.join(no_vocab[:10])}")
    declared = None
    try:
        declared = json.loads((model_dir / "tokenizer_config.json").read_text()).get("target_lang")
    except (OSError, ValueError, AttributeError):
        pass
    if requested:
        if requested not in languages:
            raise ModelDirError(f"SERVE_LANGUAGE={requested} is not one of this model's languages: "
                                f"{', '.join(languages)}")
        return requested, languages, notes
    if declared in languages:
        notes.append(f"default language {declared!r}: the tokenizer's target_lang")
        return declared, languages, notes
    if len(languages) == 1:
        return next(iter(languages)), languages, notes
    raise ModelDirError(f"this adapter model has {len(languages)} languages and its tokenizer names none "
                        f"(target_lang): set SERVE_LANGUAGE to one of {', '.join(list(languages)[:20])}"
                        f"{', ...' if len(languages) > 20 else ''}")


def load_checkpoint(root: str | Path, *, language: str | None = None) -> Checkpoint:
    """Load a directory to serve: every rule of this module's docstring checked, float32, on the CPU."""
    import torch

    _quiet_transformers()
    model_dir = find(root)
    notes = [] if model_dir == Path(root) else [f"model found in {model_dir.name}/ under {root}"]
    checkpoints = sorted(d.name for d in model_dir.glob("checkpoint-*") if d.is_dir())
    if checkpoints:
        notes.append(f"training checkpoints ignored: {', '.join(checkpoints)}")
    config_dict = read_config(model_dir)
    cls = model_class(config_dict, serving=True)
    weights = weights_file(model_dir)
    if weights is None:
        others = sorted(p.name for p in model_dir.iterdir() if p.suffix in (".h5", ".msgpack", ".ckpt"))
        found = f"; found {', '.join(others)}, which is not read" if others else ""
        raise ModelDirError(f"{model_dir} has no {WEIGHTS_FILE} (nor pytorch_model.bin){found}: save the model "
                            f"with save_pretrained")
    if is_pickled(weights):
        notes.append(f"weights: {weights.name} read with torch's weights_only unpickler (tensors only, no code); "
                     f"{WEIGHTS_FILE} would be preferred")
    language, languages, lang_notes = choose_language(model_dir, config_dict, language)
    notes += lang_notes
    if declared_processor(model_dir) == "Wav2Vec2ProcessorWithLM" and not (model_dir / "language_model").exists():
        notes.append("the processor declares an n-gram language model (Wav2Vec2ProcessorWithLM) but there is no "
                     "language_model/ folder: no LM to decode with")
    fe, tok = load_processor_parts(model_dir, language)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    # An adapter model's own head is replaced by the language's adapter below, whatever its size.
    model, info = load_weights(cls, model_dir, config, weights, ignore_mismatched_sizes=bool(languages))
    if languages:
        info = dict(info)
        info["mismatched_keys"] = {k for k in info.get("mismatched_keys") or () if not str(k[0]).startswith("lm_head.")}
    notes += check_loading_info(info, model, weights, config_dict, new_head=False)
    model.eval()
    if languages:
        path = languages[language]
        tensors = read_adapter(path)
        check_adapter(model, tensors, path)
        set_adapter(model, {k: torch.nn.Parameter(v.to(torch.float32), requires_grad=False) for k, v in tensors.items()})
        model.config.vocab_size = model.lm_head.out_features
        notes.append(f"adapters for {len(languages)} languages; {language!r} applied from {path.name}")
    notes.append(check_vocabulary(tok, model.lm_head.out_features, config.pad_token_id))
    return Checkpoint(model_dir, model, fe, tok, weights, languages, language, notes)


def load(model_dir: str | Path) -> tuple[Any, Any]:
    """(model, processor) of a directory, loaded and checked as for serving (float32, CPU, eval mode)."""
    ckpt = load_checkpoint(model_dir)
    return ckpt.model, ckpt.processor


# Writing -------------------------------------------------------------------------------------------------
def make_processor(vocab: dict[str, int], *, attention_mask: bool = True):
    """Character tokenizer over `vocab` plus a 16 kHz feature extractor."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    from .audio import TARGET_RATE
    from .text import PAD, UNK, WORD_DELIMITER

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
        tokenizer = Wav2Vec2CTCTokenizer(
            str(vocab_file), unk_token=UNK, pad_token=PAD, word_delimiter_token=WORD_DELIMITER
        )
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=TARGET_RATE, padding_value=0.0, do_normalize=True,
        return_attention_mask=attention_mask,
    )
    return Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def tiny_config(vocab_size: int, pad_token_id: int, **overrides):
    """A small Wav2Vec2 (hidden 192, 4 layers, conv dims 128) that trains on a CPU in minutes."""
    from transformers import Wav2Vec2Config

    kwargs = dict(
        vocab_size=vocab_size, pad_token_id=pad_token_id,
        hidden_size=192, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768,
        conv_dim=(128,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        feat_extract_norm="layer", do_stable_layer_norm=True,
        num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=4,
        mask_time_prob=0.05, layerdrop=0.0, ctc_loss_reduction="mean", ctc_zero_infinity=True,
    )
    kwargs.update(overrides)
    return Wav2Vec2Config(**kwargs)


def save(model_dir: str | Path, model, processor) -> None:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    processor.save_pretrained(model_dir)
    # transformers writes the weights 0600; SageMaker keeps file modes when it unpacks model.tar.gz, so a
    # serving process that is not root could not read them.
    for f in model_dir.iterdir():
        if f.is_file():
            f.chmod(0o644)
