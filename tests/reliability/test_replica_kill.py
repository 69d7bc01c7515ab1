"""Kill a Serve replica under load (issue 16): with two replicas the other one answers (failures within 1 %);
with one, requests made while it restarts answer 503 promptly instead of hanging, and the service recovers."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import threading
import time

import httpx
import pytest

from hitmodels.config import ServeSettings, TrainConfig
from hitmodels.services import free_port, start_mlflow, stop_process
from tests.tables import random_table

pytestmark = pytest.mark.integration
MODEL = "kill-test"


@pytest.fixture(scope="module")
def registered(tmp_path_factory, ray_local):
    from hitmodels.registry import promote
    from hitmodels.train import train

    port = free_port()
    proc = start_mlflow(tmp_path_factory.mktemp("kill-mlflow"), "127.0.0.1", port)
    uri = f"http://127.0.0.1:{port}"
    cfg = TrainConfig(family="lasso", model_name=MODEL, experiment=MODEL)
    promote(MODEL, train(random_table(3), cfg, uri).version, tracking_uri=uri)
    yield uri
    stop_process(proc)


def _replica_pids(app: str) -> list[int]:
    """The pids of ``app``'s live replicas, from the GCS's actor table (the state API needs the dashboard,
    which the test cluster runs without)."""
    from ray._private import state

    return [a["Pid"] for a in state.actors().values()
            if a["State"] == "ALIVE" and a["ActorClassName"].startswith(f"ServeReplica:{app}:")]


def _running(app: str) -> int:
    from ray import serve

    status = serve.status().applications[app].deployments["HitMusicService"]
    return status.replica_states.get("RUNNING", 0)


def _load(url: str, body: dict, rate: float, seconds: float, kill_at: float, kill) -> list[tuple]:
    """``rate`` requests/s for ``seconds`` from a pool of clients, ``kill()`` at ``kill_at`` s; per request
    (start offset, status (0: no answer within 10 s), seconds, what a failure said)."""
    results: list[tuple] = []
    lock = threading.Lock()
    t0 = time.monotonic()

    def one(start: float) -> None:
        with httpx.Client(timeout=10) as c:
            t = time.monotonic()
            try:
                r = c.post(f"{url}/predict", json=body)
                status, text = r.status_code, r.text[:200]
            except httpx.TransportError as exc:
                status, text = 0, repr(exc)[:200]
            with lock:
                results.append((start, status, time.monotonic() - t, "" if status == 200 else text))

    with cf.ThreadPoolExecutor(32) as pool:
        killed = False
        for i in range(int(rate * seconds)):
            start = i / rate
            while time.monotonic() - t0 < start:
                time.sleep(0.001)
            if not killed and start >= kill_at:
                kill()
                killed = True
            pool.submit(one, start)
    return results


def _report(what: str, results, kill_at: float) -> dict:
    """Counts before and after the kill; the target (issue 16) is about the requests from the kill on."""
    failed = sorted(r for r in results if r[1] != 200)
    after = [r for r in results if r[0] >= kill_at]
    failed_after = [r for r in failed if r[0] >= kill_at]
    worst_failed = max((r[2] for r in failed), default=0.0)
    first_ok = min((r[0] for r in after if r[1] == 200), default=float("nan"))
    print(f"{what}: sent {len(results)}; before the kill {len(results) - len(after)} sent, "
          f"{len(failed) - len(failed_after)} failed; from the kill on {len(after)} sent, {len(failed_after)} failed "
          f"({100 * len(failed_after) / len(after):.2f} %), statuses of failures {sorted({r[1] for r in failed})}, "
          f"slowest failure {worst_failed:.2f} s, slowest answer after the kill {max(r[2] for r in after):.2f} s, "
          f"first request answered 200 after the kill sent {first_ok - kill_at:.1f} s after it")
    for start, status, took, text in failed[:10]:
        print(f"  failed: sent at {start:.2f} s, status {status} after {took:.2f} s: {text[:60]!r}")
    return {"failed": failed, "failed_after": failed_after, "after": after, "worst_failed": worst_failed}


def test_two_replicas_survive_a_kill_under_load(registered, serve_port):
    from ray import serve

    from serve.deploy import deploy

    app = "kill-two"
    url = deploy(ServeSettings(model_name=MODEL, tracking_uri=registered), port=serve_port, app_name=app,
                 route_prefix=f"/{app}", replicas=2)
    try:
        body = {"rows": [{k: float(v) for k, v in random_table(4, n=1).drop(
            columns=["track_id", "artist_id", "popularity", "error"]).iloc[0].items()}]}
        assert httpx.post(f"{url}/predict", json=body, timeout=30).status_code == 200
        pids = _replica_pids(app)
        assert len(pids) == 2
        killed_at = {}

        def kill() -> None:
            os.kill(pids[0], signal.SIGKILL)
            killed_at["t"] = time.monotonic()

        results = _load(url, body, rate=25, seconds=16, kill_at=5, kill=kill)
        report = _report("two replicas, one killed at 5 s of 16 s at 25 req/s", results, 5)
        print(f"running replicas {time.monotonic() - killed_at['t']:.1f} s after the kill: {_running(app)}")
        # the target: a kill costs at most 1 % of the requests from then on (failures before it, if any, are
        # printed above: a warm-up problem of their own)
        assert len(report["failed_after"]) <= 0.01 * len(report["after"]), report["failed_after"][:20]
    finally:
        serve.delete(app)  # its replicas hold a CPU of the 2-CPU test cluster


def test_one_replica_answers_503_promptly_while_it_restarts(registered, serve_port):
    from ray import serve

    from serve.deploy import deploy

    app = "kill-one"
    url = deploy(ServeSettings(model_name=MODEL, tracking_uri=registered), port=serve_port, app_name=app,
                 route_prefix=f"/{app}", replicas=1)
    try:
        body = {"rows": [{k: float(v) for k, v in random_table(4, n=1).drop(
            columns=["track_id", "artist_id", "popularity", "error"]).iloc[0].items()}]}
        assert httpx.post(f"{url}/predict", json=body, timeout=30).status_code == 200
        (pid,) = _replica_pids(app)
        results = _load(url, body, rate=10, seconds=10, kill_at=2, kill=lambda: os.kill(pid, signal.SIGKILL))
        report = _report("one replica, killed at 2 s of 10 s at 10 req/s", results, 2)
        # the kill happened and its outage was seen (a replica takes seconds to come back), so what follows
        # is about the requests it failed: each failed fast, with an answer, not a hang until the client gave up
        assert not os.path.exists(f"/proc/{pid}/cmdline") or not open(f"/proc/{pid}/cmdline", "rb").read()
        assert report["failed_after"], "no request failed while the only replica restarted: the kill did not land"
        assert all(r[1] in (502, 503, 504) for r in report["failed"]), report["failed"][:20]
        assert report["worst_failed"] < 5
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.post(f"{url}/predict", json=body, timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert httpx.post(f"{url}/predict", json=body, timeout=10).status_code == 200
        assert _replica_pids(app) and pid not in _replica_pids(app)  # answered by a new replica
    finally:
        serve.delete(app)
