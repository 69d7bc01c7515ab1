"""Real HTTP against a running Serve app: endpoints, validation, audio upload, hot swap, registry outage.

The module has an MLflow server of its own, because one test stops it.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import time

import httpx
import numpy as np
import pytest

from hitmodels.config import ServeSettings, TrainConfig
from hitmodels.services import free_port, start_mlflow, stop_process
from tables import random_table

pytestmark = pytest.mark.integration
MODEL = "serve-test"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    port, home = free_port(), tmp_path_factory.mktemp("serve-mlflow")
    state = {"uri": f"http://127.0.0.1:{port}", "proc": start_mlflow(home, "127.0.0.1", port), "home": home,
             "port": port}
    yield state
    stop_process(state["proc"])  # the outage test restarts it


@pytest.fixture(scope="module")
def app(registry, serve_port):
    from hitmodels.registry import promote
    from hitmodels.train import train
    from serve.deploy import deploy

    cfg = TrainConfig(ae_epochs=5, mlp_epochs=5, model_name=MODEL, experiment=MODEL)
    versions = [train(random_table(s), cfg, registry["uri"]).version for s in (1, 2)]
    promote(MODEL, versions[0], tracking_uri=registry["uri"])
    settings = ServeSettings(model_name=MODEL, tracking_uri=registry["uri"], poll_interval_s=1.0, max_rows=8,
                             max_upload_mb=1.0, max_body_mb=0.5, max_lyric_lines=500)
    url = deploy(settings, port=serve_port, app_name="serve-test", route_prefix="/serve-test")
    yield {"url": url, "versions": versions, **registry}
    from ray import serve

    serve.delete("serve-test")  # its replica holds half a CPU of the 2-CPU test cluster: later modules need it


def good_row(url: str) -> dict:
    cols = httpx.get(f"{url}/features", timeout=30).json()["columns"]
    row = random_table(9, 1)
    return {"track_id": "x1", **{c: float(row.iloc[0][c]) for c in cols}}


def test_health_model_features_and_docs(app):
    url = app["url"]
    h = httpx.get(f"{url}/healthz", timeout=30).json()
    assert h["status"] == "ok" and h["registry_ok"] and h["model_version"] == app["versions"][0]
    m = httpx.get(f"{url}/model", timeout=30).json()
    assert m["alias"] == "champion" and "test_mae" in m["test_metrics"] and m["run_id"]
    from datetime import datetime

    trained, registered = datetime.fromisoformat(m["trained"]), datetime.fromisoformat(m["registered"])
    assert trained <= registered and trained.tzinfo is not None  # trained first, then registered
    assert httpx.get(f"{url}/docs", timeout=30).status_code == 200
    paths = httpx.get(f"{url}/openapi.json", timeout=30).json()["paths"]
    assert {"/predict", "/predict/audio", "/healthz", "/model"} <= set(paths)


def test_http_port_is_served_by_haproxy_where_it_is_installed(app, serve_port):
    """With HAProxy installed (make setup installs it where it can) Serve's HTTP port is HAProxy's, in
    front of the replicas' own HTTP servers; without it, Ray's Python proxy's."""
    import psutil

    from hitmodels.services import haproxy_binary, serve_ingress_in_use

    owners = {psutil.Process(c.pid).name() for c in psutil.net_connections("tcp")
              if c.status == psutil.CONN_LISTEN and c.laddr.port == serve_port and c.pid}
    if haproxy_binary() is None:
        assert serve_ingress_in_use() == "proxy"
        pytest.skip("haproxy is not installed here: Serve uses Ray's Python proxy")
    assert serve_ingress_in_use() == "haproxy"
    assert httpx.get(f"{app['url']}/healthz", timeout=30).json()["status"] == "ok"
    if not owners:
        pytest.skip("the listener's process is not visible to this user (not root)")
    assert owners == {"haproxy"}, owners


def test_haproxy_side_ports_listen_on_loopback_and_its_admin_socket_is_private(app):
    """Ray's HAProxy template binds stats and metrics on every interface and makes the admin socket mode
    666; serve/haproxy_loopback.sh moves both to 127.0.0.1 and makes the socket 0600."""
    import os
    import stat

    import psutil

    from hitmodels.services import serve_ingress_in_use

    if serve_ingress_in_use() != "haproxy":
        pytest.skip("haproxy is not installed here: Serve uses Ray's Python proxy")
    ports = {int(os.environ[k]) for k in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")}
    listening = [c for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port in ports]
    if not listening:
        pytest.skip("the listeners are not visible to this user (not root)")
    assert {c.laddr.port for c in listening} == ports
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}, listening
    from pathlib import Path

    base = Path(os.environ["RAY_SERVE_HAPROXY_SOCKET_PATH"])  # Serve puts it in a directory per node
    sockets = [p for p in base.parent.glob(f"*/{base.name}") if p.is_socket()]
    assert sockets, f"no admin socket under {base.parent}"
    for sock in sockets:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600, (sock, oct(sock.stat().st_mode))


def test_predict_returns_popularity_class_and_version(app):
    url = app["url"]
    resp = httpx.post(f"{url}/predict", json={"rows": [good_row(url)] * 3}, timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_name"] == MODEL and body["model_version"] == app["versions"][0]
    assert len(body["predictions"]) == 3
    for p in body["predictions"]:
        assert p["track_id"] == "x1" and 0 <= p["popularity"] <= 100 and p["class"] in {"low", "medium", "high"}


def test_answer_batches_only_requests_that_overlap(monkeypatch):
    """The replica's choice, without HTTP (whether requests overlap inside a replica over HTTP depends on
    timing): alone -> the model directly; with other requests in flight -> @serve.batch, which combines the
    concurrent ones into one model call and hands each its own rows back."""
    import asyncio
    from types import SimpleNamespace

    from serve.app import HitMusicService, Rows, Served

    calls = []

    class Model:
        def predict_array(self, X):
            calls.append(len(X))
            return {"popularity": X[:, 0] * 10.0}

    from ray import serve

    # @serve.batch asks the replica context for max_ongoing_requests; outside a replica there is none
    monkeypatch.setattr(serve, "get_replica_context",
                        lambda: SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=256)))
    svc = HitMusicService.func_or_class.__new__(HitMusicService.func_or_class)
    svc.settings = ServeSettings(max_batch_size=256, batch_wait_timeout_s=0.05)
    served = Served("m", "7", Model(), ["x"], {})
    svc._in_flight, svc.requests_batched, svc.requests_direct = 1, 0, 0
    rows = lambda v: Rows(np.array([[v], [v + 1]], dtype=np.float64), ["a", "b"])

    async def scenario():
        alone = await svc._answer(rows(1.0), served)
        svc._in_flight = 3  # three requests inside the replica at once
        together = await asyncio.gather(*(svc._answer(rows(v), served) for v in (2.0, 4.0, 6.0)))
        return alone, together

    try:
        alone, together = asyncio.run(scenario())
    finally:
        # the batcher keeps its queue (bound to this test's event loop, through weak references) on the
        # decorator's lazy wrapper; left there, the deployment class no longer pickles for later deploys
        HitMusicService.func_or_class._predict_batched.set_max_batch_size.__self__._queue = None
    assert (svc.requests_direct, svc.requests_batched) == (1, 3)
    assert calls == [2, 6]  # one direct call of 2 rows, then one batched call of 3 x 2 rows
    assert [p["popularity"] for p in json.loads(alone.body)["predictions"]] == [10.0, 20.0]
    for v, r in zip((2.0, 4.0, 6.0), together):
        body = json.loads(r.body)
        assert body["model_version"] == "7" and [p["popularity"] for p in body["predictions"]] == [10 * v, 10 * v + 10]


def test_lone_requests_skip_the_batcher_and_overlapping_ones_are_answered_alike(app):
    """Over real HTTP: a request alone in the replica calls the model directly (no batch wait); a burst of
    overlapping requests (batched or not, as they happen to interleave) gives the same answer for the same row."""
    url = app["url"]
    row = good_row(url)
    counts = lambda: httpx.get(f"{url}/healthz", timeout=30).json()["replica"]
    before = counts()
    alone = [httpx.post(f"{url}/predict", json={"rows": [row]}, timeout=30).json() for _ in range(3)]
    after_alone = counts()
    assert after_alone["requests_direct"] - before["requests_direct"] == 3
    assert after_alone["requests_batched"] == before["requests_batched"]
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=64)) as client, \
            cf.ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda _: client.post(f"{url}/predict", json={"rows": [row] * 4}), range(200)))
    assert all(r.status_code == 200 for r in together)
    after = counts()
    assert (after["requests_batched"] + after["requests_direct"]
            - after_alone["requests_batched"] - after_alone["requests_direct"]) == 200
    lone = alone[0]["predictions"][0]
    for r in together:
        for p in r.json()["predictions"]:
            assert p["popularity"] == pytest.approx(lone["popularity"], abs=1e-4) and p["class"] == lone["class"]


@pytest.mark.parametrize("mutate, loc_field, msg", [
    (lambda r: r.update(bogus=1.0), "bogus", "unknown field"),
    (lambda r: r.pop("MEL_3"), "MEL_3", "field required"),
    (lambda r: r.update(MFCC_2="high"), "MFCC_2", "must be a number"),
    (lambda r: r.update(ZCR=2.0), "ZCR", "out of range"),
    (lambda r: r.update(MEL_1=None), "MEL_1", "must be a number"),
])
def test_predict_422_names_row_and_field(app, mutate, loc_field, msg):
    url = app["url"]
    good = good_row(url)
    bad = dict(good)
    mutate(bad)
    resp = httpx.post(f"{url}/predict", json={"rows": [good, bad]}, timeout=30)
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert any(d["loc"] == ["body", "rows", 1, loc_field] and msg in d["msg"] for d in detail), detail


def test_predict_rejects_nan_and_too_many_rows(app):
    url = app["url"]
    good = good_row(url)
    # Python's json writes NaN as a bare literal, which JSON parsers in the wild (and Starlette) accept
    nan = httpx.post(f"{url}/predict", content=json.dumps({"rows": [dict(good, MEL_2=float("nan"))]}),
                     headers={"content-type": "application/json"}, timeout=30)
    assert nan.status_code == 422 and any(d["loc"][-1] == "MEL_2" for d in nan.json()["detail"])
    many = httpx.post(f"{url}/predict", json={"rows": [good] * 9}, timeout=30)
    assert many.status_code == 422 and "at most 8" in many.text
    assert httpx.post(f"{url}/predict", json={"nope": []}, timeout=30).status_code == 422


@pytest.mark.parametrize("name", ["edm.mp3", "soul.mp3"])
def test_audio_upload_of_real_previews(app, shared_dir, name):
    url = app["url"]
    data = (shared_dir / "data/audio" / name).read_bytes()
    resp = httpx.post(f"{url}/predict/audio", files={"file": (name, data, "audio/mpeg")},
                      data={"lyrics": "I love you\nyou love me", "metadata": '{"artist_popularity": 70}',
                            "track_id": name}, timeout=60)
    assert resp.status_code == 200, resp.text
    p = resp.json()["predictions"][0]
    assert p["track_id"] == name and 0 <= p["popularity"] <= 100


@pytest.mark.parametrize("payload, status, reason", [
    (b"", 422, "empty"), (b"definitely not audio" * 50, 422, "undecodable"), (b"\0" * (2 * 2**20), 413, "larger"),
])
def test_audio_upload_errors(app, payload, status, reason):
    resp = httpx.post(f"{app['url']}/predict/audio", files={"file": ("x.mp3", payload, "audio/mpeg")}, timeout=60)
    assert resp.status_code == status, resp.text
    assert reason in resp.text


def test_bodies_over_the_bound_answer_413_before_parsing(app):
    """/predict's bound (0.5 MiB here) holds from Content-Length and, without one, while the body streams;
    the upload's (1 MiB) holds before the multipart body is spooled."""
    url = app["url"]
    big = b'{"rows": [' + b'{"x": 1.0},' * 60_000 + b'{"x": 1.0}]}'  # ~0.7 MB of otherwise valid JSON
    declared = httpx.post(f"{url}/predict", content=big, headers={"Content-Type": "application/json"}, timeout=30)
    assert declared.status_code == 413, declared.text
    assert declared.json()["detail"][0]["loc"] == ["body"] and "/predict" in declared.json()["detail"][0]["msg"]

    def chunks():  # no Content-Length: chunked transfer encoding
        for a in range(0, len(big), 65536):
            yield big[a:a + 65536]

    streamed = httpx.post(f"{url}/predict", content=chunks(), headers={"Content-Type": "application/json"},
                          timeout=30)
    assert streamed.status_code == 413, streamed.text
    upload = httpx.post(f"{url}/predict/audio", files={"file": ("x.wav", b"\0" * (3 * 2**20), "audio/wav")},
                        timeout=30)
    assert upload.status_code == 413 and upload.json()["detail"][0]["loc"] == ["body", "file"], upload.text
    assert httpx.post(f"{url}/predict", json={"rows": [good_row(url)]}, timeout=30).status_code == 200


def test_lyrics_past_their_bound_answer_422_naming_lyrics(app, shared_dir):
    """20,000 one-letter lines took a replica from 865 MB to 8.7 GB before the bound (500 lines here)."""
    data = (shared_dir / "data/audio/edm.mp3").read_bytes()
    resp = httpx.post(f"{app['url']}/predict/audio", files={"file": ("edm.mp3", data, "audio/mpeg")},
                      data={"lyrics": "a\n" * 20_000}, timeout=60)
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"][0]
    assert detail["loc"] == ["body", "lyrics"] and detail["reason"] == "lyrics_too_long", detail


def test_docs_work_offline(app):
    """/docs and /redoc reference no external host; their scripts and styles are served by the app."""
    import re
    from urllib.parse import urljoin, urlparse

    url = app["url"]
    for page in ("docs", "redoc"):
        resp = httpx.get(f"{url}/{page}", timeout=30)
        assert resp.status_code == 200
        refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)', resp.text) + re.findall(r"url\s*:\s*'([^']+)'", resp.text)
        assert refs, resp.text[:500]
        for ref in refs:
            full = urljoin(f"{url}/{page}", ref)
            assert urlparse(full).netloc == urlparse(url).netloc, f"{page} loads {ref} from another host"
            assert httpx.get(full, timeout=30).status_code == 200, full


def test_audio_upload_bad_metadata(app, tmp_path):
    import soundfile as sf

    wav = tmp_path / "tone.wav"
    t = np.arange(22050 * 2) / 22050
    sf.write(wav, 0.3 * np.sin(2 * np.pi * 440 * t), 22050)
    for meta, field in [('{"artist_popularity": 300}', "artist_popularity"), ('{"shoe_size": 3}', "shoe_size"),
                        ("[1, 2]", "metadata")]:
        resp = httpx.post(f"{app['url']}/predict/audio", files={"file": ("t.wav", wav.read_bytes(), "audio/wav")},
                          data={"metadata": meta}, timeout=60)
        assert resp.status_code == 422 and field in resp.text, resp.text


def test_hot_swap_then_registry_outage(app, registry):
    """Promote another version: replicas switch within the poll interval without failing requests in
    flight; then stop the registry: they keep serving and /healthz says so."""
    from hitmodels.registry import promote

    url, (v1, v2) = app["url"], app["versions"]
    body = {"rows": [good_row(url)]}
    seen, failures = set(), 0

    def hammer(deadline: float) -> None:
        nonlocal failures
        with httpx.Client(timeout=30) as c:
            while time.monotonic() < deadline:
                r = c.post(f"{url}/predict", json=body)
                if r.status_code != 200:
                    failures += 1
                else:
                    seen.add(r.json()["model_version"])

    with cf.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(hammer, time.monotonic() + 12) for _ in range(2)]
        time.sleep(1)
        promote(MODEL, v2, tracking_uri=app["uri"])
        for f in futures:
            f.result()
    assert failures == 0
    assert seen == {v1, v2}
    assert httpx.get(f"{url}/healthz", timeout=30).json()["model_version"] == v2

    stop_process(app["proc"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        h = httpx.get(f"{url}/healthz", timeout=30).json()
        if not h["registry_ok"]:
            break
        time.sleep(0.5)
    assert h["registry_ok"] is False and h["status"] == "degraded" and h["registry_error"]
    # a short reason, not the exception's text (which named the server's address and the retry internals)
    assert h["registry_error"].startswith("registry unreachable (") and "127.0.0.1" not in h["registry_error"]
    r = httpx.post(f"{url}/predict", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["model_version"] == v2

    # the server comes back (same store): the next poll finds it, and the replica says so
    registry["proc"] = start_mlflow(registry["home"], "127.0.0.1", registry["port"])
    back = time.monotonic()
    while time.monotonic() < back + 60:
        h = httpx.get(f"{url}/healthz", timeout=30).json()
        if h["registry_ok"]:
            break
        time.sleep(0.5)
    print(f"registry back: /healthz ok again after {time.monotonic() - back:.1f} s")
    assert h["status"] == "ok" and h["registry_error"] is None and h["model_version"] == v2
