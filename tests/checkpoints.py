"""Tiny checkpoint directories of every supported architecture and layout, laid out as published ones are.

Each kind copies a published checkpoint's shape at tiny size (hidden 32, 2 layers, 7 convolutions of 16
channels, so frames are still 20 ms): its model_type and config keys, its feature extractor settings and its
vocabulary style, written with the file names the Hub and the AWS blog post's training script write.
Weights are random (seeded), so transcripts are gibberish, but varied: they are compared with what
transformers itself makes of the same directory (`reference_text`).

    build(kind, dest)        a servable directory (KINDS) in dest (created); returns the model folder
    build_refused(kind, dest)  a directory the loaders must refuse (REFUSED); returns its path
    reference_text(model_dir, audio, language=None)  transformers' own transcript

Layouts: "flat" (save_pretrained, safetensors), "blog" (the blog post's model.tar.gz: pytorch_model.bin with the
old weight-norm key names, transformers 4.6.1 config and tokenizer files, training_args.bin and
checkpoint-*/ folders with optimizer state, all at the top), "folder" (flat, under one top-level folder).
"""
from __future__ import annotations

import json
import pathlib
import pickle
import shutil
from pathlib import Path

import numpy as np

RATE = 16_000
CONV = dict(conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, **CONV)
LETTERS = "ETAONIHSRDLUMWCFGYPBVK'XJQZ"

# Vocabulary styles of published checkpoints.
VOCAB_960H = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: 5 + i for i, c in enumerate(LETTERS)}}
TOKENIZER_960H = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                  "do_lower_case": False, "word_delimiter_token": "|", "tokenizer_class": "Wav2Vec2CTCTokenizer"}
_lower = sorted(set(LETTERS.lower()))
# The HF fine-tuning recipe (and the blog post): characters, "|" for space, then [UNK] and [PAD].
VOCAB_RECIPE = {**{c: i for i, c in enumerate(_lower)}, "|": len(_lower), "[UNK]": len(_lower) + 1,
                "[PAD]": len(_lower) + 2}
TOKENIZER_RECIPE = {"unk_token": "[UNK]", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "[PAD]",
                    "do_lower_case": False, "word_delimiter_token": "|", "tokenizer_class": "Wav2Vec2CTCTokenizer"}
# A literal space instead of "|" (the tokenizer's word delimiter "|" is then not in vocab.json).
VOCAB_SPACE = {**{c: i for i, c in enumerate(_lower)}, " ": len(_lower), "[UNK]": len(_lower) + 1,
               "[PAD]": len(_lower) + 2}


def _fe(mask: bool) -> dict:
    return {"do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
            "padding_side": "right", "padding_value": 0.0, "return_attention_mask": mask, "sampling_rate": RATE}


GROUP = dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False)
LAYER = dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)

# kind -> (model_type, config overrides, vocab, tokenizer_config, attention mask, what it stands for)
KINDS = {
    "wav2vec2-base": ("wav2vec2", GROUP, VOCAB_960H, TOKENIZER_960H, False, "facebook/wav2vec2-base-960h"),
    "wav2vec2-large-lv60": ("wav2vec2", LAYER, VOCAB_960H, TOKENIZER_960H, True,
                            "facebook/wav2vec2-large-960h-lv60-self"),
    "xls-r": ("wav2vec2", LAYER, VOCAB_RECIPE, TOKENIZER_RECIPE, True, "an XLS-R fine-tuned with the HF recipe"),
    "wav2vec2-conformer": ("wav2vec2-conformer", dict(feat_extract_norm="layer", conv_bias=True,
                                                      position_embeddings_type="relative", conv_depthwise_kernel_size=7),
                           VOCAB_960H, TOKENIZER_960H, True, "facebook/wav2vec2-conformer-rel-pos-large-960h-ft"),
    "hubert": ("hubert", LAYER, VOCAB_960H, TOKENIZER_960H, True, "facebook/hubert-large-ls960-ft"),
    "wavlm": ("wavlm", dict(GROUP, num_buckets=32, max_bucket_distance=80), VOCAB_960H,
              {**TOKENIZER_960H, "do_lower_case": True}, False, "a WavLM base-plus CTC fine-tune, do_lower_case"),
    "data2vec-audio": ("data2vec-audio", dict(conv_bias=True, conv_pos_kernel_size=5, num_conv_pos_embeddings=3),
                       VOCAB_960H, TOKENIZER_960H, True, "facebook/data2vec-audio-base-960h"),
    "unispeech": ("unispeech", LAYER, VOCAB_SPACE, TOKENIZER_RECIPE, True, "a UniSpeech fine-tune, space in vocab"),
    "unispeech-sat": ("unispeech-sat", GROUP, VOCAB_960H, TOKENIZER_960H, False,
                      "microsoft/unispeech-sat-base-100h-libri-ft"),
    "sew": ("sew", dict(GROUP, squeeze_factor=2), VOCAB_960H, TOKENIZER_960H, False, "asapp/sew-tiny-100k-ft-ls100h"),
    "sew-d": ("sew-d", dict(GROUP, squeeze_factor=2, position_buckets=16, max_position_embeddings=64),
              VOCAB_960H, TOKENIZER_960H, False, "asapp/sew-d-tiny-100k-ft-ls100h"),
    "mms": None,  # built by _mms: adapters, vocab nested by language
    "blog": None,  # built by _blog: the blog post's model.tar.gz
}
REFUSED = ("hubert-weights-wav2vec2-config", "pretrained-base", "whisper", "evil-bin", "head-too-small",
           "head-too-big")


def _config(model_type: str, overrides: dict, vocab_size: int, pad_id: int, **more):
    from transformers import CONFIG_MAPPING

    kwargs = {k: v for k, v in SMALL.items()}
    if model_type == "data2vec-audio":
        kwargs.pop("num_conv_pos_embeddings")
    kwargs.update(overrides, vocab_size=vocab_size, pad_token_id=pad_id, **more)
    return CONFIG_MAPPING[model_type](**kwargs)


def _model(config, seed: int):
    import torch
    from transformers import AutoModelForCTC

    torch.manual_seed(seed)
    model = AutoModelForCTC.from_config(config).eval()
    with torch.no_grad():  # a livelier head than the default init, so that argmax moves between tokens
        model.lm_head.weight.normal_(0.0, 0.5)
    return model


def _write_json(path: Path, doc) -> None:
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False))


def _head_size(vocab: dict, tokenizer_config: dict) -> int:
    """What the HF recipe sizes the head to, len(tokenizer): vocab.json plus the special tokens transformers
    adds when they are missing from it (<s>, </s>, and "|" when the vocabulary has a literal space)."""
    extra = [t for t in (tokenizer_config["bos_token"], tokenizer_config["eos_token"]) if t not in vocab]
    if " " in vocab and "|" not in vocab:
        extra.append("|")
    return len(vocab) + len(extra)


def build(kind: str, dest: Path, layout: str = "flat", seed: int | None = None) -> Path:
    """A servable directory of `kind` under `dest`; returns the folder that holds config.json. Each kind has
    its own default seed, so that kinds of the same shape still differ."""
    dest = Path(dest)
    seed = list(KINDS).index(kind) if seed is None else seed
    dest.mkdir(parents=True, exist_ok=True)
    if kind == "mms":
        return _mms(dest, seed)
    if kind == "blog":
        return _blog(dest, seed)
    model_type, overrides, vocab, tok_config, mask, _ = KINDS[kind]
    target = dest / "wav2vec2-finetuned" if layout == "folder" else dest
    target.mkdir(parents=True, exist_ok=True)
    pad = vocab[tok_config["pad_token"]]
    model = _model(_config(model_type, overrides, _head_size(vocab, tok_config), pad), seed)
    model.save_pretrained(target)
    _write_json(target / "vocab.json", vocab)
    _write_json(target / "tokenizer_config.json", tok_config)
    _write_json(target / "special_tokens_map.json", {k: tok_config[k] for k in
                                                     ("bos_token", "eos_token", "unk_token", "pad_token")})
    _write_json(target / "preprocessor_config.json", _fe(mask))
    return target


def _blog(dest: Path, seed: int) -> Path:
    """The blog post's training output (transformers 4.6.1, Trainer + tokenizer.save_pretrained): wav2vec2-base
    fine-tuned with the recipe vocabulary, weights in pytorch_model.bin with weight_g/weight_v names, the
    feature extractor saved as the Trainer's "tokenizer" (no feature_extractor_type), training_args.bin, and
    the Trainer's checkpoint-*/ folders beside it. The pickles that serving must never open (training_args.bin,
    optimizer.pt) would create `UNPICKLED` next to them if they were unpickled."""
    import torch

    vocab, tok = VOCAB_RECIPE, TOKENIZER_RECIPE
    model = _model(_config("wav2vec2", dict(GROUP, gradient_checkpointing=True), len(vocab), vocab["[PAD]"]), seed)
    config = model.config.to_dict()
    for k in ("dtype", "torch_dtype", "output_attentions"):
        config.pop(k, None)
    config.update(architectures=["Wav2Vec2ForCTC"], transformers_version="4.6.1")
    old_names = {k.replace("parametrizations.weight.original0", "weight_g")
                  .replace("parametrizations.weight.original1", "weight_v"): v.contiguous()
                 for k, v in model.state_dict().items()}
    fe = {k: v for k, v in _fe(False).items() if k != "feature_extractor_type"}
    trap = Trap(dest / "UNPICKLED")

    def write_model(d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        _write_json(d / "config.json", config)
        torch.save(old_names, d / "pytorch_model.bin", _use_new_zipfile_serialization=False)
        _write_json(d / "preprocessor_config.json", fe)
        (d / "training_args.bin").write_bytes(pickle.dumps(trap))

    write_model(dest)
    _write_json(dest / "vocab.json", vocab)
    _write_json(dest / "tokenizer_config.json", {**tok, "special_tokens_map_file": None, "tokenizer_file": None,
                                                 "name_or_path": "./"})
    _write_json(dest / "special_tokens_map.json", {k: tok[k] for k in ("bos_token", "eos_token", "unk_token",
                                                                       "pad_token")})
    for step in (50, 100):
        ck = dest / f"checkpoint-{step}"
        write_model(ck)
        for name in ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth"):
            (ck / name).write_bytes(pickle.dumps(trap))
        _write_json(ck / "trainer_state.json", {"global_step": step, "epoch": step / 50, "log_history": []})
    return dest


class Trap:
    """Unpickling this creates a file: proof, if the file appears, that a pickle was opened."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


MMS_LANGUAGES = {"eng": 30, "fra": 45}


def _mms(dest: Path, seed: int) -> Path:
    """facebook/mms-1b-all's layout at tiny size: one model (adapter_attn_dim) whose model.safetensors holds the
    English adapter and a 30-token head, adapter.<lang>.safetensors per language, vocab.json nested by language
    (<pad>/<s>/</s>/<unk>/| then letters), and a tokenizer_config.json whose target_lang is fra (45 tokens)."""
    import torch
    from safetensors.torch import save_file

    from common import modeldir

    vocabs = {}
    for lang, size in MMS_LANGUAGES.items():
        chars = [c for c in "abcdefghijklmnopqrstuvwxyzéèêàçôûëïüœæâîù'-"][: size - 5]
        vocabs[lang] = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: 5 + i for i, c in enumerate(chars)}}
    config = _config("wav2vec2", LAYER, MMS_LANGUAGES["eng"], 0, adapter_attn_dim=8)
    model = _model(config, seed)
    model.save_pretrained(dest)
    for i, (lang, size) in enumerate(MMS_LANGUAGES.items()):
        torch.manual_seed(seed + 100 + i)
        tensors = {}
        for name, p in modeldir.adapter_parameters(model).items():
            shape = (size,) + tuple(p.shape[1:]) if name.startswith("lm_head.") else tuple(p.shape)
            tensors[name] = torch.randn(shape) * (0.5 if name.startswith("lm_head.") else 0.3)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(dest / f"adapter.{lang}.safetensors"))
    _write_json(dest / "vocab.json", vocabs)
    _write_json(dest / "tokenizer_config.json", {**TOKENIZER_960H, "target_lang": "fra",
                                                 "replace_word_delimiter_char": " "})
    _write_json(dest / "special_tokens_map.json", {k: TOKENIZER_960H[k] for k in
                                                   ("bos_token", "eos_token", "unk_token", "pad_token")})
    _write_json(dest / "preprocessor_config.json", _fe(True))
    return dest


def build_refused(kind: str, dest: Path) -> Path:
    """A directory that looks servable but is not (REFUSED)."""
    import torch

    dest = Path(dest)
    if kind == "hubert-weights-wav2vec2-config":
        # HuBERT's weights with a Wav2Vec2 config.json: the case that served random weights with 200.
        hub = build("hubert", dest / "_hubert")
        wav = build("wav2vec2-large-lv60", dest / "_wav2vec2")
        dest.mkdir(parents=True, exist_ok=True)
        for f in wav.iterdir():
            if f.is_file() and f.name != "model.safetensors":
                shutil.copy(f, dest / f.name)
        shutil.copy(hub / "model.safetensors", dest / "model.safetensors")
        shutil.rmtree(hub)
        shutil.rmtree(wav)
        return dest
    if kind == "pretrained-base":
        from transformers import Wav2Vec2ForPreTraining

        src = build("wav2vec2-base", dest)
        torch.manual_seed(0)
        Wav2Vec2ForPreTraining(_config("wav2vec2", GROUP, len(VOCAB_960H), 0)).save_pretrained(src)
        return src
    if kind == "whisper":
        src = build("wav2vec2-base", dest)
        config = json.loads((src / "config.json").read_text())
        config.update(model_type="whisper", architectures=["WhisperForConditionalGeneration"])
        _write_json(src / "config.json", config)
        return src
    if kind == "evil-bin":
        src = build("wav2vec2-base", dest)
        (src / "model.safetensors").unlink()
        torch.save({"weights": Trap(src / "UNPICKLED")}, src / "pytorch_model.bin")
        return src
    if kind == "head-too-small":
        src = build("wav2vec2-base", dest)
        vocab = {**VOCAB_960H, **{c: len(VOCAB_960H) + i for i, c in enumerate("ÀÉÈ")}}
        _write_json(src / "vocab.json", vocab)
        return src
    if kind == "head-too-big":
        src = build("wav2vec2-base", dest)
        vocab = {t: i for t, i in VOCAB_960H.items() if i < 29}  # ids 29-31 (J, Q, Z) have no token
        _write_json(src / "vocab.json", vocab)
        return src
    raise ValueError(kind)


def reference_text(model_dir: Path, audio: np.ndarray, language: str | None = None) -> str:
    """transformers' own transcript: AutoProcessor -> AutoModelForCTC (float32) -> batch_decode of the argmax,
    with the special tokens' text removed (the transcripts served contain none)."""
    import torch
    from transformers import AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer

    kwargs = {"target_lang": language, "ignore_mismatched_sizes": True} if language else {}
    model = AutoModelForCTC.from_pretrained(model_dir, **kwargs).eval()
    fe = AutoFeatureExtractor.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir, **({"target_lang": language} if language else {}))
    inputs = fe(audio, sampling_rate=RATE, return_tensors="pt")
    with torch.inference_mode():
        ids = model(**inputs).logits.argmax(-1)
    text = tok.batch_decode(ids)[0]
    for special in sorted(set(tok.all_special_tokens) - {tok.word_delimiter_token}, key=len, reverse=True):
        text = text.replace(special, "")
    return text.strip()
