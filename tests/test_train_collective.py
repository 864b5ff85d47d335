"""The NCCL rule, checked without a GPU: every collective of the training program takes tensors on the
training device.

Method. Under NCCL (accelerate's backend on GPUs) the training device is the GPU, a tensor made without
`device=` lands on the CPU, and the process group refuses it ("No backend type associated with device type
cpu"). This test rebuilds that situation on a CPU-only machine, with a real gloo process group:
- the training device stays `cpu` (what `args.device` says), but the code runs inside
  `with torch.device("meta")`, so a tensor made without naming the device lands on `meta`, as it would land
  on the CPU beside a GPU;
- the process group's collectives are wrapped so that they refuse, with NCCL's message, any tensor not on
  the training device, as NCCL refuses CPU tensors.
Code that makes its tensors on `args.device` passes; code that does not fails at the collective, exactly
where NCCL would stop it. (The version of train/stopping.py before this test, `torch.tensor([...])` then
`all_reduce`, fails it.) Both collectives of the program are driven: the per-step stop flags
(StopCallback) and the merge of unreadable-file counts (SkipTracker).
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.distributed as dist

from train.collective import max_across_processes
from train.stopping import StopCallback
from train.trainer import SkipTracker

TRAINING_DEVICE = torch.device("cpu")
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce", "reduce_scatter",
               "reduce_scatter_tensor")


@pytest.fixture
def nccl_like_group(tmp_path, monkeypatch):
    """A one-process gloo group whose collectives refuse tensors that are not on the training device."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    refused = []

    def guard(name, original):
        def collective(tensor, *args, **kwargs):
            tensors = tensor if isinstance(tensor, (list, tuple)) else [tensor]
            for t in tensors:
                if t.device != TRAINING_DEVICE:
                    refused.append(name)
                    raise RuntimeError(f"No backend type associated with device type {t.device.type} "
                                       f"(the training device is {TRAINING_DEVICE})")
            return original(tensor, *args, **kwargs)
        return collective

    for name in COLLECTIVES:
        monkeypatch.setattr(dist, name, guard(name, getattr(dist, name)))
    try:
        yield refused
    finally:
        dist.destroy_process_group()


def test_the_guard_refuses_a_tensor_made_without_the_device(nccl_like_group):
    """The check can fail: the pattern NCCL refuses is refused here."""
    with torch.device("meta"), pytest.raises(RuntimeError, match="No backend type associated with device type meta"):
        dist.all_reduce(torch.tensor([1.0]))
    assert nccl_like_group == ["all_reduce"]


def test_stop_flags_are_reduced_on_the_training_device(nccl_like_group):
    args = types.SimpleNamespace(device=TRAINING_DEVICE)
    stop = StopCallback(max_train_seconds=0.0)
    stop.sigterm = True
    control = types.SimpleNamespace(should_save=False, should_training_stop=False)
    with torch.device("meta"):
        stop.on_step_end(args, state=None, control=control)
    assert stop.reason == "sigterm" and control.should_training_stop and control.should_save
    assert nccl_like_group == []


def test_unreadable_file_counts_are_merged_on_the_training_device(nccl_like_group):
    ix = type("Index", (), {"skipped": [], "total": 4, "names": ["a", "b", "c", "d"], "__len__": lambda self: 4})()
    tracker = SkipTracker({"train": ix}, max_skipped_fraction=0.5, log=lambda _: None)
    tracker.record([("train", 2, "c", "cannot decode")])
    with torch.device("meta"):
        tracker.sync(TRAINING_DEVICE)
        values = max_across_processes(np.array([3, 1], dtype=np.uint8), TRAINING_DEVICE, torch.uint8)
    assert tracker.summary()["train"] == {"count": 1, "of": 4, "files": ["c: cannot decode"]}
    assert values.tolist() == [3, 1]
    assert nccl_like_group == []
