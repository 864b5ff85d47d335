"""The model side of serving: a Hugging Face CTC checkpoint behind the contract of serve/contract.py.

`load(settings)` reads the model directory (common/modeldir.py: every supported architecture, its
processor, safetensors or weights-only .bin, adapters), puts it on the device in its serving dtype and
starts its batcher. `ServingModel` then owns the whole path from a request's clips to text:

    clip -> normalised (zero mean, unit variance over the whole clip, when the feature extractor says so)
         -> chunks (long audio: overlapping windows, edges on frame boundaries)
         -> batcher (clips of one key share a forward pass: same adapter language, and the same length
            unless padding is proven not to change results) -> `_logits` (the one forward-pass method of
            clips; live-stream windows over cached feature-encoder frames run serve/streamfeatures.forward,
            unless stream_feature_cache="off")
         -> the chunk's frame logits, stride frames dropped, joined on the device
         -> decoder stage (serve/decoding.py: greedy CTC on the device, or beam search with the model's
            KenLM n-gram in a process pool beside it) -> text and word times.

Decoders: a model directory with an LM (Wav2Vec2ProcessorWithLM's layout: alphabet.json, language_model/)
decodes with beam search + LM unless a request says `decoder=greedy`; one without decodes greedily unless a
request says `decoder=beam` (beam search without an LM: hotwords apply, alpha/beta are refused). Greedy
refuses the beam options (a 400: never silently ignored).
"""
from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Iterator, Sequence

import numpy as np
import torch

from common import batching, ctc, lm, modeldir
from common.audio import TARGET_RATE, normalize
from common.convs import convs_as_matmuls

from . import contract, decoding, metrics, streamfeatures
from .batcher import Batcher
from .options import Options, beam_options_given, decode_options

log = logging.getLogger("serve")

_STREAM = "stream"  # last element of the batcher key of stream windows (submit)
_FEATURES = "stream-features"  # ... and of stream windows over cached features (submit_features)


@dataclass(frozen=True)
class Chunk:
    audio: np.ndarray
    left: int   # samples at the start that overlap the previous chunk (or extra left context)
    right: int  # samples at the end that overlap the next chunk
    start: int = 0  # where the chunk starts in the clip, in samples


@dataclass
class _Language:
    """One adapter language (or the model's only language: name None), as the model thread uses it."""
    name: str | None
    vocab: ctc.Vocabulary
    parameters: dict | None  # adapter parameters on the device; None without adapters


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """AVX512-BF16 or AMX-BF16: where oneDNN runs bfloat16 matmuls natively (elsewhere it is emulated)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return bool({"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


def choose_device_and_dtype(gpu_dtype: str, cpu_bf16: str) -> tuple[torch.device, torch.dtype]:
    """cpu_bf16: "auto" (bfloat16 on CPUs with native support), "true" or "false"."""
    if torch.cuda.is_available():
        return torch.device("cuda", 0), getattr(torch, gpu_dtype)
    bf16 = cpu_bf16 == "true" or (cpu_bf16 == "auto" and cpu_has_native_bf16())
    return torch.device("cpu"), torch.bfloat16 if bf16 else torch.float32


def prepare(model, device: torch.device, dtype: torch.dtype):
    """The model as the server runs it: on `device` in `dtype`, eval mode, patched for exact batching
    (common/batching.py) by the caller. On a CPU, in float32 the first feature-encoder convolution runs as
    a matmul unless a per-channel GroupNorm follows it; in bfloat16 all of them, with that GroupNorm reading
    their layout (common/convs.py). Same products summed in another order: logits equal to float rounding,
    transcripts equal."""
    model = model.to(device=device, dtype=dtype).eval()
    if device.type == "cpu":
        convs_as_matmuls(model, all_layers=dtype == torch.bfloat16)
    return model


class ServingModel:
    """A loaded checkpoint serving the contract (serve/contract.py); thread-safe: request threads call
    transcribe/transcribe_iter/submit, one batcher thread runs every forward pass."""

    def __init__(self, checkpoint: modeldir.Checkpoint, *, device: torch.device, dtype: torch.dtype,
                 chunk_length_s: float = 30.0, chunk_stride_s: float = 5.0, max_batch_size: int = 1,
                 max_batch_wait_s: float = 0.005, max_adapters: int = 16, stream_max_batch_size: int = 16,
                 stream_feature_cache: str = "auto", beam: decoding.BeamSearch | None = None,
                 beam_unavailable: str = ""):
        """beam: this model's beam search (its LM, if any, decides the default decoder); beam_unavailable:
        why there is none, for the answer to a request that asks for it. stream_max_batch_size: most stream
        windows (`submit`, `submit_features`) in one forward pass. stream_feature_cache: "auto", "exact" or
        "off" (serve/streamfeatures.py)."""
        fe = checkpoint.feature_extractor
        if fe.sampling_rate != TARGET_RATE:
            raise modeldir.ModelDirError(f"the model expects {fe.sampling_rate} Hz audio; this server feeds it "
                                         f"{TARGET_RATE} Hz")
        self.path = checkpoint.path
        self.device, self.dtype = device, dtype
        self.model = prepare(checkpoint.model, device, dtype)
        self.config = self.model.config
        self.normalize = bool(fe.do_normalize)
        self.samples_per_frame = batching.frame_samples(self.config)
        self.seconds_per_frame = self.samples_per_frame / TARGET_RATE
        self.min_samples = batching.min_samples(self.config)
        # Chunk edges on frame boundaries, so that chunk frames line up with whole-clip frames.
        align = self.samples_per_frame
        self.chunk_samples = max(align, round(chunk_length_s * TARGET_RATE / align) * align,
                                 math.ceil(self.min_samples / align) * align)
        self.stride_samples = round(chunk_stride_s * TARGET_RATE / align) * align
        # A chunk's last frames need samples past its end (the receptive field is wider than a frame): with
        # no stride a chunk still reaches that far into the next one, and those frames are dropped.
        self.right_samples = max(self.stride_samples, math.ceil((self.min_samples - align) / align) * align)
        self.exact = self._make_exact()
        # How stream windows reuse feature-encoder frames (serve/streamfeatures.py); None: whole-window passes.
        self.stream_features = streamfeatures.mode(self.model, stream_feature_cache)

        self._adapter_files = dict(checkpoint.languages)
        self.default_language = checkpoint.language
        self._max_adapters = max(1, max_adapters)
        self._languages: OrderedDict[str | None, _Language] = OrderedDict()
        self._languages_lock = threading.Lock()
        params = None
        if self._adapter_files:
            params = {k: p for k, p in modeldir.adapter_parameters(self.model).items()}
        self._languages[self.default_language] = _Language(
            self.default_language, ctc.Vocabulary(checkpoint.tokenizer, self.model.lm_head.out_features), params)
        self._active = self.default_language  # the adapter in the model now (batcher thread only)

        self.beam, self.beam_unavailable = beam, beam_unavailable or "no beam-search decoder was set up"
        self.info = contract.ModelInfo(
            architecture=type(self.model).__name__, languages=tuple(self._adapter_files),
            default_language=self.default_language,
            decoders=tuple(decoding.DECODERS) + (("beam",) if beam is not None else ()),
            frame_seconds=self.seconds_per_frame,
            default_decoder="beam" if beam is not None and beam.has_lm else "greedy",
            frame_samples=self.samples_per_frame, receptive_field=self.min_samples)
        # Stream windows (submit) have a key of their own: equal-length windows share a pass without padding,
        # so they batch up to their own limit, on a CPU too.
        self.batcher = Batcher(self._run_batch, max_batch_size, max_batch_wait_s,
                               max_for=lambda key: stream_max_batch_size if key[-1] in (_STREAM, _FEATURES)
                               else max_batch_size)

    def start(self) -> "ServingModel":
        self.batcher.start()
        return self

    def close(self) -> None:
        """Stop the batcher thread once queued work has run, and the beam-search processes."""
        self.batcher.stop()
        if self.beam is not None:
            self.beam.close()

    # The contract ---------------------------------------------------------------------------------
    def health(self) -> contract.Health:
        if self.batcher.alive:
            return contract.Health(True)
        return contract.Health(False, "model batcher thread is not running")

    def transcribe(self, clips: Sequence[contract.Clip], *, deadline: float) -> list[contract.Transcript]:
        work = [self._plan(clip) for clip in clips]
        futures = self._submit([job for _, _, _, jobs in work for job in jobs])
        outcomes = self._wait(futures, deadline)
        # Every clip's decoding is started before any is waited for: beam searches run in parallel.
        pending, at = [], 0
        try:
            for clip, (language, decoder, chunks, _) in zip(clips, work):
                mine = outcomes[at: at + len(chunks)]
                at += len(chunks)
                kept = [self._kept(c, o.value) for c, o in zip(chunks, mine)]
                logits = torch.cat(kept)
                opts = clip.options
                words = opts.timestamps or opts.confidence or opts.segments
                pending.append((decoder.submit(logits, language.vocab, words=words, deadline=deadline),
                                max(o.batch_size for o in mine), (language, logits, [len(k) for k in kept])))
            results = []
            for clip, (job, batch_size, details) in zip(clips, pending):
                hyp = job.result()
                words, segments = self._details(clip, hyp, *details)
                results.append(contract.Transcript(
                    text=hyp.text, audio_seconds=round(len(clip.audio) / TARGET_RATE, 3),
                    words=words, batch_size=batch_size, segments=segments, language=details[0].name))
            return results
        finally:
            for job, _, _ in pending:
                job.cancel()

    def _details(self, clip, hyp, language, logits, kept_frames):
        """Words (timestamps or confidence) and segments (segments) of one clip's hypothesis. Segments are the
        chunks' kept parts, which tile the clip; a word belongs to the segment that holds its last frame."""
        o = clip.options
        words = None
        if o.timestamps or o.confidence or o.segments:
            probabilities = [None] * len(hyp.words)
            if o.confidence:
                with torch.inference_mode():
                    probabilities = ctc.word_probabilities(logits, [(s, e) for _, s, e in hyp.words],
                                                           language.vocab.blank_id, language.vocab.not_spelling())
            words = [dataclasses.replace(w, probability=p) for w, p in zip(self._words(hyp.words), probabilities)]
        if not o.segments:
            return (words if o.timestamps or o.confidence else None), None
        bounds = np.cumsum([0] + kept_frames).tolist()
        ranges = list(zip(bounds[:-1], bounds[1:]))
        with torch.inference_mode():
            logprobs = ctc.mean_logprobs(logits, ranges)
        owner = [min(len(ranges) - 1, bisect.bisect_right(bounds, max(e - 1, s), 1) - 1) for _, s, e in hyp.words]
        step, segments = self.seconds_per_frame, []
        for i, (start, end) in enumerate(ranges):
            mine = [w for w, k in zip(words, owner) if k == i]
            segments.append(contract.Segment(
                index=i, start=round(start * step, 3), end=round(end * step, 3), text=" ".join(w.word for w in mine),
                words=mine if o.timestamps or o.confidence else None, last=i == len(ranges) - 1,
                avg_logprob=logprobs[i]))
        return (words if o.timestamps or o.confidence else None), segments

    def transcribe_iter(self, clip: contract.Clip, *, deadline: float) -> Iterator[contract.Segment]:
        """Segments of one clip as its chunks are done (serve/contract.py). Greedy decodes chunk by chunk,
        exactly as the whole clip. Beam search decodes each segment as it comes: the chunk's frames, after the
        frames of the previous segment's last word (held back, in case it runs on, and decoded again as the
        LM's context), so words are never cut at a chunk edge; the LM's state restarts at each segment, so on
        audio longer than one chunk the joined segments can differ from `transcribe`'s whole-clip beam
        search near the edges. A clip of one chunk is one segment, the same as `transcribe`."""
        language, decoder, chunks, jobs = self._plan(clip)
        futures = self._submit(jobs)
        if isinstance(decoder, decoding.BoundBeam):
            try:
                yield from self._beam_segments(clip, language, decoder, chunks, futures, deadline)
            finally:
                for f in futures:
                    f.cancel()
            return
        stream = decoder.stream(language.vocab) if hasattr(decoder, "stream") else None
        held: list[torch.Tensor] = []
        try:
            for i, (chunk, future) in enumerate(zip(chunks, futures)):
                outcome = self._wait([future], deadline, others=futures[i + 1:])[0]
                kept = self._kept(chunk, outcome.value)
                last = i == len(chunks) - 1
                if stream is None:
                    held.append(kept)
                    if not last:
                        continue
                    with torch.inference_mode():
                        words = decoder.decode(torch.cat(held), language.vocab, words=True).words
                    first = 0
                else:
                    with torch.inference_mode():
                        words = stream.push(kept) + (stream.finish() if last else [])
                    first = i
                begin = (chunks[first].start + chunks[first].left) / TARGET_RATE
                end = (chunk.start + len(chunk.audio) - chunk.right) / TARGET_RATE
                yield contract.Segment(
                    index=i, start=round(begin, 3), end=round(end, 3), text=" ".join(w for w, _, _ in words),
                    words=self._words(words) if clip.options.timestamps else None, last=last,
                    batch_size=outcome.batch_size)
        finally:
            for f in futures:
                f.cancel()

    def _beam_segments(self, clip, language, decoder, chunks, futures, deadline) -> Iterator[contract.Segment]:
        carry: torch.Tensor | None = None  # frames from the held-back word on
        carry_frame = 0  # its first frame in the clip
        for i, (chunk, future) in enumerate(zip(chunks, futures)):
            outcome = self._wait([future], deadline, others=futures[i + 1:])[0]
            kept = self._kept(chunk, outcome.value)
            first_frame = (chunk.start + chunk.left) // self.samples_per_frame
            frames, base = (kept, first_frame) if carry is None else (torch.cat([carry, kept]), carry_frame)
            last = i == len(chunks) - 1
            hyp = decoder.decode(frames, language.vocab, words=True, deadline=deadline)
            words = hyp.words
            carry = None
            if words and not last:
                held = words[-1][1]
                carry, carry_frame, words = frames[held:], base + held, words[:-1]
            words = [(w, base + s, base + e) for w, s, e in words]
            begin = (chunk.start + chunk.left) / TARGET_RATE
            end = (chunk.start + len(chunk.audio) - chunk.right) / TARGET_RATE
            yield contract.Segment(
                index=i, start=round(begin, 3), end=round(end, 3), text=" ".join(w for w, _, _ in words),
                words=self._words(words) if clip.options.timestamps else None, last=last,
                batch_size=outcome.batch_size)

    # Streaming sessions: forward passes through the same batcher ---------------------------------------
    def submit(self, windows: Sequence[np.ndarray], options: Options) -> list[Future]:
        """One future per window (16 kHz mono float32, normalised here like a clip), each resolving to a
        batcher Outcome whose value is the window's frame logits (frames x vocabulary, on the device)."""
        language = self._language(options)
        return self._submit([(self._key(language.name, len(w)) + (_STREAM,), self._normalized(w)) for w in windows])

    def submit_features(self, windows: Sequence[streamfeatures.Window], options: Options) -> list[Future]:
        """Stream windows over cached feature-encoder frames (when `stream_features` is not None): one future
        per window, each resolving to a batcher Outcome whose value is a streamfeatures.Output (the window's
        frame logits and its new frames' features). Windows of equal shapes share a forward pass."""
        language = self._language(options)
        return self._submit([((language.name, len(w.audio), w.cached_frames, _FEATURES), w) for w in windows])

    def stream_stats(self) -> tuple[streamfeatures.RunningStats | None, streamfeatures.RunningStats | None]:
        """A new stream's running statistics: of its samples (None without do_normalize), and of its first
        feature-encoder layer's channels (None unless stream_features is RUNNING)."""
        rate = TARGET_RATE * streamfeatures.RUNNING_S
        samples = streamfeatures.RunningStats(rate) if self.normalize else None
        channels = None
        if self.stream_features == streamfeatures.RUNNING:
            channels = streamfeatures.RunningStats(rate / self.config.conv_stride[0], self.config.conv_dim[0])
        return samples, channels

    def vocabulary(self, options: Options) -> ctc.Vocabulary:
        return self._language(options).vocab

    def decoder(self, options: Options):
        """The decoder for a request's options: `decoding.GREEDY`, or beam search bound to its options.
        BadRequest for a decoder this model does not have, or options that do not apply to it."""
        name = options.decoder or self.info.default_decoder
        given = beam_options_given(options)
        if name == "greedy":
            if given:
                if options.decoder:
                    why = "decoder=greedy was asked for: leave them out"
                elif self.beam is None:
                    why = f"this model decodes greedily only ({self.beam_unavailable})"
                else:
                    why = "this model decodes greedily by default (it has no language model): add decoder=beam"
                raise contract.BadRequest(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only "
                                          f"to beam search, and {why}")
            return decoding.GREEDY
        if self.beam is None:
            raise contract.BadRequest(f"decoder=beam: {self.beam_unavailable}; this model decodes with "
                                      f"decoder=greedy")
        try:
            beam_options = decode_options(options)
            if options.prompt:  # OpenAI's prompt: its spellable words as hotwords (serve/decoding.py)
                beam_options = dataclasses.replace(beam_options, hotwords=self.beam.prompt_hotwords(
                    options.prompt, beam_options.hotwords))
        except lm.OptionError as exc:
            raise contract.BadRequest(str(exc)) from None
        return self.beam.bind(beam_options)

    # Long audio ---------------------------------------------------------------------------------------
    def chunks(self, audio: np.ndarray) -> list[Chunk]:
        """Whole-clip normalised chunks; a clip no longer than one chunk is one chunk with no strides.

        The parts kept (strides dropped) tile the clip. Each chunk starts `stride` before its kept part (the
        first at 0) and ends `stride` after it (at least the receptive field's reach past a frame, even with no
        stride); the last chunk reaches back as far as a whole chunk would, so that a short tail still gets
        full left context and is never shorter than the receptive field."""
        audio = self._normalized(audio)
        n, size, stride, align = len(audio), self.chunk_samples, self.stride_samples, self.samples_per_frame
        if n <= size:
            return [Chunk(audio, 0, 0, 0)]
        out, kept, right = [], 0, self.right_samples
        while True:
            start = max(0, kept - stride)
            end = start + size
            if end >= n:
                start = max(0, -(-(n - size) // align) * align)  # aligned, at most `size` before the end
                out.append(Chunk(audio[start:], kept - start, 0, start))
                return out
            out.append(Chunk(audio[start:end], kept - start, right, start))
            kept = end - right

    def _kept(self, chunk: Chunk, logits: torch.Tensor) -> torch.Tensor:
        """A chunk's frames without its strides. Frame k of a chunk starting at sample s (frame-aligned) is
        whole-clip frame s / samples_per_frame + k, so cutting by sample position keeps each frame once."""
        start = chunk.left // self.samples_per_frame
        end = (len(chunk.audio) - chunk.right) // self.samples_per_frame if chunk.right else len(logits)
        return logits[start:end]

    # The forward pass ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def _logits(self, clips: list[np.ndarray]) -> tuple[torch.Tensor, list[int]]:
        """Frame logits (batch x frames x vocabulary, on the device) of already normalised clips in one
        zero-padded pass, and each clip's frame count (common/batching.py: with an exact model each clip's
        logits are those it gets alone; otherwise the batcher only groups clips of equal length)."""
        return batching.padded_forward(self.model, clips, device=self.device, dtype=self.dtype)

    def _make_exact(self) -> bool:
        """Whether clips of different lengths may share a forward pass without changing any result:
        common.batching patches every architecture it proves exact (each clip's group-norm statistics over its
        own frames, padded frames kept out of attention and of every convolution over time); any other model
        batches clips of equal length only."""
        return batching.make_exact(self.model)

    def _run_batch(self, key: Hashable, clips: list[np.ndarray]) -> list[torch.Tensor]:
        """The batcher thread: the key's adapter, then one forward pass."""
        name = key[0]
        if self._adapter_files and name != self._active:
            modeldir.set_adapter(self.model, self._language(None, name).parameters)
            self._active = name
        if key[-1] == _FEATURES:
            return streamfeatures.forward(self.model, self.stream_features, clips, device=self.device,
                                          dtype=self.dtype)
        logits, frames = self._logits(clips)
        return [logits[i, : frames[i]] for i in range(len(clips))]

    def warm_up(self) -> None:
        """One tiny forward pass, so the first request does not pay for lazy kernel setup."""
        self._logits([self._normalized(np.zeros(TARGET_RATE, dtype=np.float32))])

    # Helpers ------------------------------------------------------------------------------------------
    def _key(self, language: str | None, samples: int) -> tuple:
        return (language, None if self.exact else samples)

    def _plan(self, clip: contract.Clip):
        language = self._language(clip.options)
        decoder = self.decoder(clip.options)
        chunks = self.chunks(clip.audio)
        return language, decoder, chunks, [(self._key(language.name, len(c.audio)), c.audio) for c in chunks]

    def _submit(self, jobs) -> list[Future]:
        if not self.batcher.alive:
            raise contract.Unavailable("the model's forward-pass thread is not running")
        return self.batcher.submit(jobs)

    def _wait(self, futures: list[Future], deadline: float, others: Sequence[Future] = ()) -> list:
        done, not_done = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        if not_done:
            for f in list(futures) + list(others):
                f.cancel()
            raise contract.Timeout("the transcript was not ready by its deadline")
        for f in futures:
            if f.exception() is not None:
                for other in list(futures) + list(others):
                    other.cancel()
                raise contract.ModelFailure("the model failed on this audio (details in the server log)") \
                    from f.exception()
        return [f.result() for f in futures]

    def _words(self, words: list[tuple[str, int, int]]) -> list[contract.Word]:
        step = self.seconds_per_frame
        return [contract.Word(w, round(s * step, 3), round(e * step, 3)) for w, s, e in words]

    def _language(self, options: Options | None, name: str | None = None) -> _Language:
        """The language's vocabulary and adapter, loaded on first use (least recently used dropped)."""
        if options is not None:
            name = options.language
            if name is None:
                name = self.default_language
            elif name not in self._adapter_files:
                raise contract.UnknownLanguage(name, list(self._adapter_files))
        with self._languages_lock:
            found = self._languages.get(name)
            if found is not None:
                self._languages.move_to_end(name)
                return found
            found = self._load_language(name)
            self._languages[name] = found
            while len(self._languages) > self._max_adapters:
                oldest = next(iter(self._languages))
                if oldest == self._active:  # in the model now: keep; drop the next oldest
                    self._languages.move_to_end(oldest)
                    oldest = next(iter(self._languages))
                del self._languages[oldest]
            return found

    def _load_language(self, name: str) -> _Language:
        path = self._adapter_files[name]
        started = time.monotonic()
        tensors = modeldir.read_adapter(path)
        try:
            size = modeldir.check_adapter(self.model, tensors, path)
            _, tokenizer = modeldir.load_processor_parts(self.path, name)
            modeldir.check_vocabulary(tokenizer, size)
        except modeldir.ModelDirError as exc:
            log.error("language %s cannot be served: %s", name, exc)
            raise contract.ModelFailure(f"the adapter for language {name!r} does not fit this model "
                                        f"(details in the server log)") from None
        parameters = {k: torch.nn.Parameter(t.to(self.device, self.dtype), requires_grad=False)
                      for k, t in tensors.items()}
        log.info("adapter %s loaded from %s in %.2f s", name, path.name, time.monotonic() - started)
        return _Language(name, ctc.Vocabulary(tokenizer, size), parameters)

    def _normalized(self, audio: np.ndarray) -> np.ndarray:
        """The feature extractor's zero-mean unit-variance normalisation, over the whole clip."""
        audio = np.asarray(audio, dtype=np.float32)
        if len(audio) < self.min_samples:
            # Shorter than the feature encoder's receptive field gives zero frames: pad with silence.
            audio = np.pad(audio, (0, self.min_samples - len(audio)))
        if not self.normalize:
            return audio
        return normalize(audio)


def beam_search(checkpoint: modeldir.Checkpoint, processes: int) -> tuple[decoding.BeamSearch | None, str]:
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
        return decoding.BeamSearch(path, processes, labels=labels, has_lm=False), ""
    beam = decoding.BeamSearch(path, processes)
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


def load(settings, workers: int = 1) -> ServingModel:
    """The model of settings.model_dir on this worker's device, warmed up, its batcher running.
    Raises modeldir.ModelDirError (with the reason) when the directory cannot be served."""
    device, dtype = choose_device_and_dtype(settings.gpu_dtype, settings.cpu_bf16)
    if device.type == "cpu":
        # Workers share the cores; each using all of them would only thrash.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    started = time.monotonic()
    checkpoint = modeldir.load_checkpoint(settings.model_dir, language=settings.language)
    for note in checkpoint.notes:
        log.info("model: %s", note)
    beam, beam_unavailable = beam_search(checkpoint, settings.beam_processes_for(workers))
    try:
        model = ServingModel(
            checkpoint, device=device, dtype=dtype, chunk_length_s=settings.chunk_length_s,
            chunk_stride_s=settings.chunk_stride_s, max_batch_size=settings.batch_size_on(device.type),
            max_batch_wait_s=settings.max_batch_wait_ms / 1000, max_adapters=settings.max_adapters,
            stream_max_batch_size=settings.stream_max_batch_size,
            stream_feature_cache=settings.stream_feature_cache, beam=beam, beam_unavailable=beam_unavailable)
    except BaseException:
        if beam is not None:
            beam.close()
        raise
    model.warm_up()
    log.info("model: %s, %s batching (%s)", model.info.architecture,
             "padded" if model.exact else "equal-length",
             f"up to {settings.batch_size_on(device.type)} clips" if settings.batch_size_on(device.type) > 1
             else "off")
    log.info("model loaded from %s on %s as %s in %.1f s", checkpoint.path, device, dtype,
             time.monotonic() - started)
    metrics.model_loaded(model, time.monotonic() - started)
    return model.start()
