#!/usr/bin/env python3
"""Generate a small synthetic English speech set with espeak-ng: random sentences, known transcripts.

Writes, under OUT:
  train/   audio/*.wav + manifest.jsonl (+ manifest.csv)   utterances from the training voices
  test/    same layout                                       utterances from voices NOT used in training
  hf/train, hf/test  the same splits as Hugging Face datasets saved with save_to_disk (--hf)

Clips are 16 kHz mono 16-bit WAV. Each voice is an espeak-ng voice with a speed and pitch, so held-out
voices measure generalisation, not memorisation. Deterministic for a given --seed.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common.audio import to_model_input  # noqa: E402

# (espeak-ng voice, words per minute, pitch 0-99)
TRAIN_VOICES = [
    ("en-us", 160, 50), ("en-gb", 150, 40), ("en-gb-scotland", 170, 55),
    ("en-gb-x-rp", 140, 45), ("en-029", 165, 60), ("en-us-nyc", 155, 35),
    ("en-us+f2", 150, 70), ("en-gb+m3", 145, 30),
]
TEST_VOICES = [("en-gb-x-gbclan", 155, 50), ("en-gb-x-gbcwmd", 150, 45), ("en-us+f4", 160, 65)]
# Variants no training voice and no other held-out set uses, on training accents (issue 28: voices that no
# tuning run saw): two female (espeak-ng f3: 140-240 Hz, formants x1.05-1.35, echo; f5), one male (m6).
# Extra training voices (--train-variants N: the first N): espeak-ng's variants, which TRAIN_VOICES lacks (its
# first six are the default male voice), on training accents; none is a variant any held-out set uses. Four
# female ones first, then two male and two female more.
TRAIN_VARIANTS = [("en-us+f1", 150, 55), ("en-gb+Annie", 145, 50), ("en-029+Linda", 160, 50),
                  ("en-us-nyc+Belinda", 150, 55), ("en-gb+m1", 150, 40), ("en-gb-scotland+steph", 155, 55),
                  ("en-us+m7", 160, 45), ("en-gb-x-rp+aunty", 150, 55)]
OTHER_VARIANTS = [("en-gb-x-rp+f3", 150, 60), ("en-us-nyc+f5", 160, 55), ("en-gb-scotland+m6", 150, 45)]
# Named held-out voice sets for --test-voices; each is disjoint from the first 6 training voices.
TEST_VOICE_SETS = {
    "default": TEST_VOICES,  # other accents (Lancaster, West Midlands) and a female US variant
    "unused-train": TRAIN_VOICES[6:],  # the training list's two voices that 6 training voices leave out
    "other-variants": OTHER_VARIANTS,
}

WORDS = """the a one two three four five six seven eight nine ten red green blue black white small big
old new good bad cat dog bird fish horse cow house tree road river hill city car boat train plane
man woman child friend teacher doctor farmer king queen bread milk water tea coffee apple orange
runs walks sees finds takes gives makes likes wants needs opens closes reads writes sings plays
quickly slowly today tomorrow yesterday here there near far under over with without and but
morning evening night day week year book door window table chair garden street market school""".split()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))


def synthesize(text: str, voice: tuple[str, int, int]) -> np.ndarray:
    name, speed, pitch = voice
    wav = subprocess.run(
        ["espeak-ng", "-v", name, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True, capture_output=True,
    ).stdout
    data, rate = sf.read(io.BytesIO(wav), dtype="float32")  # espeak-ng writes 22.05 kHz
    return to_model_input(data, rate)


def write_split(out: Path, items: list[tuple[str, tuple[str, int, int]]], prefix: str) -> list[dict]:
    (out / "audio").mkdir(parents=True, exist_ok=True)

    def one(i_item):
        i, (text, voice) = i_item
        rel = f"audio/{prefix}{i:05d}.wav"
        sf.write(out / rel, synthesize(text, voice), 16_000, subtype="PCM_16")
        return {"audio": rel, "text": text, "voice": voice[0]}

    with ThreadPoolExecutor(max_workers=4) as pool:
        rows = list(pool.map(one, enumerate(items)))
    with open(out / "manifest.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["audio", "text", "voice"])
        w.writeheader()
        w.writerows(rows)
    return rows


def save_hf(split_dir: Path, rows: list[dict], dest: Path) -> None:
    """The seed's format: a save_to_disk dataset with `audio` and `text` columns."""
    from datasets import Audio, Dataset

    ds = Dataset.from_dict({
        "audio": [str(split_dir / r["audio"]) for r in rows],
        "text": [r["text"] for r in rows],
    }).cast_column("audio", Audio(decode=False))
    # Embed the bytes so the saved dataset does not point back at these files.
    ds = ds.map(lambda b: {"audio": {"bytes": Path(b["audio"]["path"]).read_bytes(),
                                     "path": Path(b["audio"]["path"]).name}})
    ds.save_to_disk(str(dest))


def parse_voices(spec: str) -> list[tuple[str, int, int]]:
    """A named set (TEST_VOICE_SETS) or comma-separated `voice:wpm:pitch` items (wpm 80-450, pitch 0-99)."""
    if spec in TEST_VOICE_SETS:
        return list(TEST_VOICE_SETS[spec])
    voices = []
    for item in spec.split(","):
        parts = item.strip().split(":")
        if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[2].isdigit() \
                or not 80 <= int(parts[1]) <= 450 or not 0 <= int(parts[2]) <= 99:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected one of {sorted(TEST_VOICE_SETS)} or comma-separated voice:wpm:pitch items "
                f"(e.g. en-us+f2:150:70; wpm 80-450, pitch 0-99)")
        voices.append((parts[0], int(parts[1]), int(parts[2])))
    return voices


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=600, help="training utterances (default 600)")
    p.add_argument("--test", type=int, default=60, help="held-out utterances (default 60)")
    p.add_argument("--train-voices", type=int, default=6, help="how many training voices (max %d)" % len(TRAIN_VOICES))
    p.add_argument("--train-variants", type=int, default=0,
                   help="also train on the first N of these espeak-ng variants (max %d): %s" % (
                       len(TRAIN_VARIANTS), ", ".join(v[0] for v in TRAIN_VARIANTS)))
    p.add_argument("--test-voices", type=parse_voices, default="default", metavar="SET|V:WPM:PITCH,...",
                   help="held-out voices: a named set (%s; default: default) or voice:wpm:pitch items. The "
                        "training set does not depend on it (same --seed, same training data)"
                        % ", ".join(TEST_VOICE_SETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-seed", type=int, default=None,
                   help="draw the held-out sentences from their own generator with this seed (held-out sets with "
                        "different --test-seed values get different sentences; the training split is unchanged); "
                        "default: the --seed generator continues after the training sentences")
    p.add_argument("--hf", action="store_true", help="also write save_to_disk datasets under OUT/hf")
    args = p.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        p.error("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng; or run ./setup.sh)")
    rng = random.Random(args.seed)
    if not 0 <= args.train_variants <= len(TRAIN_VARIANTS):
        p.error(f"--train-variants must be 0-{len(TRAIN_VARIANTS)}")
    voices = TRAIN_VOICES[: args.train_voices] + TRAIN_VARIANTS[: args.train_variants]
    shared = sorted({v[0] for v in voices} & {v[0] for v in args.test_voices})
    if shared:
        p.error(f"held-out voices {shared} are also training voices: choose other --test-voices")
    train = [(sentence(rng), voices[i % len(voices)]) for i in range(args.train)]
    test_rng = rng if args.test_seed is None else random.Random(f"test-{args.test_seed}")
    seen = {text for text, _ in train}
    test = []
    while len(test) < args.test:  # a held-out sentence is never a training one
        text = sentence(test_rng)
        if text not in seen:
            test.append((text, args.test_voices[len(test) % len(args.test_voices)]))
    rows_train = write_split(args.out / "train", train, "tr")
    rows_test = write_split(args.out / "test", test, "te")
    if args.hf:
        save_hf(args.out / "train", rows_train, args.out / "hf" / "train")
        save_hf(args.out / "test", rows_test, args.out / "hf" / "test")
    seconds = sum(sf.info(args.out / "train" / r["audio"]).duration for r in rows_train)
    print(f"wrote {len(rows_train)} train ({seconds / 60:.1f} min, {len(voices)} voices) and "
          f"{len(rows_test)} held-out utterances ({len(args.test_voices)} other voices) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
