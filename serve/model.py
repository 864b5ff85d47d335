"""The model side of serving: a Hugging Face CTC checkpoint behind the contract of serve/contract.py.

`load(settings)` reads the model directory (common/modeldir.py: every supported architecture, its
processor, safetensors or weights-only .bin, adapters), puts it on the device in its serving dtype and
starts its batcher. `ServingModel` then owns the whole path from a request's clips to text:

    clip -> normalised (zero mean, unit variance over the whole clip, when the feature extractor says so)
         -> chunks (long audio: overlapping windows, edges on frame boundaries)
         -> batcher (clips of one key share a forward pass: same adapter language, and the same length
            unless padding is proven not to change results) -> `_logits` (the one forward-pass method)
         -> the chunk's frame logits, stride frames dropped, joined on the device
         -> decoder stage (serve/decoding.py: greedy CTC on the device today) -> text and word times.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Hashable, Iterator, Sequence

import numpy as np
import torch

from common import ctc, modeldir
from common.audio import TARGET_RATE, normalize
from common.convs import convs_as_matmuls

from . import contract, decoding
from .batcher import Batcher
from .options import Options

log = logging.getLogger("serve")

_STREAM = "stream"  # last element of the batcher key of stream windows (submit)


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
    """The model as the server runs it: on `device` in `dtype`, eval mode. On a CPU, in float32 the first
    feature-encoder convolution runs as a matmul unless a per-channel GroupNorm follows it (results stay
    exact); in bfloat16 all of them, with that GroupNorm reading their layout (common/convs.py)."""
    model = model.to(device=device, dtype=dtype).eval()
    # common.convs reaches the encoder as model.wav2vec2; other architectures keep their convolutions.
    if device.type == "cpu" and hasattr(model, "wav2vec2"):
        convs_as_matmuls(model, all_layers=dtype == torch.bfloat16)
    return model


def receptive_field(config) -> int:
    """Input samples one output frame of the convolutional feature encoder sees (400 for wav2vec2)."""
    field, jump = 1, 1
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        field += (kernel - 1) * jump
        jump *= stride
    return field


def frame_count(config, samples: int) -> int:
    """Output frames of the feature encoder for `samples` input samples (transformers'
    _get_feat_extract_output_lengths, computed here from the config)."""
    n = samples
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        n = (n - kernel) // stride + 1
    return max(0, n)


class ServingModel:
    """A loaded checkpoint serving the contract (serve/contract.py); thread-safe: request threads call
    transcribe/transcribe_iter/submit, one batcher thread runs every forward pass."""

    def __init__(self, checkpoint: modeldir.Checkpoint, *, device: torch.device, dtype: torch.dtype,
                 chunk_length_s: float = 30.0, chunk_stride_s: float = 5.0, max_batch_size: int = 1,
                 max_batch_wait_s: float = 0.005, max_adapters: int = 16, stream_max_batch_size: int = 16):
        fe = checkpoint.feature_extractor
        if fe.sampling_rate != TARGET_RATE:
            raise modeldir.ModelDirError(f"the model expects {fe.sampling_rate} Hz audio; this server feeds it "
                                         f"{TARGET_RATE} Hz")
        self.path = checkpoint.path
        self.device, self.dtype = device, dtype
        self.model = prepare(checkpoint.model, device, dtype)
        self.config = self.model.config
        self.normalize = bool(fe.do_normalize)
        self.padding_value = float(fe.padding_value)
        # Layer-norm encoders take an attention mask; group-norm ones were trained on zero-padded batches
        # without one. The feature extractor saved with the model records which.
        self.use_mask = bool(fe.return_attention_mask)
        self.samples_per_frame = math.prod(self.config.conv_stride)
        self.seconds_per_frame = ctc.frame_seconds(self.config)
        self.min_samples = receptive_field(self.config)
        # Chunk edges on frame boundaries, so that chunk frames line up with whole-clip frames.
        align = self.samples_per_frame
        self.chunk_samples = max(align, round(chunk_length_s * TARGET_RATE / align) * align,
                                 math.ceil(self.min_samples / align) * align)
        self.stride_samples = round(chunk_stride_s * TARGET_RATE / align) * align
        # A chunk's last frames need samples past its end (the receptive field is wider than a frame): with
        # no stride a chunk still reaches that far into the next one, and those frames are dropped.
        self.right_samples = max(self.stride_samples, math.ceil((self.min_samples - align) / align) * align)
        self.exact = self._make_exact()

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

        self.info = contract.ModelInfo(
            architecture=type(self.model).__name__, languages=tuple(self._adapter_files),
            default_language=self.default_language, decoders=tuple(decoding.DECODERS),
            frame_seconds=self.seconds_per_frame, frame_samples=self.samples_per_frame,
            receptive_field=self.min_samples)
        # Stream windows (submit) have a key of their own: equal-length windows share a pass without padding,
        # so they batch up to their own limit, on a CPU too.
        self.batcher = Batcher(self._run_batch, max_batch_size, max_batch_wait_s,
                               max_for=lambda key: stream_max_batch_size if key[-1] == _STREAM else max_batch_size)

    def start(self) -> "ServingModel":
        self.batcher.start()
        return self

    def close(self) -> None:
        """Stop the batcher thread once queued work has run."""
        self.batcher.stop()

    # The contract ---------------------------------------------------------------------------------
    def health(self) -> contract.Health:
        if self.batcher.alive:
            return contract.Health(True)
        return contract.Health(False, "model batcher thread is not running")

    def transcribe(self, clips: Sequence[contract.Clip], *, deadline: float) -> list[contract.Transcript]:
        work = [self._plan(clip) for clip in clips]
        futures = self._submit([job for _, _, _, jobs in work for job in jobs])
        outcomes = self._wait(futures, deadline)
        results, at = [], 0
        for clip, (language, decoder, chunks, _) in zip(clips, work):
            mine = outcomes[at: at + len(chunks)]
            at += len(chunks)
            logits = torch.cat([self._kept(c, o.value) for c, o in zip(chunks, mine)])
            with torch.inference_mode():
                hyp = decoder.decode(logits, language.vocab, words=clip.options.timestamps)
            results.append(contract.Transcript(
                text=hyp.text, audio_seconds=round(len(clip.audio) / TARGET_RATE, 3),
                words=self._words(hyp.words) if clip.options.timestamps else None,
                batch_size=max(o.batch_size for o in mine)))
        return results

    def transcribe_iter(self, clip: contract.Clip, *, deadline: float) -> Iterator[contract.Segment]:
        language, decoder, chunks, jobs = self._plan(clip)
        futures = self._submit(jobs)
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

    # Streaming sessions: forward passes through the same batcher ---------------------------------------
    def submit(self, windows: Sequence[np.ndarray], options: Options) -> list[Future]:
        """One future per window (16 kHz mono float32, normalised here like a clip), each resolving to a
        batcher Outcome whose value is the window's frame logits (frames x vocabulary, on the device)."""
        language = self._language(options)
        return self._submit([(self._key(language.name, len(w)) + (_STREAM,), self._normalized(w)) for w in windows])

    def vocabulary(self, options: Options) -> ctc.Vocabulary:
        return self._language(options).vocab

    def decoder(self, options: Options):
        return decoding.DECODERS["greedy"]

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
        """Frame logits (batch x frames x vocabulary, on the device) of already normalised clips, zero-padded
        to the longest (with an attention mask when the model takes one), and each clip's frame count."""
        lengths = [len(c) for c in clips]
        longest = max(lengths)
        batch = np.full((len(clips), longest), self.padding_value, dtype=np.float32)
        mask = np.zeros((len(clips), longest), dtype=np.int64)
        for i, c in enumerate(clips):
            batch[i, : len(c)] = c
            mask[i, : len(c)] = 1
        values = torch.from_numpy(batch).to(self.device, non_blocking=True).to(self.dtype)
        kwargs = {}
        if self.use_mask:
            kwargs["attention_mask"] = torch.from_numpy(mask).to(self.device, non_blocking=True)
        logits = self.model(values, **kwargs).logits
        return logits, [frame_count(self.config, n) for n in lengths]

    def _make_exact(self) -> bool:
        """Whether clips of different lengths may share a forward pass without changing any result. Here:
        only encoders whose every layer is per-frame or masked (layer-norm feature encoder, attention mask,
        padded frames zeroed before a single positional convolution); the others batch equal lengths only.
        (Data2VecAudio's stacked positional convolutions carry padding into real frames: not exact.)"""
        return (self.use_mask and modeldir.feature_encoder_norm(self.config) == "layer"
                and self.config.model_type in ("wav2vec2", "hubert", "wavlm", "unispeech", "unispeech-sat"))

    def _run_batch(self, key: Hashable, clips: list[np.ndarray]) -> list[torch.Tensor]:
        """The batcher thread: the key's adapter, then one forward pass."""
        name = key[0]
        if self._adapter_files and name != self._active:
            modeldir.set_adapter(self.model, self._language(None, name).parameters)
            self._active = name
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
    model = ServingModel(
        checkpoint, device=device, dtype=dtype, chunk_length_s=settings.chunk_length_s,
        chunk_stride_s=settings.chunk_stride_s, max_batch_size=settings.batch_size_on(device.type),
        max_batch_wait_s=settings.max_batch_wait_ms / 1000, max_adapters=settings.max_adapters,
        stream_max_batch_size=settings.stream_max_batch_size)
    model.warm_up()
    log.info("model: %s, %s batching (%s)", model.info.architecture,
             "padded" if model.exact else "equal-length",
             f"up to {settings.batch_size_on(device.type)} clips" if settings.batch_size_on(device.type) > 1
             else "off")
    log.info("model loaded from %s on %s as %s in %.1f s", checkpoint.path, device, dtype,
             time.monotonic() - started)
    return model.start()
