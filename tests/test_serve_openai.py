"""The OpenAI-compatible API (issue 21 items 1-3) over real HTTP: the official `openai` client, curl -F and a
SageMaker-style multipart body on /invocations, against the serving program with a tiny random model."""
from __future__ import annotations

import io
import json
import shutil
import subprocess

import numpy as np
import openai
import pytest
import srt
import torch
import urllib3
import webvtt

from common import ctc
from common.audio import load_file
from serve_helpers import Server, encode, make_opt_ml

RATE = 16_000
CHUNK_S, STRIDE_S = 8, 2  # a ~20 s clip is cut in several chunks: several segments


@pytest.fixture(scope="module")
def wordy_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny random model with its word delimiter's logit raised by 0.5: it writes a word every few
    characters (the plain one writes one long word), so cues, segments and stream deltas have words to split."""
    from common import modeldir

    model, processor = modeldir.load(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.bias[processor.tokenizer.convert_tokens_to_ids("|")] += 0.5
    out = tmp_path_factory.mktemp("wordy_model")
    modeldir.save(out, model, processor)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory, wordy_model_dir):
    root = tmp_path_factory.mktemp("serve_openai")
    srv = Server(make_opt_ml(root / "opt_ml", wordy_model_dir), root / "server.log",
                 MODEL_SERVER_WORKERS="1", SERVE_THREADS="4", SERVE_CHUNK_LENGTH_S=str(CHUNK_S),
                 SERVE_CHUNK_STRIDE_S=str(STRIDE_S), SAGEMAKER_MAX_PAYLOAD_IN_MB="4", SERVE_BEAM_PROCESSES="1",
                 ).wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key="not-checked", base_url=f"http://127.0.0.1:{server.port}/v1", max_retries=0)


@pytest.fixture(scope="module")
def clips(synthetic_data):
    return [load_file(p) for p in sorted((synthetic_data / "test" / "audio").glob("*.wav"))]


@pytest.fixture(scope="module")
def short(clips):
    return encode(clips[0], RATE, "WAV", "PCM_16")


@pytest.fixture(scope="module")
def long(clips):
    """About 20 s: more than two chunks."""
    out, total = [], 0
    for c in clips:
        out.append(c)
        total += len(c)
        if total > 20 * RATE:
            break
    return encode(np.concatenate(out), RATE, "WAV", "PCM_16")


def invocations(server, wav: bytes, query: str = "") -> dict:
    reply = server.post(wav, "audio/wav", path="/invocations" + query)
    assert reply.status == 200, reply.body
    return reply.json


def seconds(wav: bytes) -> float:
    return len(load_file_bytes(wav)) / RATE


def load_file_bytes(wav: bytes) -> np.ndarray:
    from common.audio import decode_bytes

    return decode_bytes(wav)


# The openai client, every response_format ---------------------------------------------------------------
@pytest.mark.parametrize("granularities", [None, ["word"], ["segment"], ["word", "segment"]])
def test_every_response_format_through_the_openai_client(server, client, long, granularities):
    want = invocations(server, long, "?timestamps=true")
    extra = {} if granularities is None else {"timestamp_granularities": granularities}
    duration = seconds(long)

    as_json = client.audio.transcriptions.create(file=("talk.wav", long), model="whisper-1", **extra)
    assert as_json.text == want["text"] and want["text"].strip()
    assert client.audio.transcriptions.create(file=("talk.wav", long), model="x", response_format="text",
                                              **extra) == want["text"]

    words = [w["word"] for w in want["words"]]
    assert len(words) >= 30  # enough words for several cues
    made = client.audio.transcriptions.create(file=("talk.wav", long), model="x", response_format="srt", **extra)
    check_cues([(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in srt.parse(made)], words,
               duration)
    made = client.audio.transcriptions.create(file=("talk.wav", long), model="x", response_format="vtt", **extra)
    check_cues([(_vtt_s(c.start), _vtt_s(c.end), c.text) for c in webvtt.from_buffer(io.StringIO(made))], words,
               duration)

    verbose = client.audio.transcriptions.create(file=("talk.wav", long), model="my-asr",
                                                 response_format="verbose_json", **extra)
    assert verbose.text == want["text"]
    assert verbose.duration == pytest.approx(duration, abs=1e-3)
    assert isinstance(verbose.language, str)
    granular = granularities or ["segment"]  # OpenAI's default
    if "segment" in granular:
        segs = verbose.segments
        assert [s.id for s in segs] == list(range(len(segs))) and len(segs) >= 3
        assert segs[0].start == 0 and segs[-1].end == pytest.approx(duration, abs=0.02)
        assert all(a.end == b.start for a, b in zip(segs, segs[1:]))  # the chunks tile the clip
        assert " ".join(s.text for s in segs if s.text) == " ".join(words)
        assert all(-30 < s.avg_logprob <= 0 for s in segs)
    else:
        assert verbose.segments is None
    if "word" in granular:
        assert [(w.word, w.start, w.end) for w in verbose.words] == \
            [(w["word"], w["start"], w["end"]) for w in want["words"]]
        assert all(0 < w.probability <= 1 for w in verbose.words)
    else:
        assert verbose.words is None


def _vtt_s(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def check_cues(cues: list[tuple[float, float, str]], words: list[str], duration: float) -> None:
    """Every word once, in order; cues in order, never overlapping, inside the audio; lines as configured."""
    assert cues and len(cues) >= len(" ".join(words)) / (2 * 43)  # a cue holds at most two lines of 42
    assert [w for _, _, text in cues for w in text.split()] == words
    for (s0, e0, _), (s1, _, _) in zip(cues, cues[1:]):
        assert e0 <= s1
    assert all(0 <= s <= e <= duration + 1e-3 for s, e, _ in cues)
    assert all(len(text.splitlines()) <= 2 for _, _, text in cues)
    assert all(len(line) <= 42 or " " not in line for _, _, text in cues for line in text.splitlines())


def test_stream_true_sends_a_delta_per_segment_then_done(server, client, long):
    want = invocations(server, long)["text"]
    events = list(client.audio.transcriptions.create(file=("talk.wav", long), model="x", stream=True))
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    assert len(events) - 1 >= 2  # one per chunk of the ~20 s clip that has text
    assert events[-1].type == "transcript.text.done" and events[-1].text == want
    assert "".join(e.delta for e in events[:-1]) == want


def test_stream_wire_format_is_server_sent_events(server, short):
    body, ctype = urllib3.encode_multipart_formdata({"file": ("a.wav", short, "audio/wav"), "stream": "true"})
    reply = server.post(body, ctype, path="/v1/audio/transcriptions")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in reply.body.decode().split("\n\n") if b]
    assert all(b.startswith("data: ") for b in blocks)
    docs = [json.loads(b[len("data: "):]) for b in blocks]
    assert docs[-1]["type"] == "transcript.text.done"


def test_options_of_this_project_as_extra_fields_and_beam_search(server, client, short):
    for decoder in ("greedy", "beam"):
        want = invocations(server, short, f"?decoder={decoder}")["text"]
        got = client.audio.transcriptions.create(file=("a.wav", short), model="x", extra_body={"decoder": decoder})
        assert got.text == want, decoder
    want = invocations(server, short, "?decoder=beam&beam_width=4&hotwords=ab,cd")["text"]
    got = client.audio.transcriptions.create(file=("a.wav", short), model="x", temperature=0.2, prompt="Hello, Ab.",
                                             extra_body={"decoder": "beam", "beam_width": 4, "hotwords": ["ab", "cd"]})
    assert isinstance(got.text, str)
    # prompt adds hotwords to beam search; with greedy it changes nothing.
    assert client.audio.transcriptions.create(file=("a.wav", short), model="x", prompt="Hello there").text == \
        invocations(server, short)["text"]
    assert want == invocations(server, short, "?decoder=beam&beam_width=4&hotwords=cd,ab")["text"]


def test_models_lists_the_served_model(server, client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["Wav2Vec2ForCTC"]
    assert client.models.retrieve("Wav2Vec2ForCTC").owned_by == "wav2vec2-sagemaker"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("whisper-1")
    assert caught.value.body["type"] == "invalid_request_error" and caught.value.body["param"] == "model"


# curl -F and multipart on /invocations -------------------------------------------------------------------
@pytest.mark.skipif(not shutil.which("curl"), reason="no curl")
def test_curl_form_upload(server, tmp_path, short):
    path = tmp_path / "talk.wav"
    path.write_bytes(short)
    want = invocations(server, short, "?timestamps=true")
    base = f"http://127.0.0.1:{server.port}"
    out = subprocess.run(["curl", "-sS", "-F", f"file=@{path}", "-F", "model=whisper-1",
                          f"{base}/v1/audio/transcriptions"], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout)["text"] == want["text"]
    out = subprocess.run(["curl", "-sS", "-F", f"file=@{path}", f"{base}/invocations"], capture_output=True,
                         text=True, timeout=60, check=True)
    assert json.loads(out.stdout)["text"] == want["text"]
    out = subprocess.run(["curl", "-sS", "-F", f"file=@{path}", "-F", "response_format=srt",
                          f"{base}/v1/audio/transcriptions"], capture_output=True, text=True, timeout=60, check=True)
    check_cues([(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in srt.parse(out.stdout)],
               [w["word"] for w in want["words"]], seconds(short))


def test_sagemaker_style_multipart_body_on_invocations(server, long):
    """What boto3's invoke_endpoint sends with ContentType multipart/form-data; boundary=...: the OpenAI body."""
    want = invocations(server, long, "?timestamps=true")
    fields = {"file": ("talk.wav", long, "audio/wav"), "model": "whisper-1", "language": "en", "temperature": "0"}
    body, ctype = urllib3.encode_multipart_formdata(fields)
    reply = server.post(body, ctype)
    assert reply.status == 200, reply.body
    assert reply.json == {"text": want["text"], "audio_seconds": want["audio_seconds"]}  # its own shape

    body, ctype = urllib3.encode_multipart_formdata(
        [("file", ("talk.wav", long, "audio/wav")), ("timestamp_granularities[]", "word"),
         ("timestamp_granularities[]", "segment"), ("confidence", "true")])
    detailed = server.post(body, ctype).json
    assert [(w["word"], w["start"], w["end"]) for w in detailed["words"]] == \
        [(w["word"], w["start"], w["end"]) for w in want["words"]]
    assert all(0 < w["probability"] <= 1 for w in detailed["words"])
    assert [s["index"] for s in detailed["segments"]] == list(range(len(detailed["segments"]))) >= [0, 1, 2]

    body, ctype = urllib3.encode_multipart_formdata({"file": ("t.wav", long, "audio/wav"), "response_format": "vtt"})
    reply = server.post(body, ctype)
    assert reply.headers["content-type"].startswith("text/vtt")
    check_cues([(_vtt_s(c.start), _vtt_s(c.end), c.text) for c in webvtt.from_buffer(io.StringIO(reply.body.decode()))],
               [w["word"] for w in want["words"]], seconds(long))


def test_invocations_subtitles_by_accept_and_406(server, short):
    want = invocations(server, short, "?timestamps=true")
    words = [w["word"] for w in want["words"]]
    reply = server.post(short, "audio/wav", Accept="text/vtt")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/vtt")
    check_cues([(_vtt_s(c.start), _vtt_s(c.end), c.text)
                for c in webvtt.from_buffer(io.StringIO(reply.body.decode()))], words, seconds(short))
    reply = server.post(short, "audio/wav", Accept="application/x-subrip")
    assert reply.headers["content-type"].startswith("application/x-subrip")
    check_cues([(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in srt.parse(reply.body.decode())],
               words, seconds(short))
    reply = server.post(short, "audio/wav", path="/invocations?response_format=srt&max_line_chars=10&max_lines=1")
    cues = list(srt.parse(reply.body.decode()))
    assert all(len(c.content.splitlines()) == 1 for c in cues)
    assert [w for c in cues for w in c.content.split()] == words
    for accept in ("image/png", "text/plain;q=0, application/json;q=0"):
        reply = server.post(short, "audio/wav", Accept=accept)
        assert reply.status == 406, (accept, reply.body)
        assert "cannot answer Accept" in reply.json["error"]
    batch = server.post_json([{"audio": __import__("base64").b64encode(short).decode()}] * 2, Accept="text/vtt")
    assert batch.status == 406 and "batch" in batch.json["error"]


def test_invocations_segments_and_confidence_options(server, long):
    plain = invocations(server, long)
    got = invocations(server, long, "?segments=true&confidence=true")
    assert got["text"] == plain["text"]
    assert " ".join(s["text"] for s in got["segments"] if s["text"]) == " ".join(w["word"] for w in got["words"])
    assert all(set(w) == {"word", "start", "end", "probability"} for w in got["words"])
    only = invocations(server, long, "?segments=true")
    assert "words" not in only and len(only["segments"]) == len(got["segments"]) >= 3


# Errors: OpenAI's shape, 4xx, never 500 ------------------------------------------------------------------
def _form(**fields):
    return urllib3.encode_multipart_formdata(fields)


@pytest.mark.parametrize("fields,param,status", [
    ({"response_format": "pdf"}, "response_format", 400),
    ({"timestamp_granularities[]": "char"}, "timestamp_granularities[]", 400),
    ({"temperature": "hot"}, "temperature", 400),
    ({"temperature": "1.5"}, "temperature", 400),
    ({"bogus": "1"}, "bogus", 400),
    ({"include[]": "logprobs"}, "include[]", 400),
    ({"stream": "maybe"}, "stream", 400),
    ({"stream": "true", "response_format": "srt"}, "stream", 400),
    ({"beam_width": "0", "decoder": "beam"}, "beam_width", 400),
    ({"decoder": "viterbi"}, "decoder", 400),
    ({"alpha": "1"}, None, 400),  # greedy by default: beam options refused by the model
    ({"max_lines": "0", "response_format": "srt"}, "max_lines", 400),
    ({"language": "x" * 100}, "language", 400),
])
def test_bad_fields_are_openai_errors(server, short, fields, param, status):
    body, ctype = _form(file=("a.wav", short, "audio/wav"), **fields)
    reply = server.post(body, ctype, path="/v1/audio/transcriptions")
    assert reply.status == status, reply.body
    error = reply.json["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and error["message"], error


@pytest.mark.parametrize("make,status,says", [
    (lambda wav: _form(model="x"), 400, "missing the audio"),
    (lambda wav: _form(file="not a file part"), 400, "must be a file part"),
    (lambda wav: _form(file=("a.wav", b"", "audio/wav")), 400, "empty"),
    (lambda wav: _form(file=("a.wav", b"this is not audio at all" * 20, "audio/wav")), 400, "cannot decode"),
    (lambda wav: _form(file=("a.wav", wav[: len(wav) // 3], "audio/wav"), other=("b.wav", wav, "audio/wav")),
     400, "unknown file part"),
    (lambda wav: (wav, "audio/wav"), 415, "multipart/form-data"),
    (lambda wav: (b'{"audio": ""}', "application/json"), 415, "multipart/form-data"),
    (lambda wav: (b"--x\r\nbroken", "multipart/form-data; boundary=x"), 400, "not valid multipart/form-data"),
    (lambda wav: (b"--x--", "multipart/form-data"), 400, "boundary"),
    (lambda wav: (b"0" * (5 * 2 ** 20), "multipart/form-data; boundary=x"), 413, "larger than"),
])
def test_bad_bodies_are_openai_errors(server, short, make, status, says):
    body, ctype = make(short)
    reply = server.post(body, ctype, path="/v1/audio/transcriptions")
    assert reply.status == status, reply.body
    error = reply.json["error"]
    assert isinstance(error, dict) and says in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_the_openai_client_raises_its_own_error_types(client, short):
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(file=("a.wav", short), model="x", response_format="diarized_json")
    assert caught.value.status_code == 400 and caught.value.param == "response_format"
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(file=("a.wav", b"RIFF...."), model="x")


def test_invocations_keeps_its_own_error_shape_for_multipart(server, short):
    body, ctype = _form(file=("a.wav", short, "audio/wav"), response_format="pdf")
    reply = server.post(body, ctype)
    assert reply.status == 400 and isinstance(reply.json["error"], str) and "response_format" in reply.json["error"]
    body, ctype = _form(file=("a.wav", short, "audio/wav"), stream="true")
    reply = server.post(body, ctype)
    assert reply.status == 400 and "/invocations-response-stream" in reply.json["error"]


def test_server_log_has_no_internal_error(server):
    assert "internal error" not in server.log() and "Traceback" not in server.log()


# Confidences, unit level ---------------------------------------------------------------------------------
def test_word_probability_is_the_mean_posterior_of_the_frames_that_spell_it():
    # blank 0, letters 1 and 2, delimiter 3; frames: a a _ b | _ b
    logits = torch.full((7, 4), -10.0)
    for frame, (token, value) in enumerate([(1, 2.0), (1, 1.0), (0, 3.0), (2, 0.5), (3, 4.0), (0, 2.0), (2, 1.5)]):
        logits[frame, token] = value
    probs = logits.softmax(-1)
    seq = ctc.greedy(logits[None], 0)[0]
    assert seq.tokens == [1, 2, 3, 2]
    got = ctc.word_probabilities(logits, [(0, 4), (6, 7)], 0, (3,))
    assert got[0] == pytest.approx(float((probs[0, 1] + probs[1, 1] + probs[3, 2]) / 3), abs=1e-4)
    assert got[1] == pytest.approx(float(probs[6, 2]), abs=1e-4)
    # A span with no frame spelling a letter (beam search's LM put a word there): mean of 1 - P(blank).
    assert ctc.word_probabilities(logits, [(5, 6)], 0, (3,))[0] == pytest.approx(float(1 - probs[5, 0]), abs=1e-4)
    assert ctc.mean_logprobs(logits, [(0, 7), (2, 2)]) == [
        pytest.approx(float(probs.max(-1).values.log().mean()), abs=1e-4), None]


def test_beam_search_segments_and_word_probabilities(server, long):
    plain = invocations(server, long, "?decoder=beam")
    got = invocations(server, long, "?decoder=beam&segments=true&confidence=true")
    assert got["text"] == plain["text"]
    assert " ".join(w["word"] for w in got["words"]) == " ".join(plain["text"].split())
    assert all(0 < w["probability"] <= 1 for w in got["words"])
    assert " ".join(s["text"] for s in got["segments"] if s["text"]) == " ".join(w["word"] for w in got["words"])


def test_prompt_words_become_hotwords_the_alphabet_can_spell():
    from serve.decoding import BeamSearch

    beam = BeamSearch("/nonexistent", 1, labels=["", " ", "a", "b", "c", "'", "⁇"], has_lm=False)
    # "bad" and "x's": d and x are not in this alphabet; "ABC" is "abc" again.
    assert beam.prompt_hotwords("Abc, CAB! bad x's ab'c ABC", ("cc",)) == ("cc", "abc", "cab", "ab'c")
    assert beam.prompt_hotwords("zzz") == ()
    upper = BeamSearch("/nonexistent", 1, labels=["", " ", "A", "B"], has_lm=False)
    assert upper.prompt_hotwords("ab, Ba.") == ("AB", "BA")
