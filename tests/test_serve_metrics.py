"""GET /metrics (serve/metrics.py, serve/observe.py): a live two-worker server scraped with prometheus_client's
own parser after a known mix of requests; dead-worker cleanup; the scrape while a 20 s clip is transcribed; the
request log lines; the settings; docs/metrics.md's list of metrics."""
from __future__ import annotations

import json
import re
import signal
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from conftest import ROOT
from serve_helpers import Server, encode, make_opt_ml
from test_serve_app import FakeModel, app_for, wav

from common.audio import load_file

RATE = 16000


def scrape(server, path: str = "/metrics") -> dict:
    """{(sample name, sorted label items): value} of one scrape."""
    reply = server.get(path, timeout=10)
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"].startswith("text/plain; version=")
    out = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict, name: str, **labels) -> float:
    """Sum over the samples of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


@pytest.fixture(scope="module")
def clips(synthetic_data):
    return [load_file(p) for p in sorted((synthetic_data / "test" / "audio").glob("*.wav"))]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("metrics")
    srv = Server(make_opt_ml(root / "opt_ml", tiny_model_dir), root / "server.log",
                 MODEL_SERVER_WORKERS="2", SERVE_THREADS="4", SERVE_MAX_BATCH_SIZE="8",
                 SERVE_MAX_BATCH_WAIT_MS="20", SERVE_CHUNK_LENGTH_S="8", SERVE_CHUNK_STRIDE_S="2",
                 PROMETHEUS_MULTIPROC_DIR=str(root / "prom")).wait_ready()
    srv.prom_dir = root / "prom"
    yield srv
    srv.stop()


def _served_by(server, marker: str) -> set[int]:
    return {int(m) for m in re.findall(r"\[(\d+)\] \[\w+\] request id=" + re.escape(marker), server.log())}


def test_counts_after_a_known_mix_of_requests(two_workers, clips):
    srv = two_workers
    before = scrape(srv)
    good = [encode(c, RATE) for c in clips[:4]]
    # Good single clips, concurrently, until both workers have served some (so the scrape must add them up).
    sent, pids = 0, set()
    with ThreadPoolExecutor(4) as pool:
        while len(pids) < 2 and sent < 64:
            replies = list(pool.map(lambda b: srv.post(b, "audio/wav", **{"X-Request-Id": "good-mix"}), good))
            assert all(r.status == 200 for r in replies)
            sent += len(replies)
            time.sleep(0.3)
            pids = _served_by(srv, "good-mix")
    assert len(pids) == 2, "one worker served every request"
    batch = srv.post_json([{"speech_array": clips[0].tolist(), "sampling_rate": RATE},
                           {"speech_array": clips[1].tolist(), "sampling_rate": RATE}])
    assert batch.status == 200 and len(batch.json) == 2
    streamed = srv.post(good[0], "audio/wav", path="/invocations-response-stream")
    assert streamed.status == 200 and json.loads(streamed.body.splitlines()[-1])["last"]
    assert srv.post(b"hello", "text/plain").status == 415
    assert srv.post(b"RIFF not really a wav file", "audio/wav").status == 400
    assert srv.get("/no-such-route").status == 404
    assert srv.get("/invocations").status == 405
    with connect(f"ws://127.0.0.1:{srv.port}/invocations-bidirectional-stream", open_timeout=30) as ws:
        ws.send((np.clip(clips[2], -1, 1) * 32767).astype("<i2").tobytes())
        ws.send(json.dumps({"type": "end"}))
        while True:
            try:
                ws.recv(timeout=60)
            except Exception:  # noqa: BLE001 - closed after the last final
                break
    time.sleep(0.5)
    after = [scrape(srv) for _ in range(6)]  # answered by either worker: the same sums every time
    for a in after[1:]:
        assert {k: v for k, v in a.items() if "/metrics" not in str(k)} == \
               {k: v for k, v in after[0].items() if "/metrics" not in str(k)}
    now = after[0]

    def delta(name, **labels):
        return total(now, name, **labels) - total(before, name, **labels)

    req = "serve_requests_total"
    assert delta(req, route="/invocations", status="200", content_type="audio/wav") == sent
    assert delta(req, route="/invocations", status="200", content_type="application/json") == 1
    assert delta(req, route="/invocations-response-stream", status="200", content_type="audio/wav") == 1
    assert delta(req, route="/invocations", status="415", content_type="text/plain") == 1
    assert delta(req, route="/invocations", status="400", content_type="audio/wav") == 1
    assert delta(req, route="unmatched", status="404") == 1
    assert delta(req, route="/invocations", status="405") == 1
    assert delta("serve_decode_failures_total", reason="unsupported_content_type") == 1
    assert delta("serve_decode_failures_total", reason="undecodable_audio") == 1
    assert delta("serve_decode_failures_total") == 2
    # Each request counted once in each histogram: latency for every answer, audio and speed for good ones.
    assert delta("serve_request_duration_seconds_count", route="/invocations") == sent + 1 + 3
    assert delta("serve_request_audio_seconds_count", route="/invocations") == sent + 1
    assert delta("serve_real_time_factor_count", route="/invocations") == sent + 1
    assert delta("serve_request_audio_seconds_count", route="/invocations-response-stream") == 1
    expect_audio = (sum(len(c) for c in clips[:4]) * sent / 4 + len(clips[0]) + len(clips[1])) / RATE
    assert delta("serve_request_audio_seconds_sum", route="/invocations") == pytest.approx(expect_audio, rel=1e-3)
    assert total(now, "serve_request_duration_seconds_bucket", route="/invocations", le="+Inf") == \
        total(now, "serve_request_duration_seconds_count", route="/invocations")
    # Batches: every clip forwarded waits in the queue once; passes ran on the CPU in float32 here.
    clips_forwarded = delta("serve_batch_size_sum")
    assert clips_forwarded >= sent + 2 + 1  # chunks of the streamed clip and stream windows come on top
    assert delta("serve_batch_queue_wait_seconds_count") == clips_forwarded
    assert delta("serve_forward_duration_seconds_count", device="cpu") == delta("serve_batch_size_count")
    # The live stream.
    assert delta("serve_streams_total", close_code="1000") == 1
    assert delta("serve_stream_audio_seconds_total") == pytest.approx(len(clips[2]) / RATE, abs=0.01)
    assert delta("serve_stream_duration_seconds_count") == 1
    assert total(now, "serve_streams_open") == 0 and total(now, "serve_streams_behind_real_time") == 0
    # Build info and load time, one series for both workers.
    info = [dict(ls) for (n, ls), v in now.items() if n == "serve_build_info" and v == 1]
    assert len(info) == 1 and info[0]["device"] == "cpu" and info[0]["lm"] == "false"
    assert info[0]["model_type"] == "wav2vec2" and int(info[0]["vocab_size"]) > 10
    assert info[0]["torch_version"] != "none" and info[0]["transformers_version"].startswith("5.")
    assert 0 < value(now, "serve_model_load_seconds") < 120


def test_request_log_lines(two_workers):
    srv = two_workers
    srv.post(b"hello", "text/plain", **{"X-Request-Id": "log-415"})
    srv.request("GET", "/not-here", headers={"X-Request-Id": "log-404"})
    srv.request("DELETE", "/ping", headers={"X-Request-Id": "log-405"})
    time.sleep(0.3)
    log = srv.log()

    def line(marker):
        found = [x for x in log.splitlines() if f"id={marker} " in x]
        assert len(found) == 1, found
        return found[0]

    x = line("log-415")
    assert "route=/invocations method=POST content_type=text/plain" in x and "status=415" in x
    assert 'error="unsupported content type' in x and re.search(r"latency_ms=\d+\.\d audio_s=|audio_s=0.00", x)
    x = line("log-404")
    assert "route=unmatched" in x and "status=404" in x and "path=/not-here" in x and "error=" in x
    x = line("log-405")
    assert "route=/ping method=DELETE" in x and "status=405" in x and "error=" in x
    assert not re.search(r"route=/ping method=GET .*status=200", log)  # health checks counted, not logged


def test_a_dead_workers_files_are_cleaned_and_totals_kept(two_workers):
    srv = two_workers
    before = total(scrape(srv), "serve_requests_total", route="/invocations")
    assert before > 0
    workers = psutil.Process(srv.proc.pid).children()
    assert len(workers) == 2
    victim = workers[0].pid
    assert list(srv.prom_dir.glob(f"gauge_livesum_{victim}.db"))
    workers[0].send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (list(srv.prom_dir.glob(f"gauge_livesum_{victim}.db"))
                                           or len(psutil.Process(srv.proc.pid).children()) < 2):
        time.sleep(0.2)
    assert not list(srv.prom_dir.glob(f"gauge_livesum_{victim}.db")), "child_exit did not mark the worker dead"
    srv.wait_ready()
    # Counters of the dead worker stay: totals never go backwards.
    assert total(scrape(srv), "serve_requests_total", route="/invocations") == before


@pytest.fixture(scope="module")
def one_thread(tmp_path_factory, tiny_model_dir):
    """One worker, one request thread: a scrape served like any request would wait for the transcription."""
    root = tmp_path_factory.mktemp("metrics1")
    srv = Server(make_opt_ml(root / "opt_ml", tiny_model_dir), root / "server.log", MODEL_SERVER_WORKERS="1",
                 SERVE_THREADS="1", SERVE_CHUNK_LENGTH_S="8", SERVE_CHUNK_STRIDE_S="2",
                 SERVE_METRICS_PATH="/custom/metrics").wait_ready()
    yield srv
    srv.stop()


def test_metrics_answer_within_100ms_while_a_20s_clip_is_transcribed(one_thread, clips):
    out, n = [], 0
    for c in clips:
        out.append(c)
        n += len(c)
        if n > 20 * RATE:
            break
    long_clip = np.concatenate(out)
    assert len(long_clip) >= 20 * RATE
    body = encode(long_clip, RATE)
    done, result = threading.Event(), {}

    def busy():
        try:
            result["reply"] = one_thread.post(body, "audio/wav")
        finally:
            done.set()

    t = threading.Thread(target=busy)
    t.start()
    timings = []
    while not done.is_set():
        started = time.monotonic()
        scrape(one_thread, "/custom/metrics")
        timings.append(time.monotonic() - started)
        time.sleep(0.02)
    t.join()
    assert result["reply"].status == 200
    assert len(timings) >= 5, "the transcription finished before /metrics could be measured"
    assert statistics.median(timings) < 0.1, timings
    assert sorted(timings)[int(0.9 * (len(timings) - 1))] < 0.1, timings
    assert one_thread.get("/metrics").status == 404  # moved


def test_metrics_off_and_bad_paths():
    from serve.settings import Settings, SettingsError

    assert app_for(FakeModel(), SERVE_METRICS="false").get("/metrics").status_code == 404
    client = app_for(FakeModel(), SERVE_METRICS_PATH="/m")
    assert client.get("/m").status_code == 200 and client.get("/metrics").status_code == 404
    for bad in ("metrics", "/ping", "/a b"):
        with pytest.raises(SettingsError, match="SERVE_METRICS_PATH"):
            Settings.from_env({"SERVE_METRICS_PATH": bad})
    with pytest.raises(SettingsError, match="SERVE_LOG_FORMAT"):
        Settings.from_env({"SERVE_LOG_FORMAT": "xml"})


def test_json_log_format(caplog, capsys):
    from serve import observe

    client = app_for(FakeModel(), SERVE_LOG_FORMAT="json")
    try:
        client.post("/invocations", data=b"x", content_type="text/plain", headers={"X-Request-Id": "json-1"})
        err = capsys.readouterr().err
        docs = [json.loads(x) for x in err.splitlines() if x.startswith("{") and "json-1" in x]
        assert len(docs) == 1, err
        d = docs[0]
        assert d["event"] == "request" and d["route"] == "/invocations" and d["status"] == 415
        assert d["error"].startswith("unsupported content type") and d["level"] == "warning"
        assert isinstance(d["latency_ms"], float) and d["audio_s"] == 0 and "time" in d and "pid" in d
    finally:
        for h in list(observe.log.handlers):
            observe.log.removeHandler(h)
        observe.log.propagate = True


def test_readme_lists_every_metric():
    from serve import metrics

    text = (ROOT / "docs" / "metrics.md").read_text()
    listed = dict(re.findall(r"^\| `(serve_[a-z_]+)` \| (counter|gauge|histogram) \|", text, re.M))
    assert listed, "docs/metrics.md's metrics table is missing"
    assert listed == dict(metrics.metric_names())


def test_http_layer_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom serve import app, observe, metrics\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"




def test_hooks_in_process():
    """The hooks the model side calls, counted in this process's registry (no multiprocess folder here)."""
    from concurrent.futures import Future

    from serve import metrics

    def sample(name, **labels):
        return metrics.REGISTRY.get_sample_value(name, labels or None) or 0.0

    beam0 = sample("serve_beam_search_duration_seconds_count")
    ok, failed, cancelled = Future(), Future(), Future()
    for f in (ok, failed, cancelled):
        metrics.time_future(f)
    ok.set_result("text")
    failed.set_exception(RuntimeError("boom"))
    cancelled.cancel()
    assert sample("serve_beam_search_duration_seconds_count") == beam0 + 1  # only the transcript that came back

    fwd0, wait0 = sample("serve_forward_duration_seconds_count", device="cpu", dtype="float32"), \
        sample("serve_batch_queue_wait_seconds_count")
    t = metrics.forward_started(3, [time.monotonic() - 0.2] * 3)
    t.done()
    assert sample("serve_forward_duration_seconds_count", device="cpu", dtype="float32") == fwd0 + 1
    assert sample("serve_batch_queue_wait_seconds_count") == wait0 + 3

    open0, behind0 = sample("serve_streams_open"), sample("serve_streams_behind_real_time")
    m = metrics.StreamMeter()
    m.set_behind(True)
    m.set_behind(True)  # counted once per stream
    assert sample("serve_streams_open") == open0 + 1 and sample("serve_streams_behind_real_time") == behind0 + 1
    m.closed(3.5, 4.0, 1000)
    assert sample("serve_streams_open") == open0 and sample("serve_streams_behind_real_time") == behind0


@pytest.mark.parametrize("body,content_type,reason", [
    (b"hello", "text/plain", "unsupported_content_type"),
    (b"", "audio/wav", "empty_body"),
    (b"{not json", "application/json", "invalid_json_body"),
    (b"RIFF junk", "audio/wav", "undecodable_audio"),
])
def test_decode_failure_reasons(body, content_type, reason):
    from serve import metrics

    before = metrics.REGISTRY.get_sample_value("serve_decode_failures_total", {"reason": reason}) or 0.0
    reply = app_for(FakeModel()).post("/invocations", data=body, content_type=content_type)
    assert 400 <= reply.status_code < 500
    assert metrics.REGISTRY.get_sample_value("serve_decode_failures_total", {"reason": reason}) == before + 1


def test_truncated_and_too_long_audio_reasons():
    from serve import metrics

    def count(reason):
        return metrics.REGISTRY.get_sample_value("serve_decode_failures_total", {"reason": reason}) or 0.0

    t0, l0 = count("truncated_audio"), count("audio_too_long")
    tone = np.sin(np.arange(RATE * 3) / 10).astype(np.float32) * 0.3
    full = wav(tone)
    assert app_for(FakeModel()).post("/invocations", data=full[:len(full) // 2],
                                     content_type="audio/wav").status_code == 400
    assert count("truncated_audio") == t0 + 1
    assert app_for(FakeModel(), SERVE_MAX_AUDIO_S="1").post("/invocations", data=full,
                                                          content_type="audio/wav").status_code == 413
    assert count("audio_too_long") == l0 + 1
