"""The CER in metrics.json is the CER of the real server (serve/serve) on the same clips with the same model.

A micro model one step away from its random start emits a different character almost every frame, so a
decode that reads padded frames, or collapses, trims or normalises differently from serving, changes the CER
at once (the evaluation before this test read the padded frames of each batch). Evaluation batches of 4
clips of different lengths exercise the padding (which a group-norm encoder would feel without
common.batching's exact batching); both sides run in float32.
"""
from __future__ import annotations

import json

import pytest

from common import text
from serve_helpers import Server
from train.metrics import error_rates
from train_helpers import FAST, assert_ok, make_opt_ml, metrics, micro_model_dir, run_train


# wav2vec2-large style (layer norms, the mask in training too) and wav2vec2-base style (one group norm over
# time: trained without the mask; evaluation passes it to the model patched by common.batching.make_exact).
@pytest.mark.parametrize("norm", [
    {},
    {"feat_extract_norm": "group", "do_stable_layer_norm": False},
], ids=["layer_norm", "group_norm"])
def test_training_cer_is_the_servers(tmp_path, synthetic_data, norm):
    model = micro_model_dir(tmp_path / "model_src", **norm)
    opt = make_opt_ml(tmp_path / "opt", {"train": synthetic_data / "train", "test": synthetic_data / "test",
                                         "model": model},
                      {**FAST, "max_steps": "1", "eval_batch_size": "4", "precision": "fp32"})
    assert_ok(run_train(opt))
    m = metrics(opt)
    rows = [json.loads(line) for line in (synthetic_data / "test" / "manifest.jsonl").read_text().splitlines()]

    server = Server(opt, tmp_path / "serve.log", SERVE_CPU_BF16="false").wait_ready()
    try:
        hyps = []
        for r in rows:
            reply = server.post((synthetic_data / "test" / r["audio"]).read_bytes(), "audio/wav")
            assert reply.status == 200, reply.body
            hyps.append(reply.json["text"])
    finally:
        server.stop()
    served = error_rates([text.normalize(r["text"]) for r in rows], hyps)
    print(f"metrics.json cer={m['cer']:.6f} wer={m['wer']:.6f}; server cer={served['cer']:.6f} wer={served['wer']:.6f}")
    assert len(set(hyps)) > 1 and served["cer"] > 0.5  # the model emits varied characters: a real check
    assert m["cer"] == pytest.approx(served["cer"], abs=1e-9)
    assert m["wer"] == pytest.approx(served["wer"], abs=1e-9)
