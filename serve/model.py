"""The model side of serving: a Hugging Face CTC checkpoint behind the contract of serve/contract.py.

`load(settings)` reads the model directory (common/modeldir.py: every supported architecture, its
processor, safetensors or weights-only .bin, adapters), puts it on the device in its serving dtype and
starts its batcher. `ServingModel` then owns the whole path from a request's clips to text:

    clip -> normalised (zero mean, unit variance over the whole clip, when the feature extractor says so)
         -> chunks (serve/chunking.py's `plan`, called from `chunks` only: long audio in overlapping
            windows, edges on frame boundaries; with a VAD, serve/vad.py, its `plan_speech`: the regions of
            speech only, cut at pauses, silence not sent)
         -> batcher (clips of one key share a forward pass: same adapter language, serve/languages.py, and
            the same length unless padding is proven not to change results) -> `_logits` (the one
            forward-pass method of clips; live-stream windows over cached feature-encoder frames run
            serve/streamfeatures.forward, unless stream_feature_cache="off")
         -> the chunk's frame logits, stride frames dropped (`Chunk.kept`), silence frames put back where
            the VAD left audio out (`vad.silence_logits`), joined on the device
         -> decoder stage (serve/decoding.py: greedy CTC on the device, or beam search with the model's
            KenLM n-gram in a process pool beside it) -> text and word times (`decoding.timed_words`).

Decoders (chosen per request by serve/decoding.py's `choose`): a model directory with an LM
(Wav2Vec2ProcessorWithLM's layout: alphabet.json, language_model/) decodes with beam search + LM unless a
request says `decoder=greedy`; one without decodes greedily unless a request says `decoder=beam` (beam
search without an LM: hotwords apply, alpha/beta are refused). Greedy refuses the beam options (a 400: never
silently ignored).

One file because `ServingModel` is the one object that ties chunking, languages, decoders and the batcher
to the contract, and its transcribe paths share the batcher futures and their cancellation; the arithmetic,
the adapter cache and the decoder choice it relies on live in their own modules, and the device and dtype
choice beside it (`choose_device_and_dtype`, `prepare`) is the part of `load` that tests and bench import.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future, wait
from typing import Hashable, Iterator, Sequence

import numpy as np
import torch

from common import batching, ctc, modeldir
from common.audio import TARGET_RATE, normalize
from common.convs import convs_as_matmuls

from . import chunking, contract, decoding, languages, metrics, streamfeatures, streaming
from . import vad as vad_side
from .batcher import Batcher
from .decoding import beam_search  # noqa: F401 (its home was here: tests and bench/lib/heldout.py import it)
from .options import Options

log = logging.getLogger("serve")

_STREAM = "stream"  # last element of the batcher key of stream windows (submit)
_FEATURES = "stream-features"  # ... and of stream windows over cached features (submit_features)


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
    stream_config = streaming.StreamConfig()  # live streams' windows; load() sets it from SERVE_STREAM_*

    def __init__(self, checkpoint: modeldir.Checkpoint, *, device: torch.device, dtype: torch.dtype,
                 chunk_length_s: float = 30.0, chunk_stride_s: float = 5.0, max_batch_size: int = 1,
                 max_batch_wait_s: float = 0.005, max_adapters: int = 16, stream_max_batch_size: int = 16,
                 stream_feature_cache: str = "auto", beam: decoding.BeamSearch | None = None,
                 beam_unavailable: str = "", vad: vad_side.Segmenter | None = None):
        """beam: this model's beam search (its LM, if any, decides the default decoder); beam_unavailable:
        why there is none, for the answer to a request that asks for it. stream_max_batch_size: most stream
        windows (`submit`, `submit_features`) in one forward pass. stream_feature_cache: "auto", "exact" or
        "off" (serve/streamfeatures.py). vad: long audio cut at pauses (serve/vad.py); None: fixed chunks."""
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
        self.geometry = chunking.Geometry.of(self.samples_per_frame, self.min_samples, chunk_length_s,
                                             chunk_stride_s, TARGET_RATE)
        g = self.geometry
        self.chunk_samples, self.stride_samples, self.right_samples = g.chunk_samples, g.stride_samples, \
            g.right_samples
        self.vad = vad
        self.exact = self._make_exact()
        # How stream windows reuse feature-encoder frames (serve/streamfeatures.py); None: whole-window passes.
        self.stream_features = streamfeatures.mode(self.model, stream_feature_cache)

        self.languages = languages.Languages(checkpoint, self.model, device=device, dtype=dtype,
                                             max_adapters=max_adapters)
        self.default_language = self.languages.default

        self.beam, self.beam_unavailable = beam, beam_unavailable or "no beam-search decoder was set up"
        self.info = contract.ModelInfo(
            architecture=type(self.model).__name__, languages=self.languages.names,
            default_language=self.default_language, decoders=decoding.available(beam),
            frame_seconds=self.seconds_per_frame, default_decoder=decoding.default_decoder(beam),
            frame_samples=self.samples_per_frame, receptive_field=self.min_samples,
            has_lm=beam is not None and beam.has_lm)
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
                kept = [self._kept(c, o.value, language.vocab) for c, o in zip(chunks, mine)]
                # No chunk: no speech (VAD): no frames, an empty transcript.
                logits = torch.cat(kept) if kept else torch.zeros(0, language.vocab.size, device=self.device)
                o = clip.options
                # Segments are the chunk plan's chunks (decoding.details): joined frames, silence frames put
                # back before and after, start s, end s, each.
                pieces = [(len(k), *c.silence_frames, c.kept_samples[0] / TARGET_RATE,
                           c.kept_samples[1] / TARGET_RATE) for k, c in zip(kept, chunks)]
                pending.append((decoder.submit(logits, language.vocab, words=o.timestamps or o.confidence
                                               or o.segments, deadline=deadline),
                                max((x.batch_size for x in mine), default=1), (language, logits, pieces)))
            results = []
            for clip, (job, batch_size, (language, logits, pieces)) in zip(clips, pending):
                hyp = job.result()
                words, segments = decoding.details(hyp, logits, language.vocab, clip.options,
                                                   self.seconds_per_frame, pieces)
                results.append(contract.Transcript(
                    text=hyp.text, audio_seconds=round(len(clip.audio) / TARGET_RATE, 3), words=words,
                    batch_size=batch_size, segments=segments, language=language.name))
            return results
        finally:
            for job, _, _ in pending:
                job.cancel()

    def transcribe_iter(self, clip: contract.Clip, *, deadline: float) -> Iterator[contract.Segment]:
        """Segments of one clip as its chunks are done (serve/contract.py). Greedy decodes chunk by chunk,
        exactly as the whole clip. Beam search decodes each segment as it comes: the chunk's frames, after the
        frames of the previous segment's last word (held back, in case it runs on, and decoded again as the
        LM's context), so words are never cut at a chunk edge; the LM's state restarts at each segment, so on
        audio longer than one chunk the joined segments can differ from `transcribe`'s whole-clip beam
        search near the edges. A clip of one chunk is one segment, the same as `transcribe`."""
        language, decoder, chunks, jobs = self._plan(clip)
        if not chunks:  # no speech (VAD): one empty segment
            yield contract.Segment(index=0, start=0.0, end=round(len(clip.audio) / TARGET_RATE, 3), text="",
                                   words=[] if clip.options.timestamps else None, last=True)
            return
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
                kept = self._kept(chunk, outcome.value, language.vocab)
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
                begin, end = chunks[first].kept_samples[0] / TARGET_RATE, chunk.kept_samples[1] / TARGET_RATE
                yield contract.Segment(
                    index=i, start=round(begin, 3), end=round(end, 3), text=" ".join(w for w, _, _ in words),
                    words=self._words(words, clip), last=last, batch_size=outcome.batch_size)
        finally:
            for f in futures:
                f.cancel()

    def _beam_segments(self, clip, language, decoder, chunks, futures, deadline) -> Iterator[contract.Segment]:
        carry: torch.Tensor | None = None  # frames from the held-back word on
        carry_frame = 0  # its first frame in the clip
        for i, (chunk, future) in enumerate(zip(chunks, futures)):
            outcome = self._wait([future], deadline, others=futures[i + 1:])[0]
            kept = self._kept(chunk, outcome.value, language.vocab)
            frames, base = (kept, chunk.first_frame) if carry is None else (torch.cat([carry, kept]), carry_frame)
            last = i == len(chunks) - 1
            hyp = decoder.decode(frames, language.vocab, words=True, deadline=deadline)
            words = hyp.words
            carry = None
            if words and not last and not chunk.after:  # after a pause (VAD) the last word is complete
                held = words[-1][1]
                carry, carry_frame, words = frames[held:], base + held, words[:-1]
            words = [(w, base + s, base + e) for w, s, e in words]
            begin, end = (at / TARGET_RATE for at in chunk.kept_samples)
            yield contract.Segment(
                index=i, start=round(begin, 3), end=round(end, 3), text=" ".join(w for w, _, _ in words),
                words=self._words(words, clip), last=last, batch_size=outcome.batch_size)

    def open_stream(self, options: Options) -> streaming.Transcriber:
        """A live stream (contract.LiveStream) with a session's options; BadRequest for options it cannot honour."""
        return streaming.Transcriber(self, options, self.stream_config)

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
        """The decoder for a request's options (serve/decoding.py's `choose`): `decoding.GREEDY`, or beam
        search bound to its options. BadRequest for a decoder this model does not have, or options that do not
        apply to it."""
        return decoding.choose(options, self.beam, self.beam_unavailable, self.info.default_decoder)

    # Long audio ---------------------------------------------------------------------------------------
    def chunks(self, audio: np.ndarray) -> list[chunking.Chunk]:
        """The clip normalised as a whole, then cut (the one place a clip is chunked): with a VAD and a clip
        it applies to (serve/vad.py's `Segmenter.applies`), at its pauses (`chunking.plan_speech`: silence not
        sent, no chunks for a clip without speech); else by `chunking.plan`: a clip no longer than one chunk is
        one chunk with no strides. Either way the kept parts, with the silence between them, tile the clip."""
        normalized = self._normalized(audio)
        if self.vad is not None and self.vad.applies(len(audio), self.geometry.chunk_samples):
            return self.vad.chunks(audio, normalized, self.geometry)
        return chunking.plan(normalized, self.geometry)

    def _kept(self, chunk: chunking.Chunk, logits: torch.Tensor, vocab: ctc.Vocabulary | None = None) -> torch.Tensor:
        """A chunk's frame logits without its strides (`chunking.Chunk.kept`); the silence the VAD left out
        around it (`Chunk.silence_frames`) comes back as frames that decode to a word break (needs `vocab`)."""
        kept = chunk.kept(logits)
        before, after = chunk.silence_frames
        if before or after:
            kept = torch.cat([vad_side.silence_logits(before, vocab, kept), kept,
                              vad_side.silence_logits(after, vocab, kept)])
        return kept

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
        self.languages.activate(key[0])
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

    def _words(self, words: list[tuple[str, int, int]], clip: contract.Clip) -> list[contract.Word] | None:
        """A hypothesis's words (frames of the clip) in seconds (decoding.timed_words), if the clip asked."""
        return decoding.timed_words(words, self.seconds_per_frame) if clip.options.timestamps else None

    def _language(self, options: Options | None) -> languages.Language:
        """The request's language (serve/languages.py); options None: the model's only language."""
        return self.languages.get(None) if options is None else self.languages.for_options(options)

    def _normalized(self, audio: np.ndarray) -> np.ndarray:
        """The feature extractor's zero-mean unit-variance normalisation, over the whole clip."""
        # Shorter than the feature encoder's receptive field gives zero frames: padded with silence first.
        audio = chunking.padded(np.asarray(audio, dtype=np.float32), self.min_samples)
        if not self.normalize:
            return audio
        return normalize(audio)


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
    beam, beam_unavailable = decoding.beam_search(checkpoint, settings.beam_processes_for(workers))
    try:
        model = ServingModel(
            checkpoint, device=device, dtype=dtype, chunk_length_s=settings.chunk_length_s,
            chunk_stride_s=settings.chunk_stride_s, max_batch_size=settings.batch_size_on(device.type),
            max_batch_wait_s=settings.max_batch_wait_ms / 1000, max_adapters=settings.max_adapters,
            stream_max_batch_size=settings.stream_max_batch_size,
            stream_feature_cache=settings.stream_feature_cache, beam=beam, beam_unavailable=beam_unavailable,
            vad=vad_side.Segmenter.from_settings(settings) if settings.chunking == "vad" else None)
    except BaseException:
        if beam is not None:
            beam.close()
        raise
    model.stream_config = streaming.StreamConfig.from_settings(settings)
    model.warm_up()
    log.info("model: %s, %s batching (%s)", model.info.architecture,
             "padded" if model.exact else "equal-length",
             f"up to {settings.batch_size_on(device.type)} clips" if settings.batch_size_on(device.type) > 1
             else "off")
    log.info("model loaded from %s on %s as %s in %.1f s", checkpoint.path, device, dtype,
             time.monotonic() - started)
    metrics.model_loaded(model, time.monotonic() - started)
    return model.start()
