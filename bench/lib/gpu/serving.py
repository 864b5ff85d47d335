"""Stages 1 and 2 of the GPU check: the serving program through HTTP, as SageMaker drives it.

Stage 1 (precision): each model served in fp32, fp16 and bf16 (SERVE_GPU_DTYPE) side by side; every
held-out clip posted once as audio/wav; transcripts compared with fp32 (equal clips, CER between them, CER
against the true text) and with transformers' own decoding of the same model in the same dtype on the same
device, argmax taken on the host and `processor.batch_decode` (equal = the server's argmax and CTC collapse on
the device are right).
Stage 2 (throughput): the base-sized model per (dtype, SERVE_MAX_BATCH_SIZE) cell, clips of 2 to 20 s at
concurrency 1 and 16 for a fixed window each: RTFx, p50/p99 latency, mean batch (X-Batch-Size), the server's
GPU memory, its worker processes per GPU, and the ratio to the bare forward pass (transformers, same dtype,
same batch, this process, servers stopped).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

from .. import client, models, servers
from . import device as dev

DTYPES = ("fp32", "fp16", "bf16")


def _load(model_dir: Path, dtype: str, on_gpu: bool):
    """(processor, model on the device in dtype, torch dtype, device) with transformers' progress bars off.
    On a CPU, fp16 runs in fp32, as the server runs it there."""
    import torch
    import transformers
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    transformers.logging.disable_progress_bar()
    dt = getattr(torch, TORCH_DTYPE[dtype if on_gpu or dtype == "bf16" else "fp32"])
    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    processor = Wav2Vec2Processor.from_pretrained(model_dir)
    model = Wav2Vec2ForCTC.from_pretrained(model_dir).to(device=device, dtype=dt).eval()
    return processor, model, dt, device
TORCH_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def cer(refs: list[str], hyps: list[str]) -> float | None:
    """Character error rate (jiwer) over the pairs whose reference is not empty; None if none is."""
    import jiwer

    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    if not pairs:
        return None
    return float(jiwer.cer([r for r, _ in pairs], [h for _, h in pairs]))


def reference_texts(model_dir: Path, clips, dtype: str, on_gpu: bool) -> dict[str, str]:
    """transformers' path for the same model: processor -> model in `dtype` on the device -> logits to the
    host -> argmax -> processor.batch_decode; batch 1 (as the server at concurrency 1). On a CPU in fp32 except
    bf16, as the server runs there."""
    import torch

    processor, model, dt, device = _load(model_dir, dtype, on_gpu)
    out = {}
    with torch.inference_mode():
        for name, audio, _ in clips:
            inputs = processor(audio, sampling_rate=16_000, return_tensors="pt")
            kwargs = {}
            if "attention_mask" in inputs and processor.feature_extractor.return_attention_mask:
                kwargs["attention_mask"] = inputs["attention_mask"].to(device)
            logits = model(inputs.input_values.to(device=device, dtype=dt), **kwargs).logits
            text = processor.batch_decode(logits.float().cpu().argmax(dim=-1))[0]
            # batch_decode keeps <s>, </s> and [UNK], which the server drops (issue 11).
            out[name] = models.without_special_tokens(text, processor.tokenizer, logits.shape[-1])
    del model
    if on_gpu:
        torch.cuda.empty_cache()
    return out


def transcripts(model_name: str, model_dir: Path, clips, work: Path, on_gpu: bool, log) -> dict:
    """Stage 1 for one model: the three dtypes served side by side, each clip posted once."""
    from .assets import wav_bytes

    texts, startup, errors = {}, {}, {}
    with contextlib.ExitStack() as stack:
        running = {dt: stack.enter_context(servers.start_ours(model_dir, work / model_name, dtype=dt))
                   for dt in DTYPES}
        for dt, srv in running.items():
            startup[dt] = round(srv.wait_ready(timeout_s=300), 2)
        reqs = [client.Request(name, wav_bytes(audio), "audio/wav", len(audio) / 16_000) for name, audio, _ in clips]
        for dt, srv in running.items():
            r = client.run(srv.port, reqs, 1)
            texts[dt], errors[dt] = r.texts, r.errors
            if r.errors:
                log(f"  {model_name} {dt}: {len(r.errors)} errors, first: {r.errors[0]}")
                log("    server log: " + srv.log()[-1500:].replace("\n", "\n    "))
    names = [n for n, _, _ in clips]
    truth = {n: t for n, _, t in clips}
    out = {"clips": len(clips), "startup_s": startup, "errors": {dt: len(e) for dt, e in errors.items()}, "dtypes": {}}
    for dt in DTYPES:
        ref = reference_texts(model_dir, clips, dt, on_gpu)
        hyp = [texts[dt].get(n, "") for n in names]
        out["dtypes"][dt] = {
            "equal_to_fp32": sum(texts[dt].get(n) == texts["fp32"].get(n) for n in names),
            "cer_vs_fp32": cer([texts["fp32"].get(n, "") for n in names], hyp),
            "cer_vs_truth": cer([truth[n] for n in names], hyp),
            "equal_to_transformers_decode": sum(texts[dt].get(n) == ref[n] for n in names),
        }
        if not on_gpu and dt == "fp16":
            out["dtypes"][dt]["note"] = "on a CPU the server runs fp16 requests in fp32 (SERVE_GPU_DTYPE is for GPUs)"
    out["examples"] = {dt: texts[dt].get(names[0], "") for dt in DTYPES}
    out["truth_example"] = truth[names[0]]
    return out




def throughput_cell(model_dir: Path, clips, dtype: str, batch: int, concurrency: list[int], window_s: float,
                    work: Path, on_gpu: bool, visible_gpus: int, log) -> dict:
    """One server (dtype, SERVE_MAX_BATCH_SIZE=batch), warmed, then each concurrency for window_s."""
    from .assets import wav_bytes

    reqs = [client.Request(c.name, wav_bytes(c.audio), "audio/wav", c.seconds) for c in clips]
    cell: dict = {"dtype": dtype, "max_batch": batch, "by_concurrency": {}}
    with servers.start_ours(model_dir, work / f"tp_{dtype}_b{batch}", dtype=dtype,
                            SERVE_MAX_BATCH_SIZE=str(batch)) as srv:
        cell["startup_s"] = round(srv.wait_ready(timeout_s=300), 2)
        with dev.MemorySampler(srv.proc.pid, gpu=on_gpu) as mem:
            for r in reqs:  # warm-up: every clip once, then a short burst at the highest concurrency
                status, body, _ = client.send(srv.port, r)
                if status != 200:
                    raise RuntimeError(f"warm-up got HTTP {status}: {body[:300]!r}\n{srv.log()[-2000:]}")
            client.run(srv.port, reqs, max(concurrency), seconds=min(2.0, window_s))
            for c in concurrency:
                r = client.run(srv.port, reqs, c, seconds=window_s)
                cell["by_concurrency"][str(c)] = {
                    "requests": len(r.latencies_s), "audio_s": round(r.audio_s, 1), "wall_s": round(r.wall_s, 3),
                    "rtfx": r.rtfx, "p50_ms": r.percentile_ms(50), "p99_ms": r.percentile_ms(99),
                    "mean_batch": statistics.mean(r.batch_sizes) if r.batch_sizes else None,
                    "errors": len(r.errors), "first_error": r.errors[0] if r.errors else None}
                log(f"  {dtype} batch<={batch:<3d} c={c:<3d} RTFx {r.rtfx:8.1f}  p50 {r.percentile_ms(50):7.1f} ms  "
                    f"p99 {r.percentile_ms(99):7.1f} ms  requests {len(r.latencies_s)}  errors {len(r.errors)}")
            mem.sample()
        cell["memory"] = mem.figures()
        # One worker per visible GPU, each on its own GPU: the server's processes that use a GPU. The
        # gunicorn master (the process serve/serve became) must not: CUDA starts only in the workers.
        gpu_of, how = mem.gpus_of_processes()
        master = srv.proc.pid
        cell["workers_on_gpus"] = {
            "processes_on_gpus": len([p for p in gpu_of if p != master]),
            "distinct_gpus": len({g for p, g in gpu_of.items() if p != master}),
            "master_uses_gpu": master in gpu_of, "visible_gpus": visible_gpus, "read_from": how,
        } if on_gpu else None
    return cell


def bare_rtfx(model_dir: Path, clips, dtype: str, batch: int, on_gpu: bool, min_s: float = 2.0) -> dict:
    """RTFx of the model call alone (transformers, inference mode, logits + argmax, inputs already on the
    device) over batches of `batch` clips of similar length (each clip of the set `batch` times, sorted),
    padded by the processor, as a batching server groups them. Audio seconds count the real clip lengths."""
    import torch

    processor, model, dt, device = _load(model_dir, dtype, on_gpu)
    # Every clip `batch` times, in length order: len(clips) batches of similar lengths covering the whole set.
    pool = sorted((c for _ in range(batch) for c in clips), key=lambda c: c.seconds)
    batches = []
    for i in range(0, len(pool), batch):
        group = pool[i:i + batch]
        inputs = processor([c.audio for c in group], sampling_rate=16_000, padding=True, return_tensors="pt")
        kwargs = {}
        if "attention_mask" in inputs and processor.feature_extractor.return_attention_mask:
            kwargs["attention_mask"] = inputs["attention_mask"].to(device)
        batches.append((inputs.input_values.to(device=device, dtype=dt), kwargs, sum(c.seconds for c in group)))

    def sync():
        if on_gpu:
            torch.cuda.synchronize()

    with torch.inference_mode():
        for values, kwargs, _ in batches:  # warm-up
            model(values, **kwargs).logits.argmax(-1)
        sync()
        audio, passes, started = 0.0, 0, time.perf_counter()
        while passes == 0 or time.perf_counter() - started < min_s:
            for values, kwargs, seconds in batches:
                model(values, **kwargs).logits.argmax(-1)
                audio += seconds
                passes += 1
            sync()
        elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None
    del model, batches
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return {"batch": batch, "rtfx": audio / elapsed, "passes": passes, "seconds": round(elapsed, 3),
            "peak_allocated_mib": round(peak, 1) if peak else None}
