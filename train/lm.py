"""The n-gram language model a training job ships beside its model: estimated, tuned, saved.

After training, the first process:
  1. gathers the LM text: the training transcripts, normalised as the labels are (common.text.normalize),
     plus the optional `lm` channel's text files (one sentence per line, any size; streamed, never
     held in memory), or takes a ready-made ARPA or KenLM binary LM from that channel;
  2. estimates an n-gram of order `lm_order` with KenLM's lmplz (modified Kneser-Ney; --discount_fallback
     so that small corpora work) and converts it with build_binary (KenLM's trie format: fast to load,
     memory-mapped and so shared by a server's decoding processes);
  3. saves it into model/ in Wav2Vec2ProcessorWithLM's layout (alphabet.json, language_model/ with
     attrs.json, the KenLM file and unigrams.txt), written by pyctcdecode's own classes;
  4. tunes alpha (LM weight) and beta (word bonus) on the evaluation set's logits within `lm_tuning_seconds`
     (a coarse grid, then finer steps around the best point; each point logged), decoding in a process pool
     with exactly the decoder serving uses (common.lm), and writes the best into attrs.json.

KenLM's tools are looked up in $KENLM_BIN, then beside this Python (the venv's bin/, where ./setup.sh puts
them), then on PATH (the training image has them in /usr/local/bin).

One file because the four steps above are one pipeline run once per job on the same plan and corpus, each
reading what the step before wrote; train/main.py calls only `plan`, `check_ready_words` and `build`.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from common import lm as common_lm
from common.text import normalize

from .failure import TrainingError

READY_SUFFIXES = (".arpa", ".bin", ".binary")  # what pyctcdecode accepts in language_model/
SPECIAL_WORDS = ("<s>", "</s>", "<unk>")
DEFAULT_ALPHA, DEFAULT_BETA = 0.5, 1.5  # pyctcdecode's defaults: kept when there is nothing to tune on
KENLM_MAX_ORDER = 6  # the KENLM_MAX_ORDER our KenLM builds use (the Python module's default too)
LMPLZ_MEMORY = "20%"  # lmplz's -S: its sort buffers; it spills to -T beyond that
# alpha, beta: the coarse grid first, then steps halved around the best point while time is left.
COARSE_ALPHAS = (0.25, 0.5, 1.0, 1.5, 2.0)
COARSE_BETAS = (0.0, 1.0, 2.0, 3.0)
FINE_STEPS = ((0.125, 0.5), (0.0625, 0.25))
MAX_TUNING_PROCESSES = 8

Log = Callable[[str], None]


def find_tool(name: str) -> str:
    """Path of a KenLM program (lmplz, build_binary); TrainingError saying how to get it when missing."""
    candidates = []
    if os.environ.get("KENLM_BIN"):
        candidates.append(Path(os.environ["KENLM_BIN"]) / name)
    candidates.append(Path(sys.executable).parent / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which(name)
    if found:
        return found
    raise TrainingError(f"KenLM's {name} is not installed: run ./setup.sh (natively), use the training image, "
                        f"or set lm_order=0 to train without a language model")


# ------------------------------------------------------------------------------------------ the sources

@dataclass(frozen=True)
class LMSource:
    """What the `lm` channel holds: text files to add to the transcripts, or one ready-made LM."""
    texts: tuple[Path, ...] = ()
    ready: Path | None = None  # .arpa / .bin / .binary
    unigrams: Path | None = None  # unigrams.txt beside a ready-made LM


def read_lm_channel(channel_dir: Path | None) -> LMSource:
    """Sort the `lm` channel's files (any depth; hidden files skipped); TrainingError when ambiguous.

    A ready-made LM is one .arpa, .bin or .binary file (a KenLM binary needs unigrams.txt beside it:
    the words pyctcdecode scores partial words against; an ARPA file lists them itself). A
    Wav2Vec2ProcessorWithLM `language_model/` folder works as it is (its attrs.json is re-tuned). Every
    other file is text, one sentence per line (UTF-8, gzip-compressed when it ends in .gz).
    """
    if channel_dir is None or not channel_dir.is_dir():
        return LMSource()
    files = sorted(p for p in channel_dir.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(channel_dir).parts))
    ready = [p for p in files if p.suffix.lower() in READY_SUFFIXES]
    unigrams = [p for p in files if p.name == common_lm.UNIGRAMS_FILE]
    attrs = [p for p in files if p.name == common_lm.ATTRS_FILE]
    texts = [p for p in files if p not in ready and p not in unigrams and p not in attrs]
    if len(ready) > 1:
        raise TrainingError(f"channel lm holds {len(ready)} language models "
                            f"({', '.join(p.name for p in ready[:5])}): give exactly one")
    if ready and texts:
        raise TrainingError(f"channel lm holds a ready-made language model ({ready[0].name}) and text files "
                            f"({', '.join(p.name for p in texts[:5])}): give one or the other")
    if ready:
        near = [u for u in unigrams if u.parent == ready[0].parent]
        if ready[0].suffix.lower() != ".arpa" and not near:
            raise TrainingError(f"channel lm: the KenLM binary {ready[0].name} needs {common_lm.UNIGRAMS_FILE} "
                                f"(its words, one per line) beside it; or give the ARPA file instead")
        return LMSource(ready=ready[0], unigrams=near[0] if near else None)
    if not texts:
        raise TrainingError("channel lm is empty: give text files (one sentence per line) or one ARPA/KenLM "
                            "binary language model")
    return LMSource(texts=tuple(texts))


@dataclass
class CorpusCounts:
    transcripts: int = 0
    channel_lines: int = 0
    words: int = 0


def sentences(train_texts: Iterable[str], source: LMSource, chars_to_ignore: str,
              counts: CorpusCounts | None = None) -> Iterator[str]:
    """The LM's text, one normalised sentence at a time: the transcripts, then the channel's lines."""
    counts = counts if counts is not None else CorpusCounts()
    for raw in train_texts:
        t = normalize(raw, chars_to_ignore)
        if t:
            counts.transcripts += 1
            counts.words += t.count(" ") + 1
            yield t
    for path in source.texts:
        opener = gzip.open if path.suffix.lower() == ".gz" else open
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                for line in f:
                    t = normalize(line, chars_to_ignore)
                    if t:
                        counts.channel_lines += 1
                        counts.words += t.count(" ") + 1
                        yield t
        except (UnicodeDecodeError, OSError, EOFError) as exc:
            raise TrainingError(f"channel lm: cannot read {path.name} as UTF-8 text, one sentence per line "
                                f"({exc})") from None


# ------------------------------------------------------------------------------------------- estimation

def estimate_arpa(lines: Iterable[str], order: int, work_dir: Path) -> Path:
    """An ARPA n-gram of `order` from the lines (streamed to lmplz's stdin); TrainingError on failure."""
    if not 1 <= order <= KENLM_MAX_ORDER:
        raise TrainingError(f"lm_order={order} must be from 1 to {KENLM_MAX_ORDER} (0 = no language model)")
    work_dir.mkdir(parents=True, exist_ok=True)
    arpa = work_dir / f"{order}gram.arpa"
    log_path = work_dir / "lmplz.log"
    cmd = [find_tool("lmplz"), "-o", str(order), "--discount_fallback", "--skip_symbols",
           "-S", LMPLZ_MEMORY, "-T", str(work_dir)]
    written = 0
    with open(arpa, "wb") as out, open(log_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err)
        try:
            for line in lines:
                proc.stdin.write(line.encode("utf-8") + b"\n")
                written += 1
            proc.stdin.close()
        except BrokenPipeError:
            pass  # lmplz stopped reading: its exit status and log say why
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        rc = proc.wait()
    if written == 0:
        raise TrainingError("no text for the language model: the transcripts and the lm channel are empty "
                            "after normalisation; set lm_order=0 to train without one")
    if rc != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise TrainingError(f"KenLM's lmplz failed (exit {rc}) estimating a {order}-gram from {written} "
                            f"sentences: {' | '.join(tail)}")
    return arpa


def arpa_unigrams(arpa: Path) -> list[str]:
    """The words of an ARPA file's 1-gram section (streamed), without <s>, </s>, <unk>."""
    opener = gzip.open if arpa.suffix == ".gz" else open
    words, inside = [], False
    with opener(arpa, "rt", encoding="utf-8", errors="strict") as f:
        for line in f:
            line = line.strip()
            if line == "\\1-grams:":
                inside = True
            elif inside and (line.startswith("\\") and line.endswith(":") or line == "\\end\\"):
                break
            elif inside and line:
                parts = line.split("\t")
                if len(parts) >= 2 and parts[1] not in SPECIAL_WORDS:
                    words.append(parts[1])
    if not words:
        raise TrainingError(f"{arpa.name} has no words in its \\1-grams: section: not an ARPA language model")
    return words


def to_binary(arpa: Path, out: Path) -> Path:
    """KenLM's binary (trie) form of an ARPA file: loads in a fraction of the time, memory-mapped."""
    log_path = out.with_suffix(".log")
    with open(log_path, "wb") as err:
        rc = subprocess.run([find_tool("build_binary"), "-S", LMPLZ_MEMORY, "trie", str(arpa), str(out)],
                            stdout=err, stderr=err).returncode
    if rc != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise TrainingError(f"KenLM's build_binary failed (exit {rc}) on {arpa.name}: {' | '.join(tail)}")
    log_path.unlink(missing_ok=True)
    return out


def save(model_dir: Path, kenlm_file: Path, unigrams: Sequence[str], alpha: float = DEFAULT_ALPHA,
         beta: float = DEFAULT_BETA) -> common_lm.LMFiles:
    """alphabet.json and language_model/ into a model directory that already holds its tokenizer.

    Written by pyctcdecode's Alphabet and LanguageModel.save_to_dir, so Wav2Vec2ProcessorWithLM and
    BeamSearchDecoderCTC.load_from_dir read them as they read any published checkpoint's. The alphabet
    is the tokenizer's vocab.json in id order (the logit columns), as common.lm.load checks it.
    """
    import kenlm
    from pyctcdecode.alphabet import Alphabet
    from pyctcdecode.language_model import LanguageModel

    labels = common_lm.tokenizer_labels(model_dir)
    if labels is None:
        raise TrainingError(f"{model_dir} has no vocab.json to build the LM's alphabet from")
    lm_dir = model_dir / common_lm.LM_DIR
    if lm_dir.exists():
        shutil.rmtree(lm_dir)
    lm_dir.mkdir(parents=True)
    (model_dir / common_lm.ALPHABET_FILE).write_text(Alphabet(labels, is_bpe=False).dumps(), encoding="utf-8")
    language_model = LanguageModel(kenlm.Model(str(kenlm_file)), list(unigrams), alpha=float(alpha),
                                   beta=float(beta))
    language_model.save_to_dir(str(lm_dir), unigram_encoding="utf-8")
    for f in [model_dir / common_lm.ALPHABET_FILE, *lm_dir.iterdir()]:
        f.chmod(0o644)  # readable by a non-root server (SageMaker keeps the modes of model.tar.gz)
    lm_dir.chmod(0o755)
    files = common_lm.find(model_dir)
    assert files is not None and files.kenlm is not None
    return files


def set_weights(model_dir: Path, alpha: float, beta: float) -> None:
    """Rewrite alpha and beta in language_model/attrs.json (the other attributes kept)."""
    attrs = model_dir / common_lm.LM_DIR / common_lm.ATTRS_FILE
    values = json.loads(attrs.read_text())
    values.update(alpha=float(alpha), beta=float(beta))
    attrs.write_text(json.dumps(values))


# ---------------------------------------------------------------------------------------------- tuning

def collect_logits(model, inputs: Sequence[np.ndarray], *, attention_mask: bool, batch_size: int = 8
                   ) -> list[np.ndarray]:
    """Each clip's logits, (its own frames, vocab) float32, in input order; on the model's device.

    Batches of similar lengths with the attention mask; models without one (group-norm feature encoders,
    which normalise over time, so padding would change them) one clip at a time.
    """
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    size = batch_size if attention_mask else 1
    out: list[np.ndarray | None] = [None] * len(inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), size):
                idx = order[start:start + size]
                lengths = [len(inputs[i]) for i in idx]
                batch = np.zeros((len(idx), max(lengths)), dtype=np.float32)
                mask = np.zeros_like(batch, dtype=np.int64)
                for row, i in enumerate(idx):
                    batch[row, :lengths[row]] = inputs[i]
                    mask[row, :lengths[row]] = 1
                kwargs = {"attention_mask": torch.from_numpy(mask).to(device)} if attention_mask else {}
                logits = model(torch.from_numpy(batch).to(device), **kwargs).logits.float().cpu().numpy()
                frames = model._get_feat_extract_output_lengths(torch.tensor(lengths)).tolist()
                for row, i in enumerate(idx):
                    out[i] = logits[row, :frames[row]].copy()
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


@dataclass
class Tuning:
    alpha: float
    beta: float
    wer: float | None  # on the clips tuned on
    cer: float | None
    clips: int = 0  # clips tuned on (a seeded subset of at most TUNING_MAX_CLIPS)
    points: list[dict] = field(default_factory=list)  # every (alpha, beta) finished, in order
    seconds: float = 0.0
    stopped_by_time: bool = False


TUNING_MAX_CLIPS = 500  # a seeded subset of larger evaluation sets, so that each point stays short


def decode_texts(pool, logits: Sequence[np.ndarray], options: common_lm.DecodeOptions, seconds_per_frame: float,
                 deadline: float | None = None) -> list[str] | None:
    """Texts of every clip, decoded in `pool` (one task per clip); None when `deadline` passed first.

    On a deadline the clips not started are cancelled; those running finish (one per process).
    """
    futures = {pool.submit(common_lm.pool_decode, [x], options, seconds_per_frame): i for i, x in enumerate(logits)}
    texts: list[str] = [""] * len(logits)
    pending = set(futures)
    while pending:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            for f in pending:
                f.cancel()
            return None
        done, pending = wait(pending, timeout=left, return_when=FIRST_COMPLETED)
        for f in done:
            texts[futures[f]] = f.result()[0].text
    return texts


def _points_around(alpha: float, beta: float, step_a: float, step_b: float) -> list[tuple[float, float]]:
    out = []
    for da in (-step_a, 0.0, step_a):
        for db in (-step_b, 0.0, step_b):
            a, b = round(alpha + da, 4), round(beta + db, 4)
            if (da or db) and common_lm.ALPHA_RANGE[0] <= a <= common_lm.ALPHA_RANGE[1] \
                    and common_lm.BETA_RANGE[0] <= b <= common_lm.BETA_RANGE[1]:
                out.append((a, b))
    return out


def tune(pool, logits: Sequence[np.ndarray], references: Sequence[str], *, max_seconds: float,
         beam_width: int = common_lm.DEFAULT_BEAM_WIDTH, seconds_per_frame: float = 0.02,
         max_clips: int = TUNING_MAX_CLIPS, seed: int = 0, log: Log = print) -> Tuning:
    """The (alpha, beta) with the lowest WER (then CER) on these logits, searched for at most `max_seconds`.

    pool: `common.lm.make_pool` over the model directory. The search: COARSE_ALPHAS x COARSE_BETAS, then
    the 8 neighbours of the best point at each of FINE_STEPS until none is better. A point still being
    decoded when the time is up is dropped, so tuning ends within `max_seconds` plus one clip's decode per
    process. With no point finished, pyctcdecode's defaults are kept.
    """
    from .metrics import error_rates

    started = time.monotonic()
    deadline = started + max_seconds
    result = Tuning(DEFAULT_ALPHA, DEFAULT_BETA, None, None)
    if max_seconds <= 0 or not len(logits):
        return result
    chosen = list(range(len(logits)))
    if len(chosen) > max_clips:
        chosen = sorted(np.random.default_rng(seed).choice(len(chosen), size=max_clips, replace=False).tolist())
        log(f"[lm] tuning on {max_clips} of the {len(logits)} evaluation clips (seeded subset)")
    clips = [logits[i] for i in chosen]
    refs = [references[i] for i in chosen]
    result.clips = len(clips)
    tried: dict[tuple[float, float], tuple[float, float]] = {}

    def best() -> tuple[float, float]:
        order = list(tried)
        return min(order, key=lambda k: (*tried[k], order.index(k)))

    def consider(points: Iterable[tuple[float, float]]) -> bool:
        for a, b in points:
            if (a, b) in tried:
                continue
            t0 = time.monotonic()
            options = common_lm.DecodeOptions(beam_width=beam_width, alpha=a, beta=b)
            texts = decode_texts(pool, clips, options, seconds_per_frame, deadline)
            if texts is None:
                result.stopped_by_time = True
                return False
            rates = error_rates(refs, texts)
            tried[(a, b)] = (rates["wer"], rates["cer"])
            point = {"alpha": a, "beta": b, "wer": rates["wer"], "cer": rates["cer"],
                     "seconds": round(time.monotonic() - t0, 2)}
            result.points.append(point)
            log(f"[lm] tuning alpha={a:g} beta={b:g}: wer={rates['wer']:.4f} cer={rates['cer']:.4f} "
                f"({point['seconds']:.1f} s)")
        return True

    if consider((a, b) for a in COARSE_ALPHAS for b in COARSE_BETAS):
        for step_a, step_b in FINE_STEPS:
            while True:
                before = best()
                if not consider(_points_around(*before, step_a, step_b)) or best() == before:
                    break
            if result.stopped_by_time:
                break
    if tried:
        result.alpha, result.beta = best()
        result.wer, result.cer = tried[(result.alpha, result.beta)]
    else:
        log(f"[lm] tuning: no point finished within lm_tuning_seconds={max_seconds:g}; keeping alpha="
            f"{DEFAULT_ALPHA} beta={DEFAULT_BETA} (raise lm_tuning_seconds)")
    result.seconds = round(time.monotonic() - started, 2)
    return result


# -------------------------------------------------------------------------------------- the whole step

@dataclass(frozen=True)
class LMPlan:
    """What `build` will do, settled before training so that a bad `lm` channel fails the job early."""
    order: int
    source: LMSource
    tuning_seconds: float


def plan(order: int, tuning_seconds: float, lm_channel: Path | None) -> LMPlan | None:
    """None when no LM is wanted (lm_order=0 and no lm channel); TrainingError for a channel that cannot work.

    Checks the channel's layout and that KenLM's tools are installed, before any training time is spent.
    """
    has_channel = lm_channel is not None and lm_channel.is_dir()
    if order == 0:
        if has_channel:
            raise TrainingError("channel lm is given but lm_order=0 (no language model): set lm_order (e.g. 3), "
                                "or leave the lm channel out")
        return None
    source = read_lm_channel(lm_channel) if has_channel else LMSource()
    if source.ready is None:
        find_tool("lmplz")
    if source.ready is None or source.ready.suffix.lower() == ".arpa":
        find_tool("build_binary")
    return LMPlan(order, source, tuning_seconds)


@dataclass
class LMResult:
    """What the step did, for the log and metrics.json (`metrics`)."""
    alpha: float
    beta: float
    order: int | None
    source: str
    words: int  # unigrams
    wer_lm: float | None = None
    cer_lm: float | None = None
    wer_greedy: float | None = None  # the same logits decoded greedily, for comparison
    cer_greedy: float | None = None
    tuning: Tuning | None = None
    counts: CorpusCounts | None = None
    size_bytes: int = 0
    seconds: float = 0.0

    @property
    def metrics(self) -> dict:
        return {
            "wer_lm": self.wer_lm, "cer_lm": self.cer_lm,
            "lm": {"order": self.order, "source": self.source, "alpha": self.alpha, "beta": self.beta,
                   "unigrams": self.words, "size_bytes": self.size_bytes, "seconds": round(self.seconds, 2),
                   "beam_width": common_lm.DEFAULT_BEAM_WIDTH,
                   "wer_greedy_same_logits": self.wer_greedy, "cer_greedy_same_logits": self.cer_greedy,
                   "transcripts": self.counts.transcripts if self.counts else None,
                   "channel_lines": self.counts.channel_lines if self.counts else None,
                   "tuning_seconds": self.tuning.seconds if self.tuning else None,
                   "tuning_stopped_by_time": self.tuning.stopped_by_time if self.tuning else None,
                   "tuning": self.tuning.points if self.tuning else []},
        }


def build(lm_plan: LMPlan, model_dir: Path, *, train_texts: Iterable[str], chars_to_ignore: str,
          model=None, eval_inputs: Sequence[np.ndarray] = (), eval_references: Sequence[str] = (),
          attention_mask: bool = True, seconds_per_frame: float = 0.02, log: Log = print) -> LMResult:
    """Steps 1-4 of this module into `model_dir` (which already holds the saved model and tokenizer).

    train_texts: the raw training transcripts (normalised here with `chars_to_ignore`, as the labels
    were). eval_inputs / eval_references: the evaluation clips as the model takes them (normalised 16 kHz
    audio) and their reference transcripts as the greedy WER scores them; without them (or with
    lm_tuning_seconds=0) alpha and beta keep pyctcdecode's defaults.
    """
    from .metrics import error_rates

    started = time.monotonic()
    counts = CorpusCounts()
    with tempfile.TemporaryDirectory(prefix="lm-", dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        ready = lm_plan.source.ready
        if ready is None:
            arpa = estimate_arpa(sentences(train_texts, lm_plan.source, chars_to_ignore, counts), lm_plan.order,
                                 work)
            source = "training transcripts" + (f" + {counts.channel_lines} lines of the lm channel"
                                               if lm_plan.source.texts else "")
            log(f"[lm] estimated a {lm_plan.order}-gram from {counts.transcripts} transcripts"
                + (f" and {counts.channel_lines} lm channel lines" if lm_plan.source.texts else "")
                + f" ({counts.words} words)")
        else:
            arpa = ready if ready.suffix.lower() == ".arpa" else None
            source = f"lm channel: {ready.name}"
            log(f"[lm] using the lm channel's language model {ready.name} (lm_order does not apply)")
        if arpa is not None:
            words = arpa_unigrams(arpa)
            kenlm_file = to_binary(arpa, work / f"{arpa.name.split('.')[0]}.bin")
        else:
            words = [w for w in lm_plan.source.unigrams.read_text(encoding="utf-8").split() if w not in SPECIAL_WORDS]
            kenlm_file = ready
        labels = common_lm.tokenizer_labels(model_dir)
        if labels is not None:  # refused before anything is written into model_dir (save needs the labels)
            _check_coverage(words, labels)
        files = save(model_dir, kenlm_file, words)
    try:
        decoder = common_lm.load(model_dir)
    except common_lm.LMError as exc:
        raise TrainingError(f"the saved language model cannot be loaded: {exc}") from None
    size = files.kenlm.stat().st_size
    log(f"[lm] saved {files.kenlm.relative_to(model_dir)} ({size / 1e6:.1f} MB, order {decoder.order}, "
        f"{len(words)} words) with {common_lm.ALPHABET_FILE} in {model_dir}")
    result = LMResult(DEFAULT_ALPHA, DEFAULT_BETA, decoder.order, source, len(words), counts=counts,
                      size_bytes=size)

    if model is not None and len(eval_inputs):
        logits = collect_logits(model, eval_inputs, attention_mask=attention_mask)
        greedy = error_rates(list(eval_references), [_greedy_text(x, decoder.labels) for x in logits])
        result.wer_greedy, result.cer_greedy = greedy["wer"], greedy["cer"]
        processes = min(MAX_TUNING_PROCESSES, len(os.sched_getaffinity(0)), len(logits))
        with common_lm.make_pool(model_dir, processes) as pool:
            tuning = tune(pool, logits, eval_references, max_seconds=lm_plan.tuning_seconds,
                          seconds_per_frame=seconds_per_frame, log=log)
            result.tuning, result.alpha, result.beta = tuning, tuning.alpha, tuning.beta
            if tuning.wer is not None and tuning.clips == len(logits):
                result.wer_lm, result.cer_lm = tuning.wer, tuning.cer
            else:  # scored on every clip, as the greedy figures are
                t0 = time.monotonic()
                texts = decode_texts(pool, logits, common_lm.DecodeOptions(alpha=tuning.alpha, beta=tuning.beta),
                                     seconds_per_frame)
                rates = error_rates(list(eval_references), texts)
                result.wer_lm, result.cer_lm = rates["wer"], rates["cer"]
                log(f"[lm] scored the {len(logits)} evaluation clips with alpha={tuning.alpha:g} "
                    f"beta={tuning.beta:g} in {time.monotonic() - t0:.1f} s")
        set_weights(model_dir, tuning.alpha, tuning.beta)
        log(f"[lm] alpha={tuning.alpha:g} beta={tuning.beta:g} ({len(tuning.points)} points tuned in "
            f"{tuning.seconds:.0f} s{', time limit reached' if tuning.stopped_by_time else ''}): "
            f"wer {result.wer_greedy:.4f} greedy -> {_f(result.wer_lm)} with the LM, "
            f"cer {result.cer_greedy:.4f} -> {_f(result.cer_lm)} (beam width {common_lm.DEFAULT_BEAM_WIDTH})")
    else:
        log(f"[lm] alpha and beta not tuned (no evaluation set): pyctcdecode's defaults alpha={DEFAULT_ALPHA} "
            f"beta={DEFAULT_BETA}")
    result.seconds = time.monotonic() - started
    return result


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _greedy_text(logits: np.ndarray, labels: Sequence[str]) -> str:
    """Greedy CTC text in the alphabet's terms ("" blank, " " word gap), spaces normalised."""
    ids = logits.argmax(axis=-1)
    keep = np.ones(len(ids), dtype=bool)
    keep[1:] = ids[1:] != ids[:-1]
    return " ".join("".join(labels[i] for i in ids[keep]).split())


def check_ready_words(lm_plan: LMPlan | None, tokens: Iterable[str]) -> None:
    """Before training: refuse the `lm` channel's ready-made LM (ARPA 1-grams or unigrams.txt) when its words
    mostly use characters the vocabulary's tokens cannot write (TrainingError). Text channels are checked
    after training, once their n-gram exists (a text channel can be larger than is worth reading twice)."""
    if lm_plan is None or lm_plan.source.ready is None:
        return
    ready = lm_plan.source.ready
    if ready.suffix.lower() == ".arpa":
        words = arpa_unigrams(ready)
    else:
        try:
            words = [w for w in lm_plan.source.unigrams.read_text(encoding="utf-8").split()
                     if w not in SPECIAL_WORDS]
        except (UnicodeDecodeError, OSError) as exc:
            raise TrainingError(f"channel lm: cannot read {lm_plan.source.unigrams.name} as UTF-8 words "
                                f"({exc})") from None
    # [PAD], [UNK], <s>...: special tokens, not letters the model writes
    _check_coverage(words, list(tokens))  # special tokens ([PAD], <s>, ...) are not letters (common.lm)


def _check_coverage(words: Sequence[str], labels: Sequence[str]) -> None:
    """Refuse an LM whose words the model mostly cannot write (e.g. an upper-case LM, a lower-case model):
    common.lm's check, the one serving makes when it loads the LM (threshold common.lm.MIN_SPELLABLE)."""
    try:
        common_lm.check_spelling(words, labels)
    except common_lm.LMError as exc:
        raise TrainingError(str(exc)) from None
