"""Faults in serving: a worker killed with SIGKILL under load, and SIGTERM to the server under load.

kill -9: gunicorn replaces the worker, /ping stays healthy (the other worker answers), the new worker loads
within the bound, only requests in flight when the worker died fail, none after. SIGTERM: every request
already accepted completes with its transcript and the server exits 0 within 30 s (SageMaker's SIGKILL).
"""
from __future__ import annotations

import time

import pytest

import reliability_helpers as rh

LENGTHS_S = [0.5, 1, 2, 3, 1.5, 2.5]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return rh.tiny_model(tmp_path_factory.mktemp("fault_model"))


def start(tmp_path, model_dir, workers: int = 2, **env) -> rh.Observed:
    srv = rh.Observed(rh.opt_ml_with_model(tmp_path / "opt_ml", model_dir), tmp_path / "server.log",
                      **{"MODEL_SERVER_WORKERS": str(workers), "SERVE_THREADS": "8", **env}).wait_ready()
    srv.wait_workers(workers)
    return srv


def test_kill_9_worker_under_load(tmp_path, model_dir):
    srv = start(tmp_path, model_dir)
    try:
        bodies = rh.mixed_bodies(srv.port, LENGTHS_S)
        # Enough requests that the load outlasts the kill by several seconds (the survivor answers ~50/s here).
        fig = rh.kill_worker_under_load(srv, bodies, total=480, concurrency=32, kill_after=30)
        result = fig["result"]
        after = len([t for t in result.ok_after if t > fig.get("killed_at", 0) + 2.0])
        print(f"kill -9: {len(result.failures)} of {result.sent} failed, {after} answered 2 s or more after the kill, "
              f"replacement loaded in "
              f"{fig.get('replaced_s', float('nan')):.1f} s (model load at start "
              f"{rh.model_load_seconds(srv.log()):.1f} s), /ping statuses {set(fig['ping_statuses'])}")
        assert "replaced_s" in fig, srv.log()[-3000:]
        assert fig["replaced_s"] < 60
        assert set(fig["ping_statuses"]) == {200}, \
            f"/ping failed while the worker was replaced: {[p for p in fig['pings'] if p[1] != 200]}"
        # Only what was in flight on the killed worker failed: at most one request per client, each cut off
        # (no HTTP answer) right when the worker died; every request after that succeeded.
        killed = fig["killed_at"]
        assert len(result.failures) <= 32
        assert all(t - killed < 2.0 and "no HTTP" not in what and ":" in what for t, what in result.failures), \
            result.failures
        assert not [what for _, what in result.failures if what[:3].isdigit()], "an HTTP error status, not a cut-off"
        assert after > 40, "too few requests after the kill"
        assert result.sent == 480
        assert fig["victim"] not in srv.worker_pids() and len(srv.worker_pids()) == 2
    finally:
        srv.stop()


def test_sigterm_under_load_completes_in_flight_requests_and_exits_in_time(tmp_path, model_dir):
    # A 1.5 s batching window keeps requests in flight long enough to signal during them.
    srv = start(tmp_path, model_dir, SERVE_MAX_BATCH_SIZE="8", SERVE_MAX_BATCH_WAIT_MS="1500")
    try:
        bodies = rh.mixed_bodies(srv.port, LENGTHS_S)
        fig = rh.sigterm_under_load(srv, bodies, clients=24)
        print(f"SIGTERM: {fig['answered']} in-flight requests answered, {len(fig['bad'])} bad, "
              f"exit {fig['exit_code']} after {fig['exit_s']:.1f} s")
        assert fig["exit_code"] == 0 and fig["exit_s"] < 30
        assert fig["answered"] == 24 and not fig["bad"], fig["bad"]
        with pytest.raises(OSError):
            srv.get("/ping", timeout=2)
    finally:
        srv.stop()


def test_ping_answers_at_once_with_more_requests_in_flight_than_threads(tmp_path, model_dir):
    """Two request threads, sixteen transcriptions in flight: /ping still answers well inside SageMaker's 2 s."""
    srv = start(tmp_path, model_dir, workers=1, SERVE_THREADS="2", SERVE_MAX_BATCH_SIZE="8", SERVE_MAX_BATCH_WAIT_MS="1000")
    try:
        bodies = rh.mixed_bodies(srv.port, [2.0])
        pings = []

        def probe(result: rh.LoadResult):
            time.sleep(0.5)
            for _ in range(10):
                pings.append(rh.send(srv.port, b"", {}, path="/ping", method="GET", timeout_s=2))
                time.sleep(0.2)

        result = rh.run_load(srv.port, bodies, total=32, concurrency=16, max_s=120, during=probe)
        assert not result.failures and result.sent == 32
        assert [p.status for p in pings] == [200] * 10, [(p.status, p.error) for p in pings]
        slowest = max(p.seconds for p in pings)
        print(f"/ping with 16 requests in flight on 2 threads: slowest {slowest * 1000:.0f} ms")
        assert slowest < 1.0
    finally:
        srv.stop()
