"""The model side of serving: load a Wav2Vec2ForCTC directory, choose device and dtype, run batches.

`forward` turns a batch of clips into argmax ids on the device; `chunks` and `join` cut long audio into
overlapping chunks and join their ids, dropping each chunk's strides, as transformers' ASR pipeline does.
Only the collapsed tokens (common.ctc) ever reach the host.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from common import ctc, modeldir
from common.convs import convs_as_matmuls
from common.audio import TARGET_RATE, normalize

log = logging.getLogger("serve")


@dataclass(frozen=True)
class Chunk:
    audio: np.ndarray
    left: int   # samples at the start that overlap the previous chunk
    right: int  # samples at the end that overlap the next chunk


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
    if device.type == "cpu":
        convs_as_matmuls(model, all_layers=dtype == torch.bfloat16)
    return model


class Transcriber:
    def __init__(self, model_dir, *, device: torch.device, dtype: torch.dtype,
                 chunk_length_s: float = 30.0, chunk_stride_s: float = 5.0):
        model, processor = modeldir.load(model_dir)
        self.device, self.dtype = device, dtype
        self.model = prepare(model, device, dtype)
        self.tokenizer = processor.tokenizer
        fe = processor.feature_extractor
        if fe.sampling_rate != TARGET_RATE:
            raise ValueError(f"the model expects {fe.sampling_rate} Hz audio; this server feeds it {TARGET_RATE} Hz")
        self.normalize = bool(fe.do_normalize)
        self.padding_value = float(fe.padding_value)
        # Models whose feature encoder uses group norm were trained on zero-padded batches without a mask.
        self.use_mask = bool(fe.return_attention_mask)
        self.blank_id = self.tokenizer.pad_token_id
        self.samples_per_frame = math.prod(model.config.conv_stride)
        self.seconds_per_frame = ctc.frame_seconds(model.config)
        self.min_samples = _receptive_field(model.config)
        # Chunk edges on frame boundaries, so that chunk frames line up with whole-clip frames.
        align = self.samples_per_frame
        self.chunk_samples = max(align, round(chunk_length_s * TARGET_RATE / align) * align)
        self.stride_samples = round(chunk_stride_s * TARGET_RATE / align) * align

    # Long audio -----------------------------------------------------------------------------------
    def chunks(self, audio: np.ndarray) -> list[Chunk]:
        """Whole-clip normalised chunks; a clip no longer than one chunk is one chunk with no strides."""
        audio = self._normalized(audio)
        n, size, stride = len(audio), self.chunk_samples, self.stride_samples
        if n <= size:
            return [Chunk(audio, 0, 0)]
        step = size - 2 * stride
        out = []
        for start in range(0, n, step):
            end = min(start + size, n)
            last = end >= n
            left = 0 if start == 0 else stride
            piece = audio[start:end]
            if len(piece) > left:
                out.append(Chunk(piece, left, 0 if last else stride))
            if last:
                break
        return out

    def join(self, chunks: list[Chunk], ids: list[torch.Tensor]) -> ctc.Collapsed:
        """Drop each chunk's stride frames, concatenate on the device, CTC-collapse."""
        kept = []
        for chunk, row in zip(chunks, ids):
            # Frame k of a chunk starting at sample s is whole-clip frame s / samples_per_frame + k (s is
            # frame-aligned), so cut by sample position: the frames kept from one chunk end where the next
            # chunk's kept frames start, none lost or doubled.
            start = chunk.left // self.samples_per_frame
            end = (len(chunk.audio) - chunk.right) // self.samples_per_frame if chunk.right else len(row)
            kept.append(row[start:end])
        joined = torch.cat(kept) if kept else torch.empty(0, dtype=torch.long, device=self.device)
        return ctc.collapse(joined[None, :], self.blank_id)[0]

    def text(self, seq: ctc.Collapsed) -> str:
        return ctc.decode_text(self.tokenizer, seq)

    def words(self, seq: ctc.Collapsed) -> list[dict]:
        return ctc.word_offsets(self.tokenizer, seq, self.seconds_per_frame)

    # One forward pass -----------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, clips: list[np.ndarray]) -> list[torch.Tensor]:
        """argmax ids (on the device) of each already normalised clip, cut to its own frame count."""
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
        ids = self.model(values, **kwargs).logits.argmax(dim=-1)
        frames = self.model._get_feat_extract_output_lengths(torch.tensor(lengths)).tolist()
        return [ids[i, : frames[i]] for i in range(len(clips))]

    def _normalized(self, audio: np.ndarray) -> np.ndarray:
        """The feature extractor's zero-mean unit-variance normalisation, over the whole clip."""
        audio = np.asarray(audio, dtype=np.float32)
        if len(audio) < self.min_samples:
            # Shorter than the feature encoder's receptive field gives zero frames: pad with silence.
            audio = np.pad(audio, (0, self.min_samples - len(audio)))
        if not self.normalize:
            return audio
        return normalize(audio)

    def warm_up(self) -> None:
        """One tiny forward pass, so the first request does not pay for lazy kernel setup."""
        self.forward([self._normalized(np.zeros(TARGET_RATE, dtype=np.float32))])


def _receptive_field(config) -> int:
    """Input samples one output frame of the convolutional feature encoder sees (400 for wav2vec2)."""
    field, jump = 1, 1
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        field += (kernel - 1) * jump
        jump *= stride
    return field
