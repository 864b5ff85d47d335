"""The fixed clip set: synthetic speech (local_test/make_dataset.py) concatenated to lengths from 2 to 20 s."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from . import ROOT

RATE = 16_000
GAP_S = 0.25  # silence between concatenated utterances


@dataclass(frozen=True)
class Clip:
    name: str
    audio: np.ndarray  # float32, 16 kHz mono
    text: str

    @property
    def seconds(self) -> float:
        return len(self.audio) / RATE


def synth_pool(workdir: Path, n: int = 24, seed: int = 0, hf: bool = False, test: int = 2) -> Path:
    """Generate (once) n training utterances under workdir; returns the dataset folder."""
    out = Path(workdir)
    if not (out / "train" / "manifest.jsonl").is_file():
        cmd = [sys.executable, str(ROOT / "local_test" / "make_dataset.py"), str(out),
               "--train", str(n), "--test", str(test), "--seed", str(seed)] + (["--hf"] if hf else [])
        subprocess.run(cmd, check=True, capture_output=True)
    return out


def read_split(split_dir: Path) -> list[Clip]:
    rows = [json.loads(line) for line in (split_dir / "manifest.jsonl").open()]
    out = []
    for r in rows:
        audio, rate = sf.read(split_dir / r["audio"], dtype="float32")
        assert rate == RATE, f"{r['audio']} is {rate} Hz"
        out.append(Clip(Path(r["audio"]).stem, audio, r["text"]))
    return out


def lengths_s(n: int, shortest: float = 2.0, longest: float = 20.0) -> list[float]:
    if n == 1:
        return [longest]
    return [round(shortest + i * (longest - shortest) / (n - 1), 2) for i in range(n)]


def concatenated(pool: list[Clip], targets_s: list[float]) -> list[Clip]:
    """One clip per target length: pool utterances in turn with short gaps, cut to the exact length.

    The text is that of the utterances wholly inside the clip (the cut one is dropped from the text)."""
    clips, at = [], 0
    gap = np.zeros(int(GAP_S * RATE), dtype=np.float32)
    for target in targets_s:
        want = int(round(target * RATE))
        parts, words, total = [], [], 0
        while total < want:
            u = pool[at % len(pool)]
            at += 1
            piece = np.concatenate([u.audio, gap])
            if total + len(u.audio) <= want:
                words.append(u.text)
            parts.append(piece)
            total += len(piece)
        audio = np.concatenate(parts)[:want].astype(np.float32)
        clips.append(Clip(f"{target:g}s", audio, " ".join(words)))
    return clips


def clip_set(workdir: Path, n: int = 6, shortest: float = 2.0, longest: float = 20.0) -> list[Clip]:
    pool = read_split(synth_pool(workdir) / "train")
    return concatenated(pool, lengths_s(n, shortest, longest))


def wav_bytes(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def seed_json_bytes(audio: np.ndarray) -> bytes:
    """The seed's request body: the samples as a JSON list of floats (what its client sent)."""
    return json.dumps({"speech_array": audio.astype(np.float64).tolist(), "sampling_rate": RATE}).encode()
