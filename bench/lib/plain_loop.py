"""A plain hand-written CTC training loop (bench only): the reference issue 15 measured train/train against.

What it does by default, and nothing else: the model from a config (random start), AdamW (torch's defaults,
weight decay 0.01) at a constant learning rate with no warm-up and no gradient clipping, fixed length
buckets (clips sorted by length, cut into batches once, the batches shuffled every epoch), zero padding with
the attention mask, SpecAugment mask_time_prob 0.05, no augmentation, float32, the feature encoder's
convolutions as torch runs them. It evaluates every `--eval-every` steps and at the end, each held-out clip
alone (as the server does on a CPU), and those evaluations count in `--seconds`.

The flags after `--seed` each turn one of train/train's choices on, so a difference between the two can be
measured one at a time from this side too. Prints one JSON line: steps, seconds, the evaluation history and
the final CER/WER per held-out set.

usage: python -m bench.lib.plain_loop --train DIR --heldout NAME=DIR [--heldout NAME=DIR ...] --config DIR
           [--steps N] [--seconds S] [--eval-every N] [--save DIR] [ablation flags]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, required=True, help="a manifest.jsonl channel")
    p.add_argument("--heldout", action="append", required=True, metavar="NAME=DIR",
                   help="a held-out manifest.jsonl channel (repeatable)")
    p.add_argument("--config", type=Path, required=True, help="a directory with a Wav2Vec2 config.json")
    p.add_argument("--steps", type=int, default=0, help="stop after this many optimizer steps (0: no limit)")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="stop once this many seconds have passed, evaluations included (0: no limit)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--mask-time-prob", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--save", type=Path, help="write the final model here (common.modeldir.save)")
    # One difference from train/train at a time:
    p.add_argument("--weight-decay", type=float, default=0.01,
                   help="torch AdamW's default; train/train's is 0.0, with biases and norms excluded")
    p.add_argument("--clip", type=float, default=0.0, help="gradient-norm clipping (train/train: 1.0)")
    p.add_argument("--schedule", choices=("constant", "linear", "cosine"), default="constant")
    p.add_argument("--warmup", type=float, default=0.0, help="warm-up steps (>= 1) or fraction of --steps")
    p.add_argument("--no-attention-mask", action="store_true",
                   help="zero padding without a mask, as train/train does for group-norm models")
    p.add_argument("--sampler", choices=("buckets", "length-grouped"), default="buckets",
                   help="length-grouped: transformers' LengthGroupedSampler, as train/train")
    p.add_argument("--matmul-convs", action="store_true", help="common/convs.py's CPU fast path, as train/train")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast, as train/train with precision=bf16")
    p.add_argument("--speed-perturbation", type=float, default=0.0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    import math

    import numpy as np
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from bench.lib import heldout
    from common import audio, modeldir, text
    from train.data import speed_perturb

    started = time.monotonic()
    torch.manual_seed(args.seed)
    rnd = random.Random(args.seed)
    train = heldout.read_manifest(args.train)
    sets = {name: heldout.read_manifest(Path(d)) for name, d in (h.split("=", 1) for h in args.heldout)}
    vocab = text.build_vocab([t for _, t in train])
    processor = modeldir.make_processor(vocab, attention_mask=not args.no_attention_mask)
    tok = processor.tokenizer
    inputs = [audio.normalize(x) for x, _ in train]
    labels = [tok(t).input_ids for _, t in train]
    config = Wav2Vec2Config.from_pretrained(args.config, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                            ctc_loss_reduction="mean", ctc_zero_infinity=True,
                                            mask_time_prob=args.mask_time_prob)
    model = Wav2Vec2ForCTC(config)
    if args.matmul_convs:
        from common.convs import convs_as_matmuls

        convs_as_matmuls(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    total = args.steps or 10**9
    warm = args.warmup if args.warmup >= 1 else args.warmup * total

    def lr_factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        rest = (step - warm) / max(1.0, total - warm)
        return {"constant": 1.0, "linear": 1.0 - rest, "cosine": 0.5 * (1 + math.cos(math.pi * rest))}[args.schedule]

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)

    def batches():
        if args.sampler == "buckets":
            order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
            fixed = [order[i: i + args.batch] for i in range(0, len(order), args.batch)]
            while True:
                rnd.shuffle(fixed)
                yield from fixed
        from transformers.trainer_pt_utils import LengthGroupedSampler

        sampler = LengthGroupedSampler(args.batch, lengths=[len(x) for x in inputs])
        while True:
            order = list(sampler)
            yield from (order[i: i + args.batch] for i in range(0, len(order), args.batch))

    def collate(idx):
        xs = [inputs[i] for i in idx]
        if args.speed_perturbation > 0:
            xs = [speed_perturb(x, rnd.uniform(1 - args.speed_perturbation, 1 + args.speed_perturbation)) for x in xs]
        width = max(len(x) for x in xs)
        values = np.zeros((len(xs), width), np.float32)
        mask = np.zeros((len(xs), width), np.int64)
        for row, x in enumerate(xs):
            values[row, : len(x)], mask[row, : len(x)] = x, 1
        lab = np.full((len(xs), max(len(labels[i]) for i in idx)), -100, np.int64)
        for row, i in enumerate(idx):
            lab[row, : len(labels[i])] = labels[i]
        batch = {"input_values": torch.from_numpy(values), "labels": torch.from_numpy(lab)}
        if not args.no_attention_mask:
            batch["attention_mask"] = torch.from_numpy(mask)
        return batch

    history, step, eval_seconds = [], 0, 0.0
    loop_started = time.monotonic()

    def evaluate():
        nonlocal eval_seconds
        t0 = time.monotonic()
        row = {"step": step, "seconds": round(t0 - loop_started, 1)}
        for name, clips in sets.items():
            row[name] = heldout.score_model(model, tok, clips, attention_mask=not args.no_attention_mask)
        eval_seconds += time.monotonic() - t0
        history.append(row)
        print(json.dumps({"eval": row}), flush=True)

    model.train()
    for idx in batches():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(**collate(idx)).loss
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        out_of_time = args.seconds and time.monotonic() - loop_started >= args.seconds
        if step >= total or out_of_time:
            break
        if step % args.eval_every == 0:
            evaluate()
    evaluate()
    seconds = time.monotonic() - loop_started
    if args.save:
        modeldir.save(args.save, model, processor)
    print(json.dumps({"steps": step, "seconds": round(seconds, 1), "eval_seconds": round(eval_seconds, 1),
                      "seconds_per_step": round((seconds - eval_seconds) / max(1, step), 4),
                      "setup_seconds": round(loop_started - started, 1), "torch_threads": torch.get_num_threads(),
                      "final": {k: v for k, v in history[-1].items() if k not in ("step", "seconds")},
                      "history": history, "args": {k: str(v) for k, v in vars(args).items()}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
