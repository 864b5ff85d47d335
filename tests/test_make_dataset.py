"""local_test/make_dataset.py: the voices each split is spoken in."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "local_test"))
import make_dataset  # noqa: E402


def voices(split):
    return {json.loads(line)["voice"] for line in (split / "manifest.jsonl").read_text().splitlines()}


def test_train_variants_add_voices_that_no_heldout_set_uses(tmp_path):
    n = len(make_dataset.TRAIN_VARIANTS)
    run = subprocess.run([sys.executable, str(ROOT / "local_test" / "make_dataset.py"), str(tmp_path), "--train",
                          str(6 + n), "--test", "3", "--train-variants", str(n), "--test-voices", "other-variants"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    trained = voices(tmp_path / "train")
    assert trained == {v[0] for v in make_dataset.TRAIN_VOICES[:6] + make_dataset.TRAIN_VARIANTS}
    heldout = {v[0] for s in make_dataset.TEST_VOICE_SETS.values() for v in s}
    assert not trained & heldout and voices(tmp_path / "test") == {v[0] for v in make_dataset.OTHER_VARIANTS}
    too_many = subprocess.run([sys.executable, str(ROOT / "local_test" / "make_dataset.py"), str(tmp_path / "x"),
                               "--train-variants", str(n + 1)], capture_output=True, text=True)
    assert too_many.returncode == 2 and f"--train-variants must be 0-{n}" in too_many.stderr
