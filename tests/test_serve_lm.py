"""Serving with a language model: beam search + KenLM by default, greedy per request, the beam options
through every channel, their 400s, word timestamps, segments of long audio, and the decoding processes
(a killed one, a deadline, SIGTERM, no torch in them).

The model directory is a tiny checkpoint (tests/checkpoints.py, the HF fine-tuning recipe's vocabulary) with
an LM added as the ecosystem adds one (lmplz on tests/test_lm.py's sentences, pyctcdecode's
build_ctcdecoder, Wav2Vec2ProcessorWithLM.save_pretrained). Its weights are random, so in-process tests
replace the forward pass with `SpelledModel`, whose logits are read from the audio itself: everything after
the forward pass (chunk joins, the decoder stage, the process pool, options, HTTP) runs as served, on
logits the test chooses. The real program (serve/serve) is then run on the same directory.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch
from websockets.exceptions import ConnectionClosed

import checkpoints
from common import batching, lm, modeldir
from serve import contract, decoding, model as serve_model, options
from serve.app import create_app
from serve.settings import Settings
from serve_helpers import Server, encode, make_opt_ml
from test_lm import SENTENCES, spell

HEADER = options.HEADER
FARMER = "the farmer sees a big cat today"  # heard with c -> k and b -> p: greedy writes "a pig kat"
RAFI = "the dog sees rafi near the river"  # heard with f -> v: "ravi", unless "rafi" is a hotword


def add_lm(model_dir: Path, work: Path) -> Path:
    """alphabet.json + language_model/ (a 3-gram ARPA over SENTENCES) beside a model, as published."""
    from pyctcdecode import build_ctcdecoder
    from transformers import Wav2Vec2Processor, Wav2Vec2ProcessorWithLM

    from train.lm import estimate_arpa

    processor = Wav2Vec2Processor.from_pretrained(str(model_dir))
    vocab = processor.tokenizer.get_vocab()
    decoder = build_ctcdecoder(sorted(vocab, key=vocab.get), kenlm_model_path=str(estimate_arpa(SENTENCES, 3, work)))
    Wav2Vec2ProcessorWithLM(feature_extractor=processor.feature_extractor, tokenizer=processor.tokenizer,
                            decoder=decoder).save_pretrained(str(model_dir))
    return model_dir


@pytest.fixture(scope="module")
def lm_model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve_lm")
    return add_lm(checkpoints.build("xls-r", root / "model"), root / "lm_work")


@pytest.fixture(scope="module")
def bare_model_dir(lm_model_dir, tmp_path_factory) -> Path:
    """The same model without an LM (and without alphabet.json)."""
    out = tmp_path_factory.mktemp("serve_no_lm") / "model"
    shutil.copytree(lm_model_dir, out, ignore=shutil.ignore_patterns(lm.LM_DIR, lm.ALPHABET_FILE))
    return out


@pytest.fixture(scope="module")
def reference(lm_model_dir) -> lm.BeamDecoder:
    decoder = lm.load(lm_model_dir)
    yield decoder
    decoder.close()


# In-process: the served decoder stage on chosen logits -----------------------------------------------
class SpelledModel(serve_model.ServingModel):
    """The forward pass replaced: frame k's logits are 10 x the first vocabulary-size samples of its hop
    (samples 320k...), so a clip made by `audio_for` has exactly the logits given to it, in whole clips
    and in chunks alike (chunks start on frame boundaries)."""

    def _logits(self, clips):
        width, hop = self.model.lm_head.out_features, self.samples_per_frame
        frames = [batching.output_frames(self.config, len(c)) for c in clips]
        out = torch.zeros(len(clips), max(frames), width)
        for i, (c, n) in enumerate(zip(clips, frames)):
            rows = np.stack([c[k * hop: k * hop + width] for k in range(n)]) * 10
            out[i, :n] = torch.from_numpy(rows)
        return out, frames


def audio_for(logits: np.ndarray) -> np.ndarray:
    """Samples whose `SpelledModel` logits are `logits` (frames x vocabulary)."""
    frames, width = logits.shape
    audio = np.zeros(320 * frames + 80, dtype=np.float32)  # 400-sample receptive field, 320-sample hop
    for k in range(frames):
        audio[320 * k: 320 * k + width] = logits[k] / 10
    return audio


def spelled_model(model_dir: Path, processes: int = 1, **kw) -> SpelledModel:
    checkpoint = modeldir.load_checkpoint(model_dir)
    beam, why = serve_model.beam_search(checkpoint, processes)
    # Stream windows through `_logits` too: the feature cache (serve/streamfeatures.py) would run the real encoder.
    model = SpelledModel(checkpoint, device=torch.device("cpu"), dtype=torch.float32, beam=beam,
                         beam_unavailable=why, stream_feature_cache="off", **kw)
    model.normalize = False  # the samples are the logits
    return model.start()


@pytest.fixture(scope="module")
def served(lm_model_dir):
    model = spelled_model(lm_model_dir, chunk_length_s=3.0, chunk_stride_s=0.5)
    yield model
    model.close()


@pytest.fixture(scope="module")
def served_bare(bare_model_dir):
    model = spelled_model(bare_model_dir)
    yield model
    model.close()


def client_for(model, **env):
    return create_app(model, Settings.from_env(env)).test_client()


def heard(model: SpelledModel, sentence: str, labels, confusions=None) -> tuple[np.ndarray, np.ndarray]:
    """(audio, the logits the model reads from it) for a sentence spelled with confusions."""
    x = spell(sentence, labels, confusions)
    audio = audio_for(np.concatenate([x, np.repeat(x[1:2], 5, axis=0)]))  # 5 blank frames at the end
    return audio, model._logits([audio])[0][0].numpy()


def post(client, audio: np.ndarray, *, query: str = "", header: str = "", fields: dict | None = None):
    doc = {"speech_array": audio.tolist(), "sampling_rate": 16000, **(fields or {})}
    reply = client.post("/invocations" + query, data=json.dumps(doc), content_type="application/json",
                        headers={HEADER: header} if header else {})
    return reply.status_code, reply.get_json()


def test_beam_with_lm_by_default_greedy_on_request_equal_to_common_lm(served, reference):
    """The LM corrects what greedy misspells; the served transcript is common.lm's (= pyctcdecode's and
    Wav2Vec2ProcessorWithLM's, tests/test_lm.py) for the same logits, also with a request's options."""
    from transformers import Wav2Vec2ProcessorWithLM

    assert served.info.default_decoder == "beam" and served.info.decoders == ("greedy", "beam")
    audio, got = heard(served, FARMER, reference.labels, {"c": "k", "b": "p"})
    np.testing.assert_allclose(got[:2 * len(FARMER)], spell(FARMER, reference.labels, {"c": "k", "b": "p"}),
                               atol=1e-5)  # the fake forward pass gives back the logits it was given
    client = client_for(served)
    assert post(client, audio) == (200, {"text": FARMER, "audio_seconds": round(len(audio) / 16000, 3)})
    assert post(client, audio, query="?decoder=greedy")[1]["text"] == "the farmer sees a pig kat today"
    assert post(client, audio, query="?decoder=beam")[1]["text"] == reference.decode(got).text == FARMER
    processor = Wav2Vec2ProcessorWithLM.from_pretrained(str(served.path))
    for opts in ({"beam_width": 2, "alpha": 0.0, "beta": 0.0}, {"beam_width": 64, "alpha": 2.5, "beta": -1.0},
                 {"hotwords": ["pig"], "hotword_weight": 30.0}):
        status, body = post(client, audio, fields=opts)
        want = reference.decode(got, lm.parse_options(opts))
        assert status == 200 and body["text"] == want.text, (opts, body)
        alpha, beta = opts.get("alpha", reference.alpha), opts.get("beta", reference.beta)
        assert body["text"] == processor.decode(got, beam_width=opts.get("beam_width", lm.DEFAULT_BEAM_WIDTH),
                                                alpha=alpha, beta=beta, hotwords=opts.get("hotwords"),
                                                hotword_weight=opts.get("hotword_weight", 10.0)).text
    assert post(client, audio, fields={"alpha": 0.0, "beta": 0.0, "beam_width": 2})[1]["text"] != FARMER


@pytest.mark.parametrize("channel", ["json", "query", "header"])
def test_each_option_through_each_channel(served, reference, channel):
    audio, x = heard(served, RAFI, reference.labels, {"f": "v"})
    client = client_for(served)
    cases = [
        ({}, "the dog sees ravi near the river"),
        ({"hotwords": ["rafi"]}, RAFI),
        ({"hotwords": ["rafi"], "hotword_weight": 0.0}, "the dog sees ravi near the river"),
        ({"hotwords": ["sees rafi", "dog"], "beam_width": 4}, None),
        ({"alpha": 0.2, "beta": 2.5}, None),
        ({"decoder": "greedy"}, "the dog sees ravi near the river"),
        ({"decoder": "beam", "beam_width": 1}, None),
    ]
    for opts, want in cases:
        if channel == "json":
            status, body = post(client, audio, fields=opts)
        else:
            text = {k: ",".join(v) if isinstance(v, list) else str(v) for k, v in opts.items()}
            if channel == "query":
                status, body = post(client, audio, query="?" + urllib.parse.urlencode(text) if text else "")
            else:  # a phrase's space as is, or percent-encoded
                status, body = post(client, audio, header=";".join(f"{k}={v.replace(' ', '%20') if 'sees' in v else v}"
                                                                     for k, v in text.items()))
        if want is None:
            beam = {k: v for k, v in opts.items() if k != "decoder"}
            want = reference.decode(x, lm.parse_options(beam)).text
        assert (status, body["text"]) == (200, want), (channel, opts, body)


@pytest.mark.parametrize("where,value,says", [
    ("query", "decoder=wide", "option decoder='wide': use one of greedy, beam"),
    ("header", "decoder=viterbi", "option decoder='viterbi': use one of greedy, beam"),
    ("query", "beam_width=0", "beam_width must be a whole number from 1 to 256, got 0"),
    ("header", "beam_width=257", "beam_width must be a whole number from 1 to 256, got 257"),
    ("json", {"beam_width": 1000}, "beam_width must be a whole number from 1 to 256, got 1000"),
    ("json", {"beam_width": 2.5}, '"beam_width" must be an integer'),
    ("header", "hotwords=" + ",".join(["cat"] * 101), "too many hotwords: 101, at most 100"),
    ("json", {"hotwords": ["cat"] * 101}, "too many hotwords: 101, at most 100"),
    ("json", {"hotwords": ["x" * 51]}, "hotwords[0] is 51 characters long, at most 50"),
    ("json", {"hotwords": "cat"}, None),  # a string is one comma-separated value: fine
    ("json", {"hotwords": [3]}, '"hotwords" must be a list of strings'),
    ("query", "alpha=11", "alpha must be a number from 0 to 10"),
    ("header", "hotword_weight=-1", "hotword_weight must be a number from 0 to 100"),
    ("json", {"hotwords": ["Rafi"]}, "hotwords[0] 'Rafi' has characters the model cannot write: 'R' "
                                     "(the model writes lower-case)"),
    ("json", {"hotwords": ["<s>"]}, "hotwords[0] '<s>' contains '<s>', a special token of the model's vocabulary"),
    ("header", "hotwords=rafi,the </s>", "hotwords[1] 'the </s>' contains '</s>', a special token"),
    ("json", {"hotwords": ["rafi\u0301"]}, "hotwords[0] 'rafí' has characters the model cannot write: 'í'"),
    ("query", "decoder=greedy&hotwords=rafi", "hotwords applies only to beam search, and decoder=greedy was "
                                              "asked for: leave them out"),
])
def test_bad_beam_options_are_a_400_naming_them(served, reference, where, value, says):
    audio, _ = heard(served, "the cat", reference.labels)
    client = client_for(served)
    status, body = post(client, audio, **{"query": "?" + value} if where == "query" else
                        {"header": value} if where == "header" else {"fields": value})
    if says is None:
        assert status == 200, body
    else:
        assert status == 400 and says in body["error"], body


def test_a_model_without_lm_decodes_greedily_and_refuses_lm_options(served_bare, reference):
    assert served_bare.info.default_decoder == "greedy" and "beam" in served_bare.info.decoders
    audio, _ = heard(served_bare, RAFI, reference.labels, {"f": "v"})
    client = client_for(served_bare)
    assert post(client, audio)[1]["text"] == "the dog sees ravi near the river"
    for fields, says in (({"alpha": 1.0}, "alpha applies only to beam search, and this model decodes greedily "
                                          "by default (it has no language model): add decoder=beam"),
                         ({"decoder": "beam", "beta": 1.0}, "alpha and beta weight a language model, and this "
                                                            "model has none"),
                         ({"hotwords": ["rafi"]}, "add decoder=beam")):
        status, body = post(client, audio, fields=fields)
        assert status == 400 and says in body["error"], body
    # Beam search without an LM on request: hotwords still work.
    assert post(client, audio, fields={"decoder": "beam", "hotwords": ["rafi"]})[1]["text"] == RAFI


def test_word_timestamps_with_beam_search(served, reference):
    audio, x = heard(served, "seven cats sleep near the door", reference.labels)
    client = client_for(served)
    beam = post(client, audio, query="?timestamps=true")[1]
    greedy = post(client, audio, query="?timestamps=true&decoder=greedy")[1]
    assert beam["words"] == reference.decode(x, seconds_per_frame=0.02).words
    assert beam["text"] == greedy["text"] and beam["words"] == greedy["words"]  # clear logits: same words, times
    assert [w["word"] for w in beam["words"]] == "seven cats sleep near the door".split()


def test_long_audio_joins_chunks_before_beam_search_and_streams_segments(served, reference):
    """A clip of several chunks (3 s, 0.5 s strides): transcribe decodes the joined frames once; transcribe_iter
    gives one segment per chunk whose words join to the same transcript on these logits."""
    sentence = " ".join(SENTENCES[:5])
    audio, x = heard(served, sentence, reference.labels, {"c": "k"})
    assert len(served.chunks(audio)) >= 3
    deadline = time.monotonic() + 60
    clip = contract.Clip(audio, options.Options(timestamps=True))
    whole = served.transcribe([clip], deadline=deadline)[0]
    want = reference.decode(x, seconds_per_frame=0.02)
    assert whole.text == want.text == sentence
    segments = list(served.transcribe_iter(clip, deadline=deadline))
    assert len(segments) == len(served.chunks(audio)) and segments[-1].last
    words = [w for s in segments for w in s.words]
    assert " ".join(w.word for w in words) == sentence
    assert [(w.word, w.start, w.end) for w in words] == [(w["word"], w["start"], w["end"]) for w in want.words]


def test_live_stream_finals_use_beam_search_and_partials_greedy(served, reference):
    """A live stream of a model with an LM (serve/streaming.py on the served decoder stage): partials are
    greedy (they show the misheard "pig kat"), each utterance's final is beam search + LM with the session's
    options, equal to common.lm on that utterance's frames; decoder=greedy gives greedy finals."""
    from serve.stream_route import event_json
    from serve.streaming import StreamConfig, Transcriber

    pause = np.zeros((40, len(reference.labels)), np.float32)
    pause[:, reference.labels.index("")] = 6.0  # 0.8 s of CTC blank: ends an utterance
    x = spell(FARMER, reference.labels, {"c": "k", "b": "p"})
    rafi = spell(RAFI, reference.labels, {"f": "v"})
    audio = audio_for(np.concatenate([x, pause, rafi, pause]))

    def run(**opts):
        t = Transcriber(served, options.Options(**opts), StreamConfig())
        events = []
        for i in range(0, len(audio), 1600):  # 100 ms frames
            t.push(audio[i: i + 1600])
            events += t.advance(time.monotonic() + 30)
        events += t.finish(time.monotonic() + 30)
        events = [event_json(e) for e in events]  # as the WebSocket route writes them
        return [e for e in events if e["type"] == "partial"], [e for e in events if e["type"] == "final" and e["text"]]

    partials, finals = run()
    assert any("pig kat" in p["text"] for p in partials), partials
    assert [f["text"] for f in finals] == [FARMER, reference.decode(rafi).text]
    assert finals[0]["start"] == 0.0 and finals[0]["words"][0]["word"] == "the"
    _, hot = run(hotwords=["rafi"], hotword_weight=30.0)
    assert hot[1]["text"] == reference.decode(rafi, lm.parse_options({"hotwords": ["rafi"],
                                                                      "hotword_weight": 30.0})).text == RAFI
    _, greedy = run(decoder="greedy")
    assert [f["text"] for f in greedy] == ["the farmer sees a pig kat today", "the dog sees ravi near the river"]


def _busy(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_killed_decoding_process_is_a_503_then_a_new_pool_and_deadlines_hold(lm_model_dir, reference):
    model = spelled_model(lm_model_dir, chunk_length_s=60.0)
    try:
        client = client_for(model, MODEL_SERVER_TIMEOUT="120")
        slow = audio_for((np.random.default_rng(0).normal(size=(500, len(reference.labels))) * 4).astype(np.float32))
        pid = model.beam.info["pid"]
        answer = {}
        thread = threading.Thread(target=lambda: answer.update(r=post(client, slow, fields={"beam_width": 256})))
        cpu = _busy(pid)
        thread.start()
        deadline = time.monotonic() + 30
        while _busy(pid) < cpu + 0.5 and time.monotonic() < deadline:  # it is decoding
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        thread.join(60)
        status, body = answer["r"]
        assert status == 503 and "beam-search process" in body["error"] and "retry" in body["error"], body
        audio, _ = heard(model, FARMER, reference.labels, {"c": "k", "b": "p"})
        assert post(client, audio) == (200, {"text": FARMER, "audio_seconds": round(len(audio) / 16000, 3)})
        assert model.beam.restarts == 1
        # A process that dies while idle costs no request: the next one goes to a new pool.
        os.kill(model.beam._current().submit(lm.pool_info).result(timeout=60)["pid"], signal.SIGKILL)
        time.sleep(1)  # concurrent.futures notices the death from its own thread
        assert post(client, audio)[0] == 200 and model.beam.restarts == 2
        # A decoding longer than the request's deadline: 503 at the deadline, never a stuck request. Four times
        # the frames of `slow` (40 s of audio, under the 6 MB payload cap): on an AVX-512 EPYC `slow` took 1.1 s,
        # these 4.7 s.
        slower = audio_for((np.random.default_rng(1).normal(size=(2000, len(reference.labels))) * 4).astype(np.float32))
        short = client_for(model, MODEL_SERVER_TIMEOUT="2")
        started = time.monotonic()
        status, body = post(short, slower, fields={"beam_width": 256})
        assert status == 503 and "MODEL_SERVER_TIMEOUT" in body["error"] and time.monotonic() - started < 10, body
    finally:
        model.close()


def test_unusable_lms_refuse_the_model_and_adapter_models_decode_greedily(lm_model_dir, checkpoint_dirs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(lm_model_dir, broken)
    alphabet = json.loads((broken / lm.ALPHABET_FILE).read_text())
    alphabet["labels"][0], alphabet["labels"][1] = alphabet["labels"][1], alphabet["labels"][0]
    (broken / lm.ALPHABET_FILE).write_text(json.dumps(alphabet))
    with pytest.raises(modeldir.ModelDirError, match="its language model cannot be used: .*does not match the "
                                                     "tokenizer's vocabulary"):
        serve_model.beam_search(modeldir.load_checkpoint(broken), 1)
    (broken / lm.LM_DIR / "unigrams.txt").unlink()
    with pytest.raises(modeldir.ModelDirError, match="must hold exactly attrs.json, unigrams.txt and one KenLM"):
        serve_model.beam_search(modeldir.load_checkpoint(broken), 1)
    mms = modeldir.load_checkpoint(checkpoint_dirs("mms"))
    beam, why = serve_model.beam_search(mms, 1)
    assert beam is None and "adapter (MMS)" in why
    model = serve_model.ServingModel(mms, device=torch.device("cpu"), dtype=torch.float32, beam=None,
                                     beam_unavailable=why)
    assert model.info.decoders == ("greedy",) and model.info.default_decoder == "greedy"
    with pytest.raises(contract.BadRequest, match=r"decoder=beam: beam search is not available for adapter \(MMS\)"):
        model.decoder(options.Options(decoder="beam"))
    with pytest.raises(contract.BadRequest, match="hotwords applies only to beam search, and this model decodes "
                                                  "greedily only"):
        model.decoder(options.Options(hotwords=("cat",)))


def test_default_process_count_and_orphaned_processes_exit(lm_model_dir):
    settings = Settings.from_env({})
    assert [settings.beam_processes_for(w, cores) for w, cores in ((1, 2), (1, 8), (8, 96), (1, 64))] == [1, 7, 11, 16]
    assert Settings.from_env({"SERVE_BEAM_PROCESSES": "3"}).beam_processes_for(1, 2) == 3
    # A pool whose parent is killed (SIGKILL: no clean-up runs) does not outlive it.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from common import lm\n"
            "if __name__ == '__main__':\n"
            "    pool = lm.make_pool(sys.argv[2], 1)\n"
            "    print(pool.submit(lm.pool_info).result()['pid'], flush=True)\n"
            "    import time; time.sleep(600)\n")
    import subprocess
    import sys

    parent = subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent.parent), str(lm_model_dir)],
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    zombie = Path(f"/proc/{child}").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
    assert not Path(f"/proc/{child}").exists() or zombie, "the pool process outlived its parent"


# The real program -----------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _pool_processes(master: int) -> list[int]:
    """The worker's spawned decoding processes (children running multiprocessing's spawn_main)."""
    out = []
    for worker in _children(master):
        for child in _children(worker):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(child)
    return out


@pytest.fixture(scope="module")
def lm_server(lm_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_server")
    srv = Server(make_opt_ml(root / "opt_ml", lm_model_dir), root / "server.log", SERVE_BEAM_PROCESSES="2",
                 MODEL_SERVER_WORKERS="1").wait_ready()
    yield srv
    srv.stop()


def test_served_by_the_program_with_its_lm(lm_server, lm_model_dir):
    log = lm_server.log()
    assert "decoder: beam search + LM by default: language_model/3gram.arpa (ARPA text" in log, log
    assert "order 3" in log and "alpha=0.5 beta=1.5" in log and "2 process(es)" in log
    clip = (np.random.default_rng(1).normal(size=16000 * 2) * 0.1).astype(np.float32)
    wav = encode(clip, 16000)
    default = lm_server.post(wav, "audio/wav")
    beam = lm_server.post(wav, "audio/wav", path="/invocations?decoder=beam&timestamps=true")
    greedy = lm_server.post(wav, "audio/wav", **{HEADER: "decoder=greedy"})
    assert (default.status, beam.status, greedy.status) == (200, 200, 200)
    assert default.json["text"] == beam.json["text"]
    assert greedy.json["text"] == checkpoints.reference_text(lm_model_dir, clip)  # transformers' greedy
    starts = [w["start"] for w in beam.json["words"]]
    assert starts == sorted(starts) and " ".join(w["word"] for w in beam.json["words"]) == beam.json["text"]
    bad = lm_server.post(wav, "audio/wav", **{HEADER: "decoder=beam;beam_width=300"})
    assert bad.status == 400 and "beam_width must be a whole number from 1 to 256" in bad.json["error"]
    # The decoding processes: started by the worker, spawned (no torch, no CUDA in them).
    pool = _pool_processes(lm_server.proc.pid)
    assert len(pool) == 2, pool
    for pid in pool:
        assert "libtorch" not in Path(f"/proc/{pid}/maps").read_text()


def test_a_live_stream_of_the_program_with_its_lm(lm_server):
    """The WebSocket route of the real program: a clip shorter than one step plus the look-ahead is one window,
    so its final equals /invocations' answer for the same audio, beam search + LM by default and greedy when
    the settings frame says decoder=greedy."""
    from websockets.sync.client import connect

    clip = (np.random.default_rng(2).normal(size=int(16000 * 0.7)) * 0.1).astype(np.float32)
    pcm = (np.clip(clip, -1, 1) * 32767).astype("<i2")
    wav = encode(pcm, 16000, subtype="PCM_16")
    for settings, query in (({}, "?timestamps=true"), ({"decoder": "greedy"}, "?timestamps=true&decoder=greedy")):
        want = lm_server.post(wav, "audio/wav", path="/invocations" + query)
        assert want.status == 200 and want.json["text"], want.body  # a random model hears some words in noise
        with connect(f"ws://127.0.0.1:{lm_server.port}/invocations-bidirectional-stream?timestamps=true",
                     open_timeout=30) as conn:
            if settings:
                conn.send(json.dumps({"type": "settings", **settings}))
            conn.send(pcm.tobytes())
            conn.send(json.dumps({"type": "end"}))
            events = []
            try:
                while True:
                    events.append(json.loads(conn.recv(timeout=60)))
            except ConnectionClosed:
                pass
            assert conn.close_code == 1000, events
        finals = [e for e in events if e["type"] == "final"]
        assert len(finals) == 1 and finals[0]["last"], events
        assert (finals[0]["text"], finals[0]["words"]) == (want.json["text"], want.json.get("words", [])), settings


def test_sigterm_drains_a_beam_search_and_stops_its_processes(lm_model_dir, tmp_path):
    srv = Server(make_opt_ml(tmp_path / "opt_ml", lm_model_dir), tmp_path / "server.log",
                 SERVE_BEAM_PROCESSES="1").wait_ready()
    try:
        pool = _pool_processes(srv.proc.pid)
        assert len(pool) == 1
        clip = (np.random.default_rng(2).normal(size=16000 * 6) * 0.1).astype(np.float32)
        answer = {}
        thread = threading.Thread(target=lambda: answer.update(r=srv.post(
            encode(clip, 16000), "audio/wav", **{HEADER: "beam_width=256"})))
        cpu = _busy(pool[0])
        thread.start()
        deadline = time.monotonic() + 30
        while _busy(pool[0]) < cpu + 0.3 and time.monotonic() < deadline:
            time.sleep(0.1)
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        thread.join(60)
        assert answer["r"].status == 200, answer["r"].body
        assert srv.proc.wait(30) == 0
        assert time.monotonic() - started < 25  # gunicorn's drain window (SageMaker kills at 30 s)
        time.sleep(1)
        assert not Path(f"/proc/{pool[0]}").exists() or b"spawn_main" not in Path(f"/proc/{pool[0]}/cmdline").read_bytes()
    finally:
        srv.stop()


def _lm_over(model_dir: Path, sentences, work: Path) -> Path:
    """alphabet.json + language_model/ over `sentences` beside a model, whatever its vocabulary's case."""
    from pyctcdecode import build_ctcdecoder
    from transformers import Wav2Vec2Processor, Wav2Vec2ProcessorWithLM

    from train.lm import estimate_arpa

    processor = Wav2Vec2Processor.from_pretrained(str(model_dir))
    vocab = processor.tokenizer.get_vocab()
    decoder = build_ctcdecoder(sorted(vocab, key=vocab.get), kenlm_model_path=str(estimate_arpa(sentences, 2, work)))
    Wav2Vec2ProcessorWithLM(feature_extractor=processor.feature_extractor, tokenizer=processor.tokenizer,
                            decoder=decoder).save_pretrained(str(model_dir))
    return model_dir


def test_an_lm_the_model_cannot_spell_refuses_the_model(tmp_path, caplog):
    """wav2vec2-base-960h's upper-case vocabulary with a lower-case LM (no unigram spellable), and an LM in
    another script: the server does not start, saying why (common/lm.py MIN_SPELLABLE), instead of beam
    search + LM answering 200 with garbage. An LM the model spells mostly (below WARN_SPELLABLE) starts,
    with a warning naming what it cannot write."""
    upper = _lm_over(checkpoints.build("wav2vec2-base", tmp_path / "upper" / "model"), SENTENCES, tmp_path / "w1")
    with pytest.raises(modeldir.ModelDirError, match=r"its language model cannot be used: language_model/unigrams.txt: "
                       r"\d+ of \d+ words \(100%\) use characters the model cannot write.*upper-case and the "
                       r"model lower-case, or the reverse.*at least 50% of an LM's words must be spellable"):
        serve_model.beam_search(modeldir.load_checkpoint(upper), 1)
    settings = Settings.from_env({"OPT_ML": str(upper.parent), "SERVE_CPU_BF16": "false"})
    with pytest.raises(modeldir.ModelDirError, match="cannot write"):
        serve_model.load(settings)  # what a worker runs at start: it exits with this message
    greek = ["αβγ δεζ", "ηθι κλμ", "the cat"]  # 4 of 6 words outside an upper-case Latin alphabet
    other = _lm_over(checkpoints.build("wav2vec2-base", tmp_path / "greek" / "model"),
                     [s.upper() if s.isascii() else s for s in greek], tmp_path / "w2")
    with pytest.raises(modeldir.ModelDirError, match=r"4 of 6 words \(67%\) use characters the model cannot write, "
                                                     r"characters 'αβγδεζηθικλμ'; at least 50%"):
        serve_model.beam_search(modeldir.load_checkpoint(other), 1)
    mostly = _lm_over(checkpoints.build("wav2vec2-base", tmp_path / "mostly" / "model"),
                      [s.upper() for s in SENTENCES] + ["αβγ δεζ ηθι κλμ"], tmp_path / "w3")
    with caplog.at_level("WARNING", logger="serve"):
        beam, why = serve_model.beam_search(modeldir.load_checkpoint(mostly), 1)
    try:
        assert beam is not None and beam.has_lm and why == ""
        assert re.search(r"language model: 4 of \d+ words \(\d+%\) use characters the model cannot write, "
                         r"characters 'αβγδεζηθικλμ'; those words can never be transcribed", caplog.text), caplog.text
    finally:
        beam.close()
