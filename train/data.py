"""From channels to training examples: index, vocabulary, label ids, filters, hold-out split, lazy datasets.

  index_channels()   every channel indexed (train/index.py; layouts in train/formats.py), no audio decoded
  vocabulary()       the `vocab` channel, else the checkpoint being resumed, else the training transcripts
  label_examples()   label ids (empty transcripts dropped and counted)
  select_examples()  training utterances dropped (and counted) when they are outside the duration range, too
                     short for CTC to align their transcript (output frames < labels + repeated labels), or
                     shorter than SpecAugment's mask span; the seeded hold-out when there is no test channel
  SpeechDataset      decodes, normalises (common.audio.normalize, as serving does) and augments one item when
                     a DataLoader worker asks for it; an unreadable file becomes a skip report in the batch

`load_channel()` decodes a whole channel at once (launcher/launch prepare uses it to check and convert data).

One file because these are the steps of one pipeline from channels to a DataLoader's items, in the order
train/main.py runs them, passing the same `Examples`/`Labelled` records along; indexing and the layouts are
already modules of their own (train/index.py, train/formats.py).
"""
from __future__ import annotations

import multiprocessing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from common import audio, text
from common.audio import TARGET_RATE, AudioError

from . import formats
from .failure import TrainingError
from .index import ChannelIndex, Ragged, Strings, index_channel

CHANNELS = ("train", "test")
DROP_REASONS = ("empty_transcript", "too_short", "too_long", "too_few_frames_for_transcript",
                "shorter_than_mask_span")
REPLACEMENT_TRIES = 8  # a training item whose file is unreadable is replaced by one of the next ones


# ---- 1. Channels -------------------------------------------------------------------------------------------

def channel_options(hp, channel: str) -> formats.Options:
    return formats.Options(channel, hp.audio_column, hp.text_column, getattr(hp, f"{channel}_tsv", ""))


def index_channels(channel_dir: Callable[[str], Path], hp, log: Callable[[str], None] = print
                   ) -> dict[str, ChannelIndex]:
    """{"train": index, "test": index (when the test channel is given)}."""
    out = {"train": index_channel(channel_dir("train"), channel_options(hp, "train"),
                                  max_skipped_fraction=hp.max_skipped_fraction, log=log)}
    test = channel_dir("test")
    if test.is_dir() and any(test.iterdir()):
        out["test"] = index_channel(test, channel_options(hp, "test"), max_skipped_fraction=hp.max_skipped_fraction,
                                    log=log)
    return out


# ---- 2. Vocabulary -----------------------------------------------------------------------------------------

def read_vocab(folder: Path) -> dict[str, int]:
    import json

    files = [folder / "vocab.json"] if (folder / "vocab.json").is_file() else sorted(folder.glob("*.json"))
    if len(files) != 1:
        raise TrainingError(f"channel vocab ({folder}) must hold one vocab.json, found "
                            f"{[f.name for f in files] or 'none'}")
    try:
        vocab = json.loads(files[0].read_text() or "{}")
    except ValueError as exc:
        raise TrainingError(f"{files[0]} is not valid JSON ({exc}); fix the vocab channel") from None
    if not isinstance(vocab, dict) or not vocab or not all(isinstance(k, str) and isinstance(v, int)
                                                           for k, v in vocab.items()):
        raise TrainingError(f"{files[0]} must map characters to integer ids, like the vocab.json of a "
                            f"Wav2Vec2CTCTokenizer")
    missing = [t for t in (text.PAD, text.UNK) if t not in vocab]
    if missing:
        raise TrainingError(f"{files[0]} lacks {', '.join(missing)}: the vocab needs [PAD] (the CTC blank) and [UNK]")
    return vocab


def normalized_texts(ix: ChannelIndex, chars_to_ignore: str) -> list[str]:
    return [text.normalize(t, chars_to_ignore) for t in ix.texts]


def vocabulary(vocab_dir: Path, checkpoint: Path | None, train: ChannelIndex, hp,
               train_texts: list[str] | None) -> tuple[dict[str, int], str]:
    """(vocab, where it came from): the vocab channel, the resumed checkpoint's, or the training text's."""
    if vocab_dir.is_dir() and any(vocab_dir.iterdir()):
        return read_vocab(vocab_dir), "vocab channel"
    if checkpoint is not None and (checkpoint / "vocab.json").is_file():
        return read_vocab(checkpoint), f"checkpoint {checkpoint.name}"
    if train.processed:
        raise TrainingError("channel train holds processed input_values/labels: add a vocab channel with the "
                            "vocab.json that made the labels")
    if not any(train_texts):
        raise TrainingError(f"transcripts in channel train have no usable characters after normalisation "
                            f"(lower-case, chars_to_ignore={hp.chars_to_ignore!r}): check the `text` values")
    return text.build_vocab(train_texts), "training text"


def encode(texts: list[str], vocab: dict[str, int], space_id: int | None = None) -> tuple[Ragged, Counter]:
    """Label ids of normalised transcripts, and the characters outside the vocabulary with their counts.

    The same ids as Wav2Vec2CTCTokenizer(text).input_ids for normalised text (one id per character, space ->
    the word delimiter `|`, unknown -> [UNK]), but vectorised: the tokenizer takes ~1-3 ms per transcript,
    minutes for a large channel. (The tokenizer would also turn a literal special-token string such as `<s>`
    inside a transcript into that token; here it stays three characters.) space_id: the tokenizer's id for a
    space (its word delimiter), which a fairseq-style vocab.json with a literal space and no `|` lacks; by
    default `|`'s id, else the literal space's."""
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(t) for t in texts], out=offsets[1:])
    codepoints = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
    unique, inverse = np.unique(codepoints, return_inverse=True)
    unk = vocab[text.UNK]
    delimiter = space_id if space_id is not None else vocab.get(text.WORD_DELIMITER, vocab.get(" ", unk))
    chars = [chr(c) for c in unique.tolist()]
    spaces = (" ", text.WORD_DELIMITER)  # the tokenizer reads a `|` in the text as its delimiter too
    table = np.array([delimiter if c in spaces else vocab.get(c, unk) for c in chars], dtype=np.int32)
    counts = np.bincount(inverse, minlength=len(chars)) if len(chars) else np.zeros(0, np.int64)
    unknown = Counter({c: int(n) for c, n in zip(chars, counts) if c not in spaces and c not in vocab})
    return Ragged(table[inverse].astype(np.int32) if len(chars) else np.zeros(0, np.int32), offsets), unknown


# ---- 3. Examples -------------------------------------------------------------------------------------------

def output_frames(config, samples: np.ndarray) -> np.ndarray:
    """CTC output frames (int64 array) for inputs of `samples` 16 kHz samples, any architecture:
    common.batching.output_frames (serving's count: feature encoder, then the adapter) per distinct length."""
    from common import batching  # imports torch: kept out of this module's import (launcher prepare)

    n = np.asarray(samples, dtype=np.int64)
    distinct, inverse = np.unique(n, return_inverse=True)
    frames = np.fromiter((batching.output_frames(config, int(x)) for x in distinct), dtype=np.int64,
                         count=len(distinct))
    return frames[inverse].reshape(n.shape)


@dataclass
class Examples:
    """Examples of one channel: which index entries, their label ids, estimated 16 kHz lengths, references."""
    index: ChannelIndex
    entries: np.ndarray  # int64 entry ids into `index`
    labels: Ragged
    samples: np.ndarray  # int64, from the indexed durations (before augmentation)
    references: Strings  # normalised transcripts (what WER/CER compare with)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def seconds(self) -> float:
        return float(self.samples.sum()) / TARGET_RATE

    def take(self, rows: np.ndarray) -> "Examples":
        return Examples(self.index, self.entries[rows], self.labels.take(rows), self.samples[rows],
                        self.references.take(rows))


@dataclass
class Prepared:
    """What training needs from the data, with the bookkeeping metrics.json reports."""
    train: Examples
    eval: Examples | None
    counts: dict = field(default_factory=dict)


def _repeats(labels: Ragged) -> np.ndarray:
    """Per example, how many labels equal the one before them (CTC needs a blank frame between those)."""
    v = labels.values
    same = np.zeros(len(v), dtype=np.int64)
    if len(v) > 1:
        same[1:] = v[1:] == v[:-1]
        starts = labels.offsets[:-1]
        same[starts[starts < len(v)]] = 0  # the first label of an example repeats nothing
    csum = np.concatenate([[0], np.cumsum(same)])
    return csum[labels.offsets[1:]] - csum[labels.offsets[:-1]]


def channel_examples(ix: ChannelIndex, vocab: dict[str, int], chars_to_ignore: str, decode_reference,
                     texts: list[str] | None = None, space_id: int | None = None) -> tuple[Examples, Counter, int]:
    """All non-empty examples of a channel: (examples, unknown characters, empty transcripts dropped)."""
    samples = np.rint(ix.seconds * TARGET_RATE).astype(np.int64)
    if ix.processed:
        labels = ix.labels
        references = Strings(decode_reference(labels[i]) for i in range(len(labels)))
        keep = np.flatnonzero(labels.lengths > 0)
        unknown = Counter()
    else:
        texts = texts if texts is not None else normalized_texts(ix, chars_to_ignore)
        labels, unknown = encode(texts, vocab, space_id)
        references = Strings(texts)
        keep = np.flatnonzero(labels.lengths > 0)
    all_ = Examples(ix, np.arange(len(ix), dtype=np.int64), labels, samples, references)
    return (all_ if len(keep) == len(ix) else all_.take(keep)), unknown, len(ix) - len(keep)


def training_filter(ex: Examples, hp, config) -> tuple[np.ndarray, dict[str, int]]:
    """Which training examples to keep, and how many were dropped for each reason."""
    seconds = ex.samples / TARGET_RATE
    too_short = seconds < hp.min_duration_s
    too_long = seconds > hp.max_duration_limit
    # Speed perturbation plays a clip up to (1 + x) times faster: it must still fit at the fastest.
    fastest = np.floor(ex.samples / (1.0 + hp.speed_perturbation)).astype(np.int64)
    frames = output_frames(config, fastest)
    unalignable = frames < ex.labels.lengths + _repeats(ex.labels)
    mask_span = int(getattr(config, "mask_time_length", 0) or 0)
    under_mask = (frames < mask_span) if float(getattr(config, "mask_time_prob", 0.0) or 0.0) > 0 else \
        np.zeros(len(ex), dtype=bool)
    reasons = {"too_short": too_short, "too_long": too_long & ~too_short,
               "too_few_frames_for_transcript": unalignable & ~too_short & ~too_long,
               "shorter_than_mask_span": under_mask & ~unalignable & ~too_short & ~too_long}
    drop = too_short | too_long | unalignable | under_mask
    return np.flatnonzero(~drop), {k: int(v.sum()) for k, v in reasons.items()}


def hold_out(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train rows, held-out rows) of n examples."""
    if fraction <= 0 or n < 2:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, round(n * fraction)))
    test = np.sort(order[:n_test])
    return np.setdiff1d(np.arange(n), test), test


@dataclass
class Labelled:
    """Every channel's examples with label ids, before the training filters (which need the model)."""
    train: Examples
    test: Examples | None
    counts: dict


def label_examples(indexes: dict[str, ChannelIndex], vocab: dict[str, int], tokenizer, hp,
                   train_texts: list[str] | None = None, log: Callable[[str], None] = print) -> Labelled:
    """Label ids of every channel's utterances; empty transcripts dropped and counted, characters outside the
    vocabulary counted. Fails when no training transcript has a character of the vocabulary."""
    from common.ctc import Collapsed, decode_text

    def decode_reference(ids) -> str:
        return decode_text(tokenizer, Collapsed([int(t) for t in ids], [], []))

    counts: dict = {"dropped": {}, "unknown_characters": {}}
    out = {}
    space_id = tokenizer.convert_tokens_to_ids(tokenizer.word_delimiter_token)  # as tokenizer(text).input_ids
    for name, ix in indexes.items():
        examples, unknown, empty = channel_examples(ix, vocab, hp.chars_to_ignore, decode_reference,
                                                    train_texts if name == "train" else None, space_id)
        counts["dropped"][name] = {"empty_transcript": empty}
        counts["unknown_characters"][name] = dict(unknown)
        if unknown:
            log(f"[data] channel {name}: characters outside the vocabulary map to [UNK]: "
                + ", ".join(f"{c!r}x{n}" for c, n in unknown.most_common(20)))
        out[name] = examples
    unusable = [tokenizer.unk_token_id, tokenizer.convert_tokens_to_ids(tokenizer.word_delimiter_token)]
    if not np.isin(out["train"].labels.values, unusable, invert=True).any():
        raise TrainingError("transcripts in channel train have no usable characters: none is in the vocabulary")
    return Labelled(out["train"], out.get("test"), counts)


def select_examples(labelled: Labelled, config, hp, log: Callable[[str], None] = print) -> Prepared:
    """Training examples the model can learn from (see `training_filter`), and the evaluation examples: the
    test channel's, else a seeded `test_split` of the training ones."""
    counts = labelled.counts
    keep, dropped = training_filter(labelled.train, hp, config)
    dropped = {**counts["dropped"]["train"], **dropped}
    counts["dropped"]["train"] = dropped
    for name, d in counts["dropped"].items():
        if any(d.values()):
            log(f"[data] channel {name}: dropped " + ", ".join(f"{n} {k}" for k, n in d.items() if n))
    if len(keep) == 0:
        raise TrainingError(f"no training utterances left after filtering ({dropped}); check transcripts and "
                            f"min_duration_s={hp.min_duration_s}/max_duration_s={hp.max_duration_s}")
    train = labelled.train.take(keep)
    evaluation = labelled.test if labelled.test is not None and len(labelled.test) else None
    if labelled.test is None and hp.test_split > 0:
        rest, held = hold_out(len(train), hp.test_split, hp.seed)
        if len(held):
            train, evaluation = train.take(rest), train.take(held)
            log(f"[data] no test channel: held out {len(held)} training utterances (test_split={hp.test_split})")
    log(f"[data] training on {len(train)} utterances ({train.seconds / 60:.1f} min of audio), "
        f"evaluating on {len(evaluation) if evaluation is not None else 0}")
    return Prepared(train, evaluation, counts)


# ---- 4. Items, decoded on demand ---------------------------------------------------------------------------

def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    """`x` played `factor` times faster: read as if recorded at factor x 16 kHz, resampled to 16 kHz."""
    import soxr

    if abs(factor - 1.0) < 1e-3:
        return x
    return soxr.resample(x, TARGET_RATE * factor, TARGET_RATE, quality="HQ").astype(np.float32, copy=False)


# Synthetic rooms for `reverberation`: reverberation times from small rooms to halls, and how much louder the
# direct path is than the reverberant tail (far-field speech sits at the low end).
REVERB_RT60_S = (0.2, 0.8)
REVERB_DRR_DB = (5.0, 20.0)


def reverberate(x: np.ndarray, rt60: float, drr_db: float, noise: np.ndarray) -> np.ndarray:
    """`x` (float32 samples at 16 kHz) heard in a room: convolved with a synthetic impulse response, the direct
    path (1 at t = 0) followed by a diffuse tail of Gaussian noise whose amplitude falls by 60 dB in `rt60`
    seconds (Polack's statistical model, the simulated responses of Ko et al. 2017), scaled so the direct
    path has `drr_db` dB more energy than the tail. noise: at least rt60 x 16,000 standard-normal samples
    (the caller's random stream). Returns float32 of len(x): the tail past the clip's end is cut."""
    n = max(1, int(rt60 * TARGET_RATE))
    t = np.arange(1, n + 1) / TARGET_RATE
    tail = np.asarray(noise[:n], dtype=np.float64) * np.exp(-np.log(1000.0) * t / rt60)
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / max(float(np.sum(tail * tail)), 1e-12))
    h = np.concatenate([[1.0], tail])
    size = 1 << (len(x) + len(h) - 2).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: len(x)]
    return y.astype(np.float32)


# Voices for `voice_perturbation`: a new pitch median drawn log-uniformly over adult voices (low male to high
# female), and a formant scale (a shorter or longer vocal tract: women's formants are ~10-20% above men's).
VOICE_PITCH_HZ = (80.0, 250.0)
VOICE_FORMANT_RATIO = (0.9, 1.25)
# Praat's pitch analysis range for the shift (its "Change gender" defaults).
_PITCH_FLOOR_HZ, _PITCH_CEILING_HZ = 75.0, 600.0


def change_voice(x: np.ndarray, pitch_median_hz: float, formant_ratio: float, seed: int = 0) -> np.ndarray:
    """`x` (float32 samples at 16 kHz) spoken by another voice: pitch moved so that its median is
    `pitch_median_hz` while the formants stay (PSOLA, no vocoder), then the formants (the spectral envelope)
    scaled by `formant_ratio`, duration kept: Praat's "Change gender" through praat-parselmouth. seed: for
    Praat's own random numbers (its overlap-add draws some), so that a draw is repeatable. Returns float32,
    about len(x) samples (PSOLA may differ by a few). A clip Praat finds no voiced frame in comes back as it
    was (nothing to shift)."""
    import parselmouth
    from parselmouth.praat import call, run

    run(f"random_initializeWithSeedUnsafelyButPredictably ({int(seed)})")
    sound = parselmouth.Sound(np.asarray(x, dtype=np.float64), sampling_frequency=TARGET_RATE)
    pitch = call(sound, "To Pitch", 0.0, _PITCH_FLOOR_HZ, _PITCH_CEILING_HZ)
    if call(pitch, "Count voiced frames") == 0:
        return x
    shifted = call(sound, "Change gender", _PITCH_FLOOR_HZ, _PITCH_CEILING_HZ, formant_ratio, pitch_median_hz,
                   1.0, 1.0)
    y = shifted.values[0]
    if shifted.sampling_frequency != TARGET_RATE:  # Praat keeps the rate; resample if a version does not
        import soxr

        y = soxr.resample(y, shifted.sampling_frequency, TARGET_RATE, quality="HQ")
    return y.astype(np.float32)


class SpeechDataset:
    """Map-style dataset over `Examples`: item i is {"input_values": normalised float32 16 kHz samples,
    "labels": int32 ids, "index": i, "skipped": [(channel, entry, name, reason), ...]}.

    Audio is decoded when the item is drawn, in the DataLoader worker that draws it. With
    `speed_perturbation` = s > 0 a training item is resampled by a random factor in [1 - s, 1 + s] each time
    (Ko et al. 2015); with `voice_perturbation` = q > 0 that fraction of draws is then spoken by another voice
    (`change_voice`: pitch median and formant ratio drawn log-uniformly from VOICE_PITCH_HZ and
    VOICE_FORMANT_RATIO); with `reverberation` = p > 0 that fraction of draws is then heard in a synthetic room
    (`reverberate`, RT60 and direct-to-reverberant ratio drawn from REVERB_RT60_S and REVERB_DRR_DB). Voices
    and rooms start at optimizer step `augmentation_start_step` (`step`, which the trainer's callback sets). The
    random draws come from torch's generator, which the Trainer seeds per worker.
    An unreadable file is reported in "skipped"; a training item is then replaced by the next readable one
    (batches keep their size, so every process still steps together), an evaluation item by `min_samples`
    of silence with no labels and index -1, which WER/CER leave out.
    """

    def __init__(self, examples: Examples, *, train: bool, min_samples: int = 0, speed_perturbation: float = 0.0,
                 reverberation: float = 0.0, voice_perturbation: float = 0.0, augmentation_start_step: int = 0):
        self.examples, self.train = examples, train
        self.min_samples, self.speed_perturbation = min_samples, speed_perturbation
        self.reverberation, self.voice_perturbation = reverberation, voice_perturbation
        self.augmentation_start_step = augmentation_start_step
        # The trainer's optimizer step, written by AugmentationStartCallback in the training process and read in
        # the DataLoader workers: shared memory, which a worker inherits when it starts (fork or spawn).
        self.step = multiprocessing.Value("q", 0, lock=False) if augmentation_start_step > 0 else None
        self.lengths = examples.samples.tolist()  # for length-grouped batches

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def seconds(self) -> float:
        return self.examples.seconds

    def _samples(self, i: int) -> np.ndarray:
        ix = self.examples.index
        x = ix.audio.load(int(self.examples.entries[i]))
        import torch  # kept out of this module's import, as above (launcher prepare)

        if self.train and self.speed_perturbation > 0:
            s = self.speed_perturbation
            x = speed_perturb(x, float(torch.empty(()).uniform_(1 - s, 1 + s)))
        changed = False
        later = self.step is None or self.step.value >= self.augmentation_start_step
        if self.train and self.voice_perturbation > 0 and later:
            if float(torch.rand(())) < self.voice_perturbation:
                pitch = _log_uniform(*VOICE_PITCH_HZ)
                formants = _log_uniform(*VOICE_FORMANT_RATIO)
                seed = int(torch.randint(0, 2**31 - 1, ()))
                x, changed = change_voice(x, pitch, formants, seed), True
        reverberated = False
        if self.train and self.reverberation > 0 and later:
            if float(torch.rand(())) < self.reverberation:
                rt60 = float(torch.empty(()).uniform_(*REVERB_RT60_S))
                drr = float(torch.empty(()).uniform_(*REVERB_DRR_DB))
                noise = torch.randn(int(rt60 * TARGET_RATE) + 1, dtype=torch.float64).numpy()
                x, reverberated = reverberate(x, rt60, drr, noise), True
        if len(x) < self.min_samples:  # as serving does: no output frame at all otherwise
            x = np.pad(x, (0, self.min_samples - len(x)))
        # A room's tail or another voice changes the level: normalise again even when the audio came normalised.
        return x if ix.audio.normalized and not (reverberated or changed) else audio.normalize(x)

    def __getitem__(self, i: int) -> dict:
        skipped = []
        tries = REPLACEMENT_TRIES if self.train else 1
        for k in range(tries):
            j = (i + k) % len(self)
            try:
                x = self._samples(j)
            except (AudioError, OSError) as exc:
                entry = int(self.examples.entries[j])
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                skipped.append((self.examples.index.name, entry, self.examples.index.names[entry], reason))
                continue
            return {"input_values": x, "labels": self.examples.labels[j], "index": j, "skipped": skipped}
        return {"input_values": np.zeros(max(self.min_samples, 1), np.float32), "labels": np.zeros(0, np.int32),
                "index": -1, "skipped": skipped}


def _log_uniform(low: float, high: float) -> float:
    import torch

    return float(np.exp(float(torch.empty(()).uniform_(np.log(low), np.log(high)))))


# ---- Whole channels at once (launcher/launch prepare) -----------------------------------------------------

@dataclass
class Utterance:
    input_values: np.ndarray  # 16 kHz mono float32
    text: str | None = None  # raw transcript (None in the processed form)
    labels: list[int] | None = None  # token ids (processed form only)
    name: str = ""

    @property
    def seconds(self) -> float:
        return len(self.input_values) / TARGET_RATE


@dataclass
class Channel:
    name: str
    format: str
    utterances: list[Utterance]
    total: int  # entries found, readable or not
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    @property
    def processed(self) -> bool:
        return bool(self.utterances) and self.utterances[0].labels is not None


def load_channel(channel_dir: Path, channel_name: str, *, max_skipped_fraction: float,
                 log: Callable[[str], None] = print, options: formats.Options | None = None) -> Channel:
    """Index a channel and decode all of it (held in memory: ~230 MB per hour of audio); unreadable files
    are skipped, named and counted, with the same max_skipped_fraction rule as training."""
    from .index import check_skipped

    ix = index_channel(channel_dir, options or formats.Options(channel_name), max_skipped_fraction=max_skipped_fraction,
                       log=log)
    utterances, skipped = [], list(ix.skipped)
    for i in range(len(ix)):
        try:
            x = ix.audio.load(i)
        except (AudioError, OSError) as exc:
            reason = str(exc).splitlines()[0]
            skipped.append((ix.names[i], reason))
            log(f"[data] skipped unreadable {channel_name}/{ix.names[i]}: {reason}")
            continue
        utterances.append(Utterance(x, text=ix.texts[i] if ix.texts is not None else None,
                                    labels=ix.labels[i].tolist() if ix.processed else None, name=ix.names[i]))
    if not utterances:
        raise TrainingError(f"no readable audio in channel {channel_name}: all {ix.total} files failed to decode "
                            f"(first: {skipped[0][0]}: {skipped[0][1]})")
    check_skipped(channel_name, len(skipped), ix.total, max_skipped_fraction, skipped[0] if skipped else None)
    return Channel(channel_name, ix.format, utterances, ix.total, skipped)
