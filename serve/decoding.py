"""The decoder stage: a clip's frame logits -> text and words, after the forward pass.

A decoder takes the logits of one clip (frames x vocabulary, on the model's device, chunk strides already
dropped) and the language's `common.ctc.Vocabulary`, and returns a `Hypothesis` whose word times are in
frames. The decoders:

    greedy  best path on the model's device (`GreedyDecoder`);
    beam    beam search with the model's KenLM n-gram and the request's hotwords (common/lm.py, pyctcdecode),
            in a process pool beside the model (`BeamSearch`), so the thread that runs forward passes never
            waits for it. `BeamSearch.bind(options)` gives the decoder of one request's options.

`choose(options, beam, beam_unavailable, default)` picks one per request (the `decoder` request option; what
`ServingModel.decoder(options)` calls); `beam_search(checkpoint, processes)` sets up a model's beam search
when it loads; `timed_words` turns any decoder's words (frames) into the contract's words (seconds), for
every transcript and segment; `details` adds what a transcript's options ask beyond its text: words with
their probabilities, and segments (the model's chunks) with their average log-probability.

`submit(logits, vocab, words=, deadline=)` starts decoding and returns a `Pending` whose `result()` is the
Hypothesis (greedy is done at once; beam search waits for its pool process), so one request's clips decode
in parallel. `decode(...)` is both in one call.

A decoder may also offer `stream(vocab)`: an incremental decoder fed chunk by chunk that returns words as
soon as they are complete, for results of long audio chunk by chunk (`ServingModel.transcribe_iter`).
Decoders without it are run on segments (beam search: see `ServingModel.transcribe_iter`).

Live streams (serve/streaming.py) show partials with the greedy stream (fast, frame by frame, and its
committed words never change) and decode each utterance's `final` from its committed logits with the decoder
the session's options choose (`ServingModel.decoder(options)`): beam search + LM for a model with an LM
(in the pool below, off the model thread), greedy otherwise or with decoder=greedy.

Beam search processes: `lm.make_pool` spawns them (never forks: the worker has started torch's threads and
maybe CUDA, and a spawned child imports only common.lm: no torch, no CUDA). A process that dies (killed,
out of memory) breaks the whole pool (concurrent.futures' ProcessPoolExecutor); the requests decoding in it
get `Unavailable` (503) and the next request gets a new pool. A job whose request has timed out is
cancelled if it has not started, skipped by the process if it has not begun decoding (`lm.DeadlinePassed`),
and otherwise runs to its end (pyctcdecode cannot be interrupted; SERVE_MAX_AUDIO_S and beam_width <= 256
bound it).

One file because the decoders, the beam-search pool they share and the choice between them per model and per
request are one stage with one interface (`Hypothesis`, `Pending`, the contract's errors): what a request may
ask of a decoder is decided here, next to the decoders that honour it.
"""
from __future__ import annotations

import bisect
import dataclasses
import logging
import threading
import time
from concurrent.futures import CancelledError, Future, TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from common import ctc, lm, modeldir

from . import contract, metrics
from .options import Options, beam_options_given, decode_options

log = logging.getLogger("serve")


@dataclass
class Hypothesis:
    text: str
    words: list[tuple[str, int, int]] = field(default_factory=list)  # (word, first frame, end frame)


class Pending:
    """A decoding started by `submit`; `result()` waits for it (raising the contract's errors)."""

    def __init__(self, get: Callable[[], Hypothesis], cancel: Callable[[], object] = lambda: None):
        self._get, self._cancel = get, cancel

    def result(self) -> Hypothesis:
        return self._get()

    def cancel(self) -> None:
        self._cancel()


class GreedyDecoder:
    """Best path: argmax per frame, repeats merged, blanks and special tokens dropped, on the device."""
    name = "greedy"

    def decode(self, logits: torch.Tensor, vocab: ctc.Vocabulary, *, words: bool = False,
               deadline: float | None = None) -> Hypothesis:
        seq = ctc.greedy(logits[None], vocab.blank_id, drop=vocab.dropped)[0]
        return Hypothesis(vocab.text(seq), vocab.words(seq) if words else [])

    def submit(self, logits: torch.Tensor, vocab: ctc.Vocabulary, *, words: bool = False,
               deadline: float | None = None) -> Pending:
        with torch.inference_mode():
            hyp = self.decode(logits, vocab, words=words)
        return Pending(lambda: hyp)

    def stream(self, vocab: ctc.Vocabulary) -> "GreedyStream":
        return GreedyStream(vocab)


class GreedyStream:
    """Greedy decoding of consecutive pieces of one clip's frames, equal to decoding them joined: a token
    whose frames run over a piece's edge is merged, and a word is returned once a space follows it."""

    def __init__(self, vocab: ctc.Vocabulary):
        self.vocab = vocab
        self.frames = 0  # frames pushed so far
        self.last_id: int | None = None  # argmax of the last frame pushed (as collapse saw it)
        self.pending = ctc.Collapsed([], [], [])  # tokens after the last space, in absolute frames

    def push(self, logits: torch.Tensor) -> list[tuple[str, int, int]]:
        """Feed the next frames (frames x vocabulary); the words completed by them."""
        v = self.vocab
        ids = logits.argmax(dim=-1)
        if len(v.dropped):
            ids = ids.masked_fill(torch.isin(ids, torch.as_tensor(v.dropped, device=ids.device)), v.blank_id)
        seq = ctc.collapse(ids[None], v.blank_id)[0]
        offset, p = self.frames, self.pending
        tokens, starts, ends = seq.tokens, seq.starts, seq.ends
        if tokens and starts[0] == 0 and tokens[0] == self.last_id:
            # The previous piece ended inside this token's run: one token, not two.
            if p.tokens and p.tokens[-1] == tokens[0]:
                p.ends[-1] = offset + ends[0]
            tokens, starts, ends = tokens[1:], starts[1:], ends[1:]
        p.tokens.extend(tokens)
        p.starts.extend(offset + s for s in starts)
        p.ends.extend(offset + e for e in ends)
        self.frames += len(ids)
        if len(ids):
            self.last_id = int(ids[-1])
        cut = max((i for i, t in enumerate(p.tokens) if v.is_space(t)), default=None)
        if cut is None:
            return []
        done = ctc.Collapsed(p.tokens[:cut], p.starts[:cut], p.ends[:cut])
        self.pending = ctc.Collapsed(p.tokens[cut:], p.starts[cut:], p.ends[cut:])
        return v.words(done)

    def fork(self) -> "GreedyStream":
        """An independent copy (to decode tentative frames without committing them)."""
        other = GreedyStream(self.vocab)
        other.frames, other.last_id = self.frames, self.last_id
        p = self.pending
        other.pending = ctc.Collapsed(list(p.tokens), list(p.starts), list(p.ends))
        return other

    def finish(self) -> list[tuple[str, int, int]]:
        words, self.pending = self.vocab.words(self.pending), ctc.Collapsed([], [], [])
        return words


class BeamSearch:
    """Beam search (+ LM) of one model directory in a pool of `processes` spawned processes.

    `start()` starts the pool and waits for its first process to load the decoder (LMError with the reason
    if it cannot); `info` is then what it loaded (common.lm.pool_info). A model without an LM may skip
    `start()`: the pool then starts on the first submit. Thread-safe.
    """

    def __init__(self, model_dir: str | Path, processes: int, *, labels: list[str] | None = None,
                 has_lm: bool = False):
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.model_dir, self.processes = Path(model_dir), processes
        self.labels = labels  # alphabet (pyctcdecode form), for checking options before the forward pass
        self.has_lm = has_lm
        self.info: dict | None = None
        self.restarts = 0
        self._pool = None
        self._closed = False
        self._lock = threading.Lock()

    # Life cycle ----------------------------------------------------------------------------------------
    def start(self, timeout_s: float | None = None) -> dict:
        """Start the pool; the first process's `lm.pool_info` (LMError when it cannot load the directory)."""
        pool = self._current()
        # One call per process, submitted at once: concurrent.futures spawns a process for each submit that
        # finds none idle, so all start (and load the LM) now rather than on the first busy requests.
        calls = [pool.submit(lm.pool_info) for _ in range(self.processes)]
        try:
            info = calls[0].result(timeout_s)
        except BrokenProcessPool as exc:
            self.close()
            raise lm.LMError(f"the beam-search process could not start ({exc}); see the log above") from None
        except BaseException:
            self.close()
            raise
        self.info, self.labels, self.has_lm = info, info["labels"], info["has_lm"]
        return info

    def close(self, grace_s: float = 2.0) -> None:
        """Stop the processes: queued decodings are cancelled, a running one gets `grace_s` to finish, then
        its process is terminated. (A worker that simply exits needs none of this: concurrent.futures stops
        the pool at interpreter exit, and a pool process whose parent is gone exits by itself.)"""
        from multiprocessing.connection import wait as wait_any

        with self._lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is None:
            return
        # ProcessPoolExecutor has no public way to stop a running call before Python 3.14
        # (terminate_workers): its processes are read from `_processes` (CPython 3.11-3.13).
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace_s
        alive = [p for p in processes if p.exitcode is None]
        while alive and time.monotonic() < deadline:
            wait_any([p.sentinel for p in alive], timeout=max(0.0, deadline - time.monotonic()))
            alive = [p for p in alive if p.exitcode is None]
        for process in alive:
            process.terminate()

    def _current(self):
        with self._lock:
            if self._closed:
                raise contract.Unavailable("the server is shutting down")
            if self._pool is None:
                self._pool = lm.make_pool(self.model_dir, self.processes)
            return self._pool

    def _replace(self, broken) -> None:
        """After a process died: a new pool for the next request (once, whichever request notices first)."""
        with self._lock:
            if self._pool is not broken or self._closed:
                return
            self.restarts += 1
            log.error("beam search: a decoding process died (killed, or out of memory); the requests decoding "
                      "in its pool get 503; starting a new pool of %d process(es) (restart %d)", self.processes,
                      self.restarts)
            self._pool = lm.make_pool(self.model_dir, self.processes)
            fresh = self._pool
        broken.shutdown(wait=False, cancel_futures=True)
        for _ in range(self.processes):
            fresh.submit(lm.pool_info)  # spawn and load now, not in the next request's time

    # Decoding ------------------------------------------------------------------------------------------
    def check(self, options: lm.DecodeOptions) -> None:
        """BadRequest when the options cannot apply to this model (alpha/beta without an LM, letters)."""
        try:
            if self.labels is not None:
                lm.check_options(options, self.labels, self.has_lm)
            elif not self.has_lm and (options.alpha is not None or options.beta is not None):
                lm.check_options(options, [], False)
        except lm.OptionError as exc:
            raise contract.BadRequest(str(exc)) from None

    def prompt_hotwords(self, prompt: str, hotwords: tuple[str, ...] = ()) -> tuple[str, ...]:
        """`hotwords` plus the words of an OpenAI `prompt` that this model's alphabet can spell: each word without
        the punctuation around it, as typed or else lower- or upper-cased; the rest are left out (a prompt is a
        hint, never refused), up to lm.MAX_HOTWORDS in all. Without the alphabet yet (a pool not started), none."""
        letters = {c for c in (self.labels or ()) if len(c) == 1 and c not in (" ", lm.UNK_LABEL)}
        out = list(hotwords)
        for raw in prompt.split():
            for word in (raw, raw.lower(), raw.upper()):
                word = word.strip(".,;:!?\"'()[]{}")
                if word and len(word) <= lm.MAX_HOTWORD_CHARS and set(word) <= letters:
                    if word not in out and len(out) < lm.MAX_HOTWORDS:
                        out.append(word)
                    break
        return tuple(out)

    def bind(self, options: lm.DecodeOptions) -> "BoundBeam":
        self.check(options)
        return BoundBeam(self, options)

    def submit_logits(self, logits: np.ndarray, options: lm.DecodeOptions, deadline: float | None) -> Pending:
        """Decode one clip's logits (frames x vocabulary, float32 on the host); Hypothesis in frames."""
        wall = None if deadline is None else time.time() + (deadline - time.monotonic())
        for attempt in range(2):
            pool = self._current()
            try:
                future = pool.submit(lm.pool_decode, [logits], options, 1.0, wall)
                metrics.time_future(future)
                break
            except BrokenProcessPool:
                # A process died while no request of ours was in it (idle, say): nothing was lost, so this
                # request goes to the new pool.
                self._replace(pool)
                if attempt:
                    raise contract.Unavailable("the beam-search processes cannot start (see the server log): "
                                               "retry the request") from None
            except RuntimeError:  # submit after shutdown
                raise contract.Unavailable("the server is shutting down") from None
        return Pending(lambda: self._result(pool, future, deadline), future.cancel)

    def _result(self, pool, future: Future, deadline: float | None) -> Hypothesis:
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            transcript = future.result(timeout)[0]
        except (FutureTimeout, lm.DeadlinePassed, CancelledError):
            future.cancel()
            raise contract.Timeout("beam search was not done by the deadline") from None
        except BrokenProcessPool as exc:
            self._replace(pool)
            raise contract.Unavailable("the beam-search process decoding this request stopped (see the server "
                                       "log); the decoder is being restarted: retry the request") from exc
        except lm.LMError as exc:
            raise contract.ModelFailure("the beam-search decoder cannot load this model's decoder files "
                                        "(details in the server log)") from exc
        except Exception as exc:
            raise contract.ModelFailure("beam search failed on this audio (details in the server log)") from exc
        # seconds_per_frame 1.0 above: word times come back in frames.
        return Hypothesis(transcript.text, [(w["word"], int(round(w["start"])), int(round(w["end"])))
                                            for w in transcript.words])


class BoundBeam:
    """Beam search with one request's options, with the decoders' interface (`submit`, `decode`)."""
    name = "beam"

    def __init__(self, search: BeamSearch, options: lm.DecodeOptions):
        self.search, self.options = search, options

    def submit(self, logits: torch.Tensor, vocab: ctc.Vocabulary, *, words: bool = False,
               deadline: float | None = None) -> Pending:
        host = logits.detach().to(device="cpu", dtype=torch.float32).numpy()
        return self.search.submit_logits(host, self.options, deadline)

    def decode(self, logits: torch.Tensor, vocab: ctc.Vocabulary, *, words: bool = False,
               deadline: float | None = None) -> Hypothesis:
        return self.submit(logits, vocab, words=words, deadline=deadline).result()


GREEDY = GreedyDecoder()
DECODERS = {"greedy": GREEDY}  # the stateless ones; "beam" is per model (ServingModel.beam)


# Which decoder: per model, per request -------------------------------------------------------------------
def default_decoder(beam: BeamSearch | None) -> str:
    """A model's decoder when a request names none: beam search with its LM, else greedy."""
    return "beam" if beam is not None and beam.has_lm else "greedy"


def available(beam: BeamSearch | None) -> tuple[str, ...]:
    """The decoders a model offers (contract.ModelInfo.decoders)."""
    return tuple(DECODERS) + (("beam",) if beam is not None else ())


def choose(options: Options, beam: BeamSearch | None, beam_unavailable: str, default: str | None = None):
    """The decoder for a request's options: `GREEDY`, or `beam` bound to its options. beam: the model's
    beam search (None: it has none, `beam_unavailable` says why); default: the model's decoder when the
    request names none (its ModelInfo.default_decoder; None: `default_decoder(beam)`). BadRequest for a
    decoder the model does not have, or options that do not apply to it (never silently ignored)."""
    name = options.decoder or default or default_decoder(beam)
    given = beam_options_given(options)
    if name == "greedy":
        if given:
            if options.decoder:
                why = "decoder=greedy was asked for: leave them out"
            elif beam is None:
                why = f"this model decodes greedily only ({beam_unavailable})"
            else:
                why = "this model decodes greedily by default (it has no language model): add decoder=beam"
            raise contract.BadRequest(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only "
                                      f"to beam search, and {why}")
        return GREEDY
    if beam is None:
        raise contract.BadRequest(f"decoder=beam: {beam_unavailable}; this model decodes with decoder=greedy")
    try:
        beam_options = decode_options(options)
    except lm.OptionError as exc:
        raise contract.BadRequest(str(exc)) from None
    if options.prompt:  # OpenAI's prompt: its spellable words as hotwords (BeamSearch.prompt_hotwords)
        beam_options = dataclasses.replace(beam_options, hotwords=beam.prompt_hotwords(options.prompt,
                                                                                       beam_options.hotwords))
    return beam.bind(beam_options)


def timed_words(words: list[tuple[str, int, int]], seconds_per_frame: float) -> list[contract.Word]:
    """A hypothesis's words (word, first frame, end frame; frames of the clip) as the contract's words, in
    seconds rounded to the millisecond. Every transcript's and segment's words go through here."""
    step = seconds_per_frame
    return [contract.Word(w, round(s * step, 3), round(e * step, 3)) for w, s, e in words]


def details(hyp: Hypothesis, logits: torch.Tensor, vocab: ctc.Vocabulary, options: Options,
            seconds_per_frame: float, pieces: Sequence[tuple[int, int, int, float, float]]
            ) -> tuple[list[contract.Word] | None, list[contract.Segment] | None]:
    """A clip's transcript details as its options ask: words (`timestamps`; `confidence` adds each word's
    probability, common/ctc.py word_probabilities) and segments (`segments`). logits: the clip's decoded frames
    (frames x vocabulary), the hypothesis' word frames index them; pieces: the model's chunk plan, one
    (frames in `logits`, of them silence put back before, and after, start s, end s) per chunk in order (the
    silence frames are those the VAD did not send: serve/vad.py). A segment is one chunk: its times, the words
    whose last frame is in its frames, and avg_logprob (common/ctc.py mean_logprobs) over its frames that were
    sent to the model. (None, None) when the options ask for neither."""
    o = options
    if not (o.timestamps or o.confidence or o.segments):
        return None, None
    words = timed_words(hyp.words, seconds_per_frame)
    if o.confidence:
        with torch.inference_mode():
            probabilities = ctc.word_probabilities(logits, [(s, e) for _, s, e in hyp.words], vocab.blank_id,
                                                   vocab.not_spelling())
        words = [dataclasses.replace(w, probability=p) for w, p in zip(words, probabilities)]
    shown = words if o.timestamps or o.confidence else None
    if not o.segments:
        return shown, None
    bounds = np.cumsum([0] + [piece[0] for piece in pieces]).tolist()
    ranges = list(zip(bounds[:-1], bounds[1:]))
    sent = [(first + piece[1], end - piece[2]) for (first, end), piece in zip(ranges, pieces)]
    with torch.inference_mode():
        logprobs = ctc.mean_logprobs(logits, sent)
    owner = [min(len(ranges) - 1, bisect.bisect_right(bounds, max(e - 1, s), 1) - 1) for _, s, e in hyp.words]
    segments = []
    for i, (_, _, _, start, end) in enumerate(pieces):
        mine = [w for w, k in zip(words, owner) if k == i]
        segments.append(contract.Segment(
            index=i, start=round(start, 3), end=round(end, 3), text=" ".join(w.word for w in mine),
            words=mine if shown is not None else None, last=i == len(pieces) - 1, avg_logprob=logprobs[i]))
    return shown, segments


def beam_search(checkpoint: modeldir.Checkpoint, processes: int) -> tuple[BeamSearch | None, str]:
    """This model's beam search, and why there is none when there is none (logged either way).

    With an LM (language_model/): its pool started now (in this worker, after the fork), the LM loaded by the
    first process, what it found logged; ModelDirError when the decoder files cannot be used (the server
    does not start: a model that ships an LM is not served without it), among them an LM whose unigrams the
    vocabulary mostly cannot spell (common/lm.py, MIN_SPELLABLE: e.g. a lower-case LM beside an upper-case
    vocabulary, which would decode to garbage with status 200). Without one: beam search without an
    LM on request, its processes started on the first such request. Adapter (MMS) models: none (one alphabet
    per pool; an LM beside them refuses the model).
    """
    path = checkpoint.path
    columns = checkpoint.model.lm_head.out_features  # logits per frame: the alphabet must have as many labels
    try:
        files = lm.find(path)
    except lm.LMError as exc:
        raise modeldir.ModelDirError(f"its language model cannot be used: {exc}") from None
    has_lm = files is not None and files.kenlm is not None
    if checkpoint.languages:
        if has_lm:
            raise modeldir.ModelDirError(f"{lm.LM_DIR}/ beside language adapters: beam search with an LM is not "
                                         f"supported for adapter (MMS) models; remove {lm.LM_DIR}/ to serve it "
                                         f"with greedy decoding")
        why = "beam search is not available for adapter (MMS) models"
        log.info("decoder: greedy (%s)", why)
        return None, why
    started = time.monotonic()
    if not has_lm:
        try:
            bare = lm.load(path)  # no LM file: cheap; checks the alphabet against the tokenizer and the head
        except (lm.LMError, ImportError) as exc:  # ImportError: an environment without requirements/lm.txt
            why = f"this model's vocabulary cannot be a beam-search alphabet ({exc})" \
                if isinstance(exc, lm.LMError) else f"beam search is not installed ({exc})"
            log.info("decoder: greedy; %s", why)
            return None, why
        labels = bare.labels
        bare.close()
        if len(labels) != columns:
            why = f"the beam-search alphabet has {len(labels)} labels for {columns} logits per frame"
            log.info("decoder: greedy; %s", why)
            return None, why
        log.info("decoder: greedy by default (no %s/ in %s); decoder=beam runs beam search without an LM "
                 "in %d process(es), started on first use", lm.LM_DIR, path, processes)
        return BeamSearch(path, processes, labels=labels, has_lm=False), ""
    beam = BeamSearch(path, processes)
    try:
        info = beam.start()
    except lm.LMError as exc:
        raise modeldir.ModelDirError(f"its language model cannot be used: {exc}") from None
    if info["vocab_size"] != columns:
        beam.close()
        raise modeldir.ModelDirError(f"its language model cannot be used: {lm.ALPHABET_FILE} has "
                                     f"{info['vocab_size']} labels, the model writes {columns} logits per frame")
    if info.get("spellable") is not None and info["spellable"] < lm.WARN_SPELLABLE:
        # Refused below lm.MIN_SPELLABLE (LMError above); between the two it decodes, with fewer usable words.
        log.warning("language model: %s; those words can never be transcribed", info["spelling"])
    size = info["kenlm_bytes"] or 0
    log.info("decoder: beam search + LM by default: %s (%s, %.1f MB, order %s, %s unigrams), alpha=%g beta=%g, "
             "beam width %d unless a request sets one; %d process(es) (SERVE_BEAM_PROCESSES), first loaded in "
             "%.1f s; decoder=greedy on request", Path(info["kenlm"]).relative_to(path),
             "ARPA text: loaded by every process" if info["kenlm"].endswith(".arpa") else "KenLM binary",
             size / 1e6, info["order"], info["unigrams"], info["alpha"], info["beta"], lm.DEFAULT_BEAM_WIDTH,
             processes, time.monotonic() - started)
    return beam, ""
