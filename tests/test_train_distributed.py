"""The multi-host path on CPU: two `train` programs, as on two SageMaker hosts, train one model with gloo.

Each program has its own /opt/ml whose resourceconfig.json names hosts algo-1 and algo-2; each launches
torchrun for its node (node rank from current_host). Both hosts are this machine, so MASTER_ADDR stands in
for the DNS name of algo-1 (the one thing that differs from SageMaker). Only rank 0 on the first host
writes model/ and output/data/. Each process indexes the channel and decodes only the batches its sampler
gives it; one file of the channel is cut short, and whichever process meets it, the first host's
metrics.json counts it once.
"""
from __future__ import annotations

import re
import shutil

from conftest import free_port
from train_helpers import is_model_dir, make_opt_ml, metrics, micro_model_dir, model_files, start_train


def test_two_hosts_train_one_model_and_only_the_first_writes(tmp_path, synthetic_data):
    model = micro_model_dir(tmp_path / "model_src")
    train = tmp_path / "train"
    shutil.copytree(synthetic_data / "train", train, ignore=shutil.ignore_patterns("manifest.csv"))
    cut = train / "audio" / "tr00007.wav"
    cut.write_bytes(cut.read_bytes()[: int(cut.stat().st_size * 0.6)])  # readable header, truncated samples
    # 5 steps of 2 processes x 4 clips: one whole epoch of the 36 training clips (and 12 evaluated).
    hp = {"max_steps": "5", "train_batch_size": "4", "logging_steps": "1", "save_steps": "2",
          "test_split": "0.25", "eval_steps": "4"}
    opts = {}
    for host in ("algo-1", "algo-2"):
        opts[host] = make_opt_ml(tmp_path / host, {"train": train, "model": model}, hp,
                                 resourceconfig={"current_host": host, "hosts": ["algo-1", "algo-2"],
                                                 "network_interface_name": "lo"})
    port = str(free_port())
    procs = {h: start_train(o, MASTER_ADDR="127.0.0.1", MASTER_PORT=port) for h, o in opts.items()}
    outs = {}
    try:
        for h, p in procs.items():
            outs[h], _ = p.communicate(timeout=400)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    for h, p in procs.items():
        assert p.returncode == 0, f"{h}:\n{outs[h][-4000:]}"
    assert "[distributed] host algo-1 (node 0 of 2), 1 process(es): -m torch.distributed.run --nnodes=2 " \
           "--node_rank=0" in outs["algo-1"]
    assert "--node_rank=1" in outs["algo-2"]
    assert f"--master_addr=127.0.0.1 --master_port={port}" in outs["algo-2"]

    # One model, written once: by global rank 0 on the first host.
    assert is_model_dir(model_files(opts["algo-1"]))
    assert model_files(opts["algo-2"]) == set()
    assert not (opts["algo-2"] / "output" / "data" / "metrics.json").exists()
    m = metrics(opts["algo-1"])
    assert m["processes"] == 2 and m["steps"] == 5
    # Progress lines come from rank 0 only; with 36 training clips, 2 ranks x 4 per step = 8 clips a step.
    assert re.findall(r"\[metrics\] step=(\d+) ", outs["algo-1"]) == ["1", "2", "3", "4", "5"]
    assert re.findall(r"\[metrics\] ", outs["algo-2"]) == []
    # Each rank reads half of the data: 4 steps cover about twice the epoch one process would (0.44).
    epoch = float(re.search(r"\[metrics\] step=4 epoch=([0-9.]+) ", outs["algo-1"]).group(1))
    assert 0.75 <= epoch <= 0.9, outs["algo-1"][-2000:]
    # The cut file was met in training or evaluation by one process (or two, when accelerate repeats a batch
    # to even out the shares) and is counted once, on the first host.
    assert any("[data] skipped unreadable train/audio/tr00007.wav: " in o for o in outs.values()), \
        {h: o[-1500:] for h, o in outs.items()}
    assert m["skipped_files"]["train"]["count"] == 1 and m["skipped_files"]["train"]["of"] == 48
    assert m["skipped_files"]["train"]["files"][0].startswith("audio/tr00007.wav: ")
    # Each host keeps its own checkpoints (SageMaker syncs each host's /opt/ml/checkpoints).
    for o in opts.values():
        assert (o / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file()
