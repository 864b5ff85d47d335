"""CTC beam search with a KenLM n-gram language model and hotwords (pyctcdecode), for serving and training.

A model directory carries its LM in the layout of transformers' Wav2Vec2ProcessorWithLM, which is
pyctcdecode's `BeamSearchDecoderCTC.save_to_dir`; published checkpoints with an LM load as they are:

    alphabet.json                   {"labels": [one per logit column, "" = CTC blank, " " = word gap], "is_bpe": false}
    language_model/attrs.json       {"alpha": 0.5, "beta": 1.5, "unk_score_offset": -10.0, "score_boundary": true}
    language_model/<name>.arpa|.bin|.binary   the KenLM n-gram (ARPA text, or KenLM's binary format)
    language_model/unigrams.txt     the LM's words, one per line

Decoding is pyctcdecode's own `BeamSearchDecoderCTC.decode_beams`, the call Wav2Vec2ProcessorWithLM.decode
makes, with the same defaults for what a caller leaves out (beam_prune_logp -10, token_min_logp -5,
hotword_weight 10, no history pruning), so a transcript equals that library's for the same logits, LM
and parameters (tests/test_lm.py checks it against both). pyctcdecode 0.5.0 declares numpy < 2 but runs
unchanged on numpy 2: its scores come out identical under numpy 1.26 and 2.3 for float32 and float64
logits (README, Language models), so logits are passed on in their own dtype, as its users pass them.

Process pools: this module imports neither torch nor transformers, everything crossing the process
boundary (numpy arrays, `DecodeOptions`, `Transcript`) pickles, and `make_pool` loads the LM once per
process (`pool_initializer`), so beam search runs beside the accelerator's thread:

    pool = lm.make_pool(model_dir, processes=4)
    future = pool.submit(lm.pool_decode, [logits_a, logits_b], lm.DecodeOptions(beam_width=16), 0.02)
    future.result()   # [Transcript(text=..., words=[{"word", "start", "end"}, ...]), ...]

Errors: `LMError` for a model directory whose LM files are unusable (load time), `OptionError` (a
ValueError) for a decoding option out of range, unknown, or not applicable to this model (request time).

One file because this module is what a spawned beam-search process imports, alone (no torch): the LM file
layout, the option and spelling checks and the decoder the pool runs must stay importable together, and serving
and training both decode through the same few entry points (`load`, `make_pool`, `pool_decode`).
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .text import nfc

ALPHABET_FILE = "alphabet.json"
LM_DIR = "language_model"
ATTRS_FILE = "attrs.json"
UNIGRAMS_FILE = "unigrams.txt"
KENLM_SUFFIXES = (".arpa", ".bin", ".binary")  # what pyctcdecode's LanguageModel.load_from_dir accepts

# Defaults and ranges of the options. pyctcdecode's defaults where a reference user would get them.
DEFAULT_BEAM_WIDTH = 16  # bench/README.md (LM decoding): WER and speed at 8/16/32/64 on the tiny model
MAX_BEAM_WIDTH = 256
ALPHA_RANGE = (0.0, 10.0)  # LM weight (pyctcdecode default 0.5)
BETA_RANGE = (-10.0, 10.0)  # word insertion bonus, natural-log units per word (pyctcdecode default 1.5)
DEFAULT_HOTWORD_WEIGHT = 10.0  # pyctcdecode's DEFAULT_HOTWORD_WEIGHT
HOTWORD_WEIGHT_RANGE = (0.0, 100.0)
MAX_HOTWORDS = 100  # pyctcdecode builds one regular expression and one trie over them per decode
MAX_HOTWORD_CHARS = 50
DEFAULT_BEAM_PRUNE_LOGP = -10.0  # pyctcdecode's DEFAULT_PRUNE_LOGP
DEFAULT_TOKEN_MIN_LOGP = -5.0  # pyctcdecode's DEFAULT_MIN_TOKEN_LOGP
UNK_LABEL = "⁇"  # pyctcdecode.alphabet.UNK_TOKEN: how an alphabet writes the unknown token
# The label of a second word-gap column: a vocabulary with a literal " " whose tokenizer also has the delimiter
# "|" (fairseq style; transformers adds "|") has two. pyctcdecode takes one " ", so the delimiter is the word gap
# and this column is folded into it before each decode (BeamDecoder._as_logits). U+2423 OPEN BOX, a visible space.
SPACE_TWIN = "\u2423"
OPTION_NAMES = ("beam_width", "alpha", "beta", "hotwords", "hotword_weight")


class LMError(Exception):
    """The model directory's LM files cannot be used; the message names the file and the fix."""


class OptionError(ValueError):
    """A decoding option is unknown, out of range, or not applicable to this model (a 400 in serving)."""


# ---------------------------------------------------------------------------------------------- options

@dataclass(frozen=True)
class DecodeOptions:
    """Beam search parameters; every instance is valid (checked on construction, `OptionError` if not).

    beam_width      hypotheses kept per frame, 1..MAX_BEAM_WIDTH
    alpha, beta     LM weight (0..10) and per-word bonus (-10..10); None = the model's own (attrs.json)
    hotwords        words or phrases to boost (at most MAX_HOTWORDS, each at most MAX_HOTWORD_CHARS)
    hotword_weight  how much a hotword is boosted, 0..100 (pyctcdecode's scale; default 10)
    beam_prune_logp, token_min_logp   pyctcdecode's pruning thresholds (<= 0); not per request
    """
    beam_width: int = DEFAULT_BEAM_WIDTH
    alpha: float | None = None
    beta: float | None = None
    hotwords: tuple[str, ...] = ()
    hotword_weight: float = DEFAULT_HOTWORD_WEIGHT
    beam_prune_logp: float = DEFAULT_BEAM_PRUNE_LOGP
    token_min_logp: float = DEFAULT_TOKEN_MIN_LOGP

    def __post_init__(self):
        if isinstance(self.beam_width, bool) or not isinstance(self.beam_width, int) \
                or not 1 <= self.beam_width <= MAX_BEAM_WIDTH:
            raise OptionError(f"beam_width must be a whole number from 1 to {MAX_BEAM_WIDTH}, "
                              f"got {self.beam_width!r}")
        for name, bounds in (("alpha", ALPHA_RANGE), ("beta", BETA_RANGE)):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _number(name, value, *bounds))
        object.__setattr__(self, "hotword_weight", _number("hotword_weight", self.hotword_weight,
                                                           *HOTWORD_WEIGHT_RANGE))
        for name in ("beam_prune_logp", "token_min_logp"):
            object.__setattr__(self, name, _number(name, getattr(self, name), -1000.0, 0.0))
        if isinstance(self.hotwords, str) or not isinstance(self.hotwords, (tuple, list)):
            raise OptionError(f"hotwords must be a list of words or phrases, got {type(self.hotwords).__name__}")
        if len(self.hotwords) > MAX_HOTWORDS:
            raise OptionError(f"too many hotwords: {len(self.hotwords)}, at most {MAX_HOTWORDS}")
        cleaned = []
        for i, word in enumerate(self.hotwords):
            if not isinstance(word, str):
                raise OptionError(f"hotwords[{i}] must be a string, got {type(word).__name__}")
            word = " ".join(nfc(word).split())  # as training wrote the vocabulary and the LM
            if not word:
                raise OptionError(f"hotwords[{i}] is empty")
            if len(word) > MAX_HOTWORD_CHARS:
                raise OptionError(f"hotwords[{i}] is {len(word)} characters long, at most {MAX_HOTWORD_CHARS}")
            cleaned.append(word)
        object.__setattr__(self, "hotwords", tuple(cleaned))


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool):
        raise OptionError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}") from None
    if not (math.isfinite(number) and low <= number <= high):
        raise OptionError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")
    return number


def parse_options(values: Mapping[str, Any]) -> DecodeOptions:
    """DecodeOptions from a request's fields (JSON values, or strings from a query string or header).

    Names: OPTION_NAMES. `hotwords` is a list of strings, or one string of comma-separated words and
    phrases ("kwame nkosi,ravi"). Unknown names and bad values raise OptionError naming them.
    """
    unknown = sorted(set(values) - set(OPTION_NAMES))
    if unknown:
        raise OptionError(f"unknown decoding option {', '.join(unknown)}; valid: {', '.join(OPTION_NAMES)}")
    kwargs: dict[str, Any] = {}
    if "beam_width" in values:
        raw = values["beam_width"]
        if isinstance(raw, str) and re.fullmatch(r"\s*[0-9]+\s*", raw):
            raw = int(raw)
        kwargs["beam_width"] = raw  # anything else is refused by DecodeOptions with the value shown
    for name in ("alpha", "beta", "hotword_weight"):
        if name in values:
            kwargs[name] = values[name]
    if "hotwords" in values:
        raw = values["hotwords"]
        if isinstance(raw, str):
            raw = [w for w in raw.split(",") if w.strip()]
        elif not isinstance(raw, (list, tuple)):
            raise OptionError(f"hotwords must be a list of strings or one comma-separated string, "
                              f"got {type(raw).__name__}")
        kwargs["hotwords"] = tuple(raw)
    return DecodeOptions(**kwargs)


# -------------------------------------------------------------------------------------------- the files

@dataclass(frozen=True)
class LMFiles:
    """Where a model directory's decoder files are; `kenlm` is None for an alphabet without an LM."""
    alphabet: Path | None
    kenlm: Path | None = None
    attrs: Path | None = None
    unigrams: Path | None = None

    @property
    def lm_dir(self) -> Path | None:
        return self.kenlm.parent if self.kenlm else None


def find(model_dir: str | Path) -> LMFiles | None:
    """The LM files of a model directory, None when it has none; LMError when they are incomplete.

    Cheap (no file is read), so a server can decide its default decoder before loading anything.
    """
    model_dir = Path(model_dir)
    alphabet = model_dir / ALPHABET_FILE
    lm_dir = model_dir / LM_DIR
    if not lm_dir.exists():
        return LMFiles(alphabet) if alphabet.is_file() else None
    if not lm_dir.is_dir():
        raise LMError(f"{lm_dir} must be a directory holding {ATTRS_FILE}, {UNIGRAMS_FILE} and a KenLM file")
    if not alphabet.is_file():
        raise LMError(f"{model_dir} has {LM_DIR}/ but no {ALPHABET_FILE}; save the decoder with "
                      f"Wav2Vec2ProcessorWithLM.save_pretrained (or BeamSearchDecoderCTC.save_to_dir)")
    names = sorted(p.name for p in lm_dir.iterdir() if not p.name.startswith((".", "__")))
    kenlm = [n for n in names if Path(n).suffix in KENLM_SUFFIXES]
    missing = [n for n in (ATTRS_FILE, UNIGRAMS_FILE) if n not in names]
    others = sorted(set(names) - {ATTRS_FILE, UNIGRAMS_FILE, *kenlm})
    if missing or len(kenlm) != 1 or others:
        raise LMError(f"{lm_dir} must hold exactly {ATTRS_FILE}, {UNIGRAMS_FILE} and one KenLM file "
                      f"({'/'.join(KENLM_SUFFIXES)}), as pyctcdecode requires; found {names or 'nothing'}")
    return LMFiles(alphabet, lm_dir / kenlm[0], lm_dir / ATTRS_FILE, lm_dir / UNIGRAMS_FILE)


def tokenizer_labels(model_dir: str | Path) -> list[str] | None:
    """The CTC tokenizer's tokens in id order, as pyctcdecode labels; None without a (flat) vocab.json.

    The tokens are what `Wav2Vec2CTCTokenizer.get_vocab()` gives (vocab.json plus the added tokens of
    tokenizer_config.json and added_tokens.json, e.g. <s> and </s>), read from the files so that pool
    processes need not import transformers. As Wav2Vec2ProcessorWithLM matches them, the word delimiter
    becomes " ", the padding token (the CTC blank) "" and the unknown token "⁇" (the last two done by
    pyctcdecode's Alphabet.build_alphabet).
    """
    model_dir = Path(model_dir)
    vocab_file = model_dir / "vocab.json"
    if not vocab_file.is_file():
        return None
    vocab = _read_json(vocab_file)
    if not vocab or not all(isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()):
        return None  # e.g. a multilingual {"lang": {...}} vocab: only alphabet.json can say
    config = _read_json(model_dir / "tokenizer_config.json")
    by_id = {i: token for token, i in vocab.items()}
    for i, entry in (config.get("added_tokens_decoder") or {}).items():
        if isinstance(entry, dict) and str(i).isdigit() and isinstance(entry.get("content"), str):
            by_id.setdefault(int(i), entry["content"])
    for token, i in _read_json(model_dir / "added_tokens.json").items():
        if isinstance(i, int):
            by_id.setdefault(i, token)
    if sorted(by_id) != list(range(len(by_id))):
        raise LMError(f"the tokenizer in {model_dir} has token ids with gaps (0..{max(by_id)} for {len(by_id)} "
                      f"tokens): cannot line them up with the logits")
    delimiter = config.get("word_delimiter_token") or "|"
    twin = delimiter != " " and delimiter in by_id.values()  # a literal " " beside the delimiter: two gaps
    labels = [" " if by_id[i] == delimiter else SPACE_TWIN if twin and by_id[i] == " " else by_id[i]
              for i in range(len(by_id))]
    from pyctcdecode.alphabet import Alphabet

    try:
        return Alphabet.build_alphabet(labels).labels
    except ValueError as exc:  # e.g. duplicate labels
        raise LMError(f"the tokenizer in {model_dir} cannot be a CTC alphabet: {exc}") from None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise LMError(f"cannot read {path}: {exc}") from None
    return value if isinstance(value, dict) else {}


def check_options(options: DecodeOptions, labels: Sequence[str], has_lm: bool) -> None:
    """OptionError when options cannot apply to a model with these alphabet labels (pyctcdecode form) and
    with or without an LM: alpha/beta without an LM, hotwords with characters the model cannot write.

    What `BeamDecoder.check` runs; a server whose decoders live in other processes calls it with the labels
    `pool_info` reports, so that a request is refused before its forward pass.
    """
    if not has_lm and (options.alpha is not None or options.beta is not None):
        raise OptionError("alpha and beta weight a language model, and this model has none")
    # A character vocabulary writes its one-character labels; the others are special tokens (<s>, </s>) that
    # pyctcdecode would match inside a hotword and write into the transcript. "⁇" is pyctcdecode's [UNK].
    letters = {label for label in labels if len(label) == 1 and label not in (" ", UNK_LABEL, SPACE_TWIN)}
    special = sorted({label for label in labels if len(label) > 1 or label == UNK_LABEL}, key=len, reverse=True)
    for i, word in enumerate(options.hotwords):
        token = next((t for t in special if t in word), None)
        if token is not None:
            raise OptionError(f"hotwords[{i}] {word!r} contains {token!r}, a special token of the model's "
                              f"vocabulary, not text it writes: hotwords may hold only the characters the model "
                              f"writes")
        outside = sorted({c for c in word.replace(" ", "")} - letters)
        if outside:
            hint = ""
            if any(c.swapcase() in letters for c in outside):
                hint = " (the model writes " + ("upper" if word.islower() else "lower") + "-case)"
            raise OptionError(f"hotwords[{i}] {word!r} has characters the model cannot write: "
                              f"{''.join(outside)!r}{hint}")


# The LM's words against the model's alphabet. Beam search can only put forward words spelled with the
# alphabet's labels; an LM whose words mostly use other characters (an upper-case vocabulary with a
# lower-case LM, another script) scores every hypothesis as unknown words and gives garbage, not an error.
MIN_SPELLABLE = 0.5  # below this fraction of spellable unigrams the LM is refused (serving and training)
WARN_SPELLABLE = 0.95  # below this, loading logs which characters the model cannot write
NOT_WORDS = ("<s>", "</s>", "<unk>")  # KenLM's own entries in unigram lists


@dataclass(frozen=True)
class Spelling:
    """How many of an LM's unigrams the model's alphabet can spell; `outside`: characters it cannot write
    (of the first unspellable words), `case`: True when most of them are the other case of a label's."""
    words: int
    spellable: int
    outside: str = ""
    case: bool = False

    @property
    def fraction(self) -> float:
        return self.spellable / self.words if self.words else 1.0

    def describe(self) -> str:
        hint = " (the LM looks upper-case and the model lower-case, or the reverse)" if self.case else ""
        return (f"{self.words - self.spellable} of {self.words} words ({1 - self.fraction:.0%}) use characters the "
                f"model cannot write, characters {self.outside[:30]!r}{hint}")


def alphabet_letters(labels: Sequence[str]) -> set[str]:
    """The characters a CTC alphabet (pyctcdecode labels) writes: not the blank, the word gap, the unknown
    token's "⁇", nor special tokens such as <s> or [UNK] (whose letters are not written one by one)."""
    return {c for label in labels if label not in ("", " ", UNK_LABEL, SPACE_TWIN) and not _special(label) for c in label}


def _special(label: str) -> bool:
    return len(label) > 2 and label[0] + label[-1] in ("<>", "[]")


def spelling(words: Sequence[str], labels: Sequence[str]) -> Spelling:
    """Spelling of `words` (an LM's unigrams; KenLM's <s>, </s>, <unk> left out) by `labels`."""
    letters = alphabet_letters(labels)
    words = [w for w in words if w not in NOT_WORDS]
    unspellable = [w for w in words if not set(w) <= letters]
    outside = sorted({c for w in unspellable[:1000] for c in w} - letters)
    case = bool(outside) and sum(c.swapcase() in letters for c in outside) > len(outside) / 2
    return Spelling(len(words), len(words) - len(unspellable), "".join(outside), case)


def check_spelling(words: Sequence[str], labels: Sequence[str], where: str = "the language model") -> Spelling:
    """LMError when fewer than MIN_SPELLABLE of the words can be spelled by the labels; else the Spelling."""
    found = spelling(words, labels)
    if found.fraction < MIN_SPELLABLE:
        raise LMError(f"{where}: {found.describe()}; at least {MIN_SPELLABLE:.0%} of an LM's words must be "
                      f"spellable by the model's vocabulary: give an LM over the model's characters, in its case")
    return found


# ------------------------------------------------------------------------------------------- the decoder

@dataclass
class Transcript:
    """One clip's best hypothesis. words: [{"word", "start", "end"}] in seconds (as common.ctc.word_offsets)."""
    text: str
    words: list[dict] = field(default_factory=list)
    logit_score: float = 0.0  # the acoustic model's log-probability of the hypothesis
    score: float = 0.0  # with LM, word bonus and hotwords: what the beams were ranked by


class BeamDecoder:
    """pyctcdecode's BeamSearchDecoderCTC over one model's alphabet, with or without its LM."""

    def __init__(self, decoder, files: LMFiles | None, spelling: Spelling | None = None):
        self._decoder = decoder
        self.files = files
        self.spelling = spelling  # of the LM's unigrams by the alphabet; None without an LM
        # pyctcdecode 0.5.0 has no public accessors for these two; Wav2Vec2ProcessorWithLM reads them too.
        self.labels: list[str] = decoder._alphabet.labels
        lm = decoder._language_model
        self.has_lm = lm is not None
        self.alpha: float | None = lm.alpha if lm is not None else None
        self.beta: float | None = lm.beta if lm is not None else None
        self.order: int | None = lm.order if lm is not None else None
        # A second word-gap column (SPACE_TWIN) is folded into the word gap's before decoding.
        self._twin = (self.labels.index(SPACE_TWIN), self.labels.index(" ")) \
            if SPACE_TWIN in self.labels and " " in self.labels else None

    @property
    def vocab_size(self) -> int:
        return len(self.labels)

    def close(self) -> None:
        """Free the LM: pyctcdecode keeps every decoder's LM in a class-level dict until cleaned up."""
        decoder, self._decoder = getattr(self, "_decoder", None), None
        if decoder is not None:
            decoder.cleanup()

    def __del__(self):
        self.close()

    def check(self, options: DecodeOptions) -> None:
        """OptionError when options cannot apply to this model (LM weights without an LM, unknown letters)."""
        check_options(options, self.labels, self.has_lm)

    def decode(self, logits: np.ndarray, options: DecodeOptions = DecodeOptions(),
               seconds_per_frame: float = 0.02) -> Transcript:
        """The best hypothesis for one clip's logits, shape (frames, vocab_size), raw or log-softmaxed."""
        return self.decode_batch([logits], options, seconds_per_frame)[0]

    def decode_batch(self, logits_list: Sequence[np.ndarray], options: DecodeOptions = DecodeOptions(),
                     seconds_per_frame: float = 0.02) -> list[Transcript]:
        """Each clip's best hypothesis; each array is (its own frames, vocab_size), no padding frames."""
        self.check(options)
        arrays = [self._as_logits(x, i) for i, x in enumerate(logits_list)]
        if self.has_lm:
            # Per call, so one request's alpha/beta never leaks into the next one decoded here.
            self._decoder.reset_params(alpha=float(self.alpha if options.alpha is None else options.alpha),
                                       beta=float(self.beta if options.beta is None else options.beta))
        out = []
        for x in arrays:
            if len(x) == 0:
                out.append(Transcript(""))  # what pyctcdecode returns too, without its empty-mean warning
                continue
            beams = self._decoder.decode_beams(
                x, beam_width=options.beam_width, beam_prune_logp=options.beam_prune_logp,
                token_min_logp=options.token_min_logp, hotwords=list(options.hotwords) or None,
                hotword_weight=options.hotword_weight)
            text, _state, word_frames, logit_score, score = beams[0]
            words = [{"word": w, "start": round(s * seconds_per_frame, 3), "end": round(e * seconds_per_frame, 3)}
                     for w, (s, e) in word_frames]
            out.append(Transcript(text, words, float(logit_score), float(score)))
        return out

    def _as_logits(self, x, index: int) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.vocab_size:
            raise ValueError(f"logits[{index}] must be frames x {self.vocab_size} (the alphabet's size), "
                             f"got shape {x.shape}")
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float32)  # float16 and integer arrays; what a model gives is float32 already
        if not np.isfinite(x).all():
            raise ValueError(f"logits[{index}] holds NaN or infinite values")
        if self._twin is not None:
            # Both columns mean a word gap: their probabilities add (log-sum-exp of logits, raw or log-softmaxed,
            # keeps each frame's normalisation), and the twin column can no longer win.
            twin, space = self._twin
            x = x.copy()
            x[:, space] = np.logaddexp(x[:, space], x[:, twin])
            x[:, twin] = x.min(axis=1) - 30.0
        return x


def load(model_dir: str | Path, labels: Sequence[str] | None = None) -> BeamDecoder:
    """The beam decoder of a model directory: its alphabet and LM when it has them (`has_lm`).

    labels: the logit columns' tokens (pyctcdecode form, see `tokenizer_labels`); by default read from
    the directory's vocab.json. Without alphabet.json (no LM) they make the alphabet; with it they must
    equal its labels one for one, or LMError: an alphabet in another order than the logits would give
    wrong transcripts, not an error. Loading an ARPA file takes longer than KenLM's binary format.
    """
    from pyctcdecode.alphabet import Alphabet
    from pyctcdecode.decoder import BeamSearchDecoderCTC
    from pyctcdecode.language_model import LanguageModel

    model_dir = Path(model_dir)
    files = find(model_dir)
    expected = list(labels) if labels is not None else tokenizer_labels(model_dir)
    if files is None or files.alphabet is None:
        if expected is None:
            raise LMError(f"{model_dir} has neither {ALPHABET_FILE} nor a vocab.json to build one from")
        alphabet = Alphabet(expected, is_bpe=False)
    else:
        try:
            alphabet = Alphabet.loads(files.alphabet.read_text(encoding="utf-8"))
        except (ValueError, KeyError) as exc:
            raise LMError(f"{files.alphabet} is not a pyctcdecode alphabet ({exc})") from None
        if expected is not None and alphabet.labels != expected:
            diff = next((i for i, (a, b) in enumerate(zip(alphabet.labels, expected)) if a != b),
                        min(len(alphabet.labels), len(expected)))
            raise LMError(f"{files.alphabet} does not match the tokenizer's vocabulary ({len(alphabet.labels)} "
                          f"labels vs {len(expected)} tokens; first difference at id {diff}): the LM was "
                          f"built for another vocabulary")
    vocab_size = _read_json(model_dir / "config.json").get("vocab_size")
    if isinstance(vocab_size, int) and vocab_size != len(alphabet.labels):
        raise LMError(f"the decoder's alphabet has {len(alphabet.labels)} labels but the model "
                      f"({model_dir / 'config.json'}) writes {vocab_size} logits per frame")
    language_model = found = None
    if files is not None and files.kenlm is not None:
        try:
            words = files.unigrams.read_text(encoding="utf-8").split()
        except (OSError, UnicodeDecodeError) as exc:
            raise LMError(f"cannot read {files.unigrams} as UTF-8 words: {exc}") from None
        # Before the (slow) KenLM load: an LM the model cannot spell is refused, never decoded with.
        found = check_spelling(words, alphabet.labels, where=f"{files.lm_dir.name}/{UNIGRAMS_FILE}")
        try:
            language_model = LanguageModel.load_from_dir(str(files.lm_dir), unigram_encoding="utf-8")
        except (OSError, ValueError, RuntimeError) as exc:  # kenlm raises OSError for a bad file
            raise LMError(f"cannot load the language model in {files.lm_dir}: {exc}") from None
    return BeamDecoder(BeamSearchDecoderCTC(alphabet, language_model), files, found)


# ----------------------------------------------------------------------------------------- process pools

_WORKER: BeamDecoder | None = None
_LOAD_ERROR: str | None = None
_LOADS = 0
PARENT_POLL_S = 0.5  # how often a pool process checks that the process that started it still lives


class DeadlinePassed(TimeoutError):
    """pool_decode was handed a job whose caller had stopped waiting before it started."""


def pool_initializer(model_dir: str, labels: Sequence[str] | None = None) -> None:
    """Runs once in each pool process: loads the decoder (and its LM) into this process.

    A load failure (LMError) is kept and raised by every call, so the caller gets its message rather than
    a broken pool. The process ignores SIGINT (Ctrl-C in a terminal reaches the whole process group; the
    process that started the pool decides when it ends) and exits by itself once that process is gone
    (killed with SIGKILL, say), instead of waiting for work forever.
    """
    global _WORKER, _LOAD_ERROR, _LOADS
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch_parent():
        import time

        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    try:
        _WORKER = load(model_dir, labels)
    except LMError as exc:
        _LOAD_ERROR = str(exc)
    _LOADS += 1


def _worker() -> BeamDecoder:
    if _LOAD_ERROR is not None:
        raise LMError(_LOAD_ERROR)
    if _WORKER is None:
        raise RuntimeError("this runs in a process started by common.lm.make_pool")
    return _WORKER


def pool_decode(logits_list: Sequence[np.ndarray], options: DecodeOptions, seconds_per_frame: float,
                deadline: float | None = None) -> list[Transcript]:
    """`BeamDecoder.decode_batch` in a pool process made by `make_pool`.

    deadline: a time.time() value; a job taken up after it raises DeadlinePassed without decoding (its
    caller has given up: a request that timed out while its job waited in the queue).
    """
    decoder = _worker()
    if deadline is not None:
        import time

        if time.time() > deadline:
            raise DeadlinePassed("the caller's deadline passed before decoding started")
    return decoder.decode_batch(logits_list, options, seconds_per_frame)


def pool_info() -> dict:
    """What a pool process loaded (a cheap call that also proves the process started); LMError if it
    could not load. `labels` is the alphabet (for `check_options`); `torch_imported` should stay False:
    pool processes never import torch (nor initialise CUDA)."""
    import sys

    decoder = _worker()
    files = decoder.files
    kenlm = files.kenlm if files is not None else None
    spelled = decoder.spelling
    unigrams = spelled.words if spelled is not None else None
    return {"has_lm": decoder.has_lm, "alpha": decoder.alpha, "beta": decoder.beta, "order": decoder.order,
            "vocab_size": decoder.vocab_size, "labels": list(decoder.labels),
            "kenlm": str(kenlm) if kenlm else None, "kenlm_bytes": kenlm.stat().st_size if kenlm else None,
            "unigrams": unigrams, "spellable": spelled.fraction if spelled is not None else None,
            "spelling": spelled.describe() if spelled is not None else None, "pid": os.getpid(), "loads": _LOADS, "torch_imported": "torch" in sys.modules}


def make_pool(model_dir: str | Path, processes: int, labels: Sequence[str] | None = None,
              start_method: str = "spawn") -> ProcessPoolExecutor:
    """A process pool whose processes each load the model directory's decoder once.

    `spawn` by default: a child forked from a process that has started torch's (or CUDA's) threads can
    deadlock, and a spawned child imports only this module (no torch, no CUDA). Submit `pool_decode`; the
    first call in each process waits for its LM to load. A decoder that fails to load raises its LMError
    from every call: `pool.submit(lm.pool_info).result()` right after creating it surfaces it early.
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    find(model_dir)  # layout errors here, in the caller, rather than as a broken pool
    return ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context(start_method),
                               initializer=pool_initializer,
                               initargs=(str(model_dir), list(labels) if labels is not None else None))
