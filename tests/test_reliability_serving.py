"""Reliability of the serving program under hostile input and load, with its real workers on loopback.

Bounded versions of reliability/fuzz and reliability/load: every answer is 2xx or a 4xx with a JSON error,
no worker dies, a good request is answered correctly afterwards, and worker memory stays flat under load.
"""
from __future__ import annotations

import json
import time

import pytest

import reliability_helpers as rh
from serve_helpers import encode

WORKERS = 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return rh.tiny_model(tmp_path_factory.mktemp("rel_model"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("rel_serve")
    srv = rh.Observed(rh.opt_ml_with_model(root / "opt_ml", model_dir), root / "server.log",
                      MODEL_SERVER_WORKERS=str(WORKERS), SERVE_THREADS="8").wait_ready()
    srv.workers_at_start = srv.wait_workers(WORKERS)
    yield srv
    srv.stop()


def good_request_is_correct(server, model_dir) -> None:
    audio = rh.speechlike(1.5, seed=42)
    a = rh.send(server.port, encode(audio, 16_000), {"Content-Type": "audio/wav"})
    assert a.status == 200, a.body
    assert json.loads(a.body)["text"] == rh.reference_text(model_dir)(audio)


def test_fuzzed_invocations_get_2xx_or_json_4xx_and_no_worker_dies(server, model_dir):
    report = rh.fuzz(server.port, max_examples=400, max_s=45, seed=7)
    print(f"fuzz: {report.tried} inputs, statuses {report.by_status}")
    assert report.tried >= 100, "too few inputs tried in the time allowed"
    assert not report.problems, "\n".join(report.problems[:10])
    assert not server.deaths(), server.deaths()
    assert not server.app_errors(), server.app_errors()
    assert server.worker_pids() == server.workers_at_start
    # Both the audio decoders and the JSON decoders were reached, not only the 415 for the content type.
    assert report.by_status.get(400, 0) > 50 and report.by_status.get(200, 0) > 0
    good_request_is_correct(server, model_dir)


def test_fuzzed_openai_transcriptions_get_2xx_or_openai_4xx_and_no_worker_dies(server, model_dir):
    """The same hostile bodies (and OpenAI multipart forms, whole or broken) on POST /v1/audio/transcriptions:
    every error in OpenAI's shape {"error": {"message", "type", "param", "code"}} with a 4xx."""
    report = rh.fuzz(server.port, max_examples=200, max_s=30, seed=11, path="/v1/audio/transcriptions")
    print(f"fuzz /v1/audio/transcriptions: {report.tried} inputs, statuses {report.by_status}")
    assert report.tried >= 50, "too few inputs tried in the time allowed"
    assert not report.problems, "\n".join(report.problems[:10])
    assert not server.deaths(), server.deaths()
    assert not server.app_errors(), server.app_errors()
    assert server.worker_pids() == server.workers_at_start
    multipart = sum(n for label, n in report.by_label.items() if label.startswith("multipart"))
    # The forms reached the form parser and the audio decoders (400s), not only the 415 for the content type.
    assert multipart >= 100 and report.by_status.get(400, 0) >= 40, (report.by_status, report.by_label)
    good_request_is_correct(server, model_dir)
    import urllib3

    audio = rh.speechlike(1.5, seed=42)
    body, ctype = urllib3.encode_multipart_formdata({"file": ("a.wav", encode(audio, 16_000)), "model": "m"})
    a = rh.send(server.port, body, {"Content-Type": ctype}, path="/v1/audio/transcriptions")
    assert a.status == 200 and json.loads(a.body)["text"] == rh.reference_text(model_dir)(audio), a.body


def test_nested_json_is_a_400(server):
    for depth in (1_000, 100_000):
        a = rh.send(server.port, (b"[" * depth) + (b"]" * depth), {"Content-Type": "application/json"})
        assert a.status == 400 and "nested too deeply" in rh.json_error(a), a.body


def test_flac_declaring_billions_of_frames_is_a_413_from_its_header(server):
    """Found by reliability/fuzz: the decoder allocated what the header declared (256 GiB), a 500. Now refused from
    STREAMINFO before decoding (SERVE_MAX_DECODED_MB)."""
    flac = bytearray(encode(rh.speechlike(0.5), 16_000, "FLAC"))
    field = int.from_bytes(flac[18:26], "big")
    flac[18:26] = (field | ((1 << 36) - 1)).to_bytes(8, "big")
    a = rh.send(server.port, bytes(flac), {"Content-Type": "audio/flac"})
    assert a.status == 413 and "SERVE_MAX_DECODED_MB" in rh.json_error(a), a.body


@pytest.mark.parametrize("raw,status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"POST /invocations HTTP/1.1\r\nHost: x\r\nExpect: gzip\r\nContent-Length: 3\r\n\r\nabc", 417),
    (b"POST /invocations HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\nContent-Length: 0\r\n\r\n", 400),
    (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
])
def test_requests_gunicorn_cannot_parse_get_a_json_error(server, raw, status):
    answer = rh.raw_exchange(server.port, raw)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), answer[:300]
    assert b"Content-Type: application/json" in head
    assert isinstance(json.loads(body)["error"], str)


def test_declared_huge_body_is_refused_before_it_is_read(server):
    """Content-Length of 2 GB with only a few bytes sent: 413 at once, and no worker grows (SageMaker's front end
    caps bodies too, but a container reached another way must not read an unbounded body into memory)."""
    rss = {pid: rh.rss_kb(pid) for pid in server.worker_pids()}
    started = time.monotonic()
    answer = rh.raw_exchange(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
                                          b"Content-Length: 2147483648\r\n\r\nRIFF", timeout_s=10)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert time.monotonic() - started < 5
    # A chunked body is cut off as soon as it passes the cap (6 MB), not read to its end.
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"\0" * (1 << 20))
    answer = rh.raw_exchange(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
                                          b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 8 + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    for pid, before in rss.items():
        assert rh.rss_kb(pid) < before + 32 * 1024, "a worker grew by more than 32 MB"


def test_load_mixed_lengths_no_errors_and_flat_worker_memory(server):
    bodies = rh.mixed_bodies(server.port, [0.5, 1, 2, 3, 4, 1.5, 2.5, 0.8])
    rh.run_load(server.port, bodies, total=64, concurrency=32)  # warm-up: thread pools, batch shapes
    pids = server.worker_pids()
    warm = {pid: rh.rss_kb(pid) for pid in pids}
    result = rh.run_load(server.port, bodies, total=240, concurrency=32, max_s=150)
    end = {pid: rh.rss_kb(pid) for pid in pids}
    print(f"load: {result.sent} requests in {result.wall_s:.1f} s, p50 {result.percentile_ms(50):.0f} ms, "
          f"p99 {result.percentile_ms(99):.0f} ms, RSS warm {warm} end {end} (kB)")
    assert result.sent == 240, "the load did not finish in time"
    assert not result.failures, result.failures[:5]
    assert server.worker_pids() == pids and not server.deaths()
    for pid in pids:
        assert abs(end[pid] - warm[pid]) <= 0.10 * warm[pid], (pid, warm[pid], end[pid])
