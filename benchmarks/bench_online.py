"""Online latency and throughput: Ray Serve against a plain FastAPI + uvicorn process, same model, one run.

    .venv/bin/python benchmarks/bench_online.py [--seconds 10] [--rates 50 100 200]

Starts its own MLflow server, trains and registers a small model on a generated table with the full
feature width, deploys it on Ray Serve (local Ray) and in a plain uvicorn process (``benchmarks/plain_app.py``),
then drives both from this process with an open-loop load generator (requests fired on a fixed schedule,
so a slow server cannot slow the offered load) and prints p50/p99 latency at each rate, the maximum
throughput with single-track requests (closed loop, 16 in flight), and tracks/s with 256-track requests.
Everything binds to 127.0.0.1; every server is stopped at the end. Targets on 2 cores: p99 <= 25 ms at
100 requests/s; >= 5,000 tracks/s batched.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hitmodels.config import ServeSettings, ServiceConfig, TrainConfig  # noqa: E402
from hitmodels.services import (INGRESS_CHOICES, ensure_ray_token, free_port, serve_ingress_in_use, serve_runtime_env,  # noqa: E402
                                start_mlflow, stop_process, wait_http)
from tables import random_table  # noqa: E402


JSON = {"Content-Type": "application/json"}


CLIENT_BACKLOG = -1  # status of a request the load generator did not send: too many were still in flight


async def timed_open_loop(url: str, body: bytes | None, rate: float, seconds: float,
                          request: dict | None = None, max_in_flight: int = 256) -> list[tuple[float, float, int]]:
    """Fire requests at ``rate`` per second for ``seconds``, on a fixed schedule (a slow server cannot slow
    the offered load); per request ``(seconds since the start it was due, latency s from then, status)``,
    status 0 for no answer. Each is a POST of JSON ``body``, or of ``request`` (httpx's keyword arguments,
    e.g. ``files``). At most ``max_in_flight`` are on the wire at once, each on a connection of its own; a
    request due while all are busy waits for one (its wait counts in its latency), and one due while
    ``max_in_flight`` more already wait is not sent and counts as failed (:data:`CLIENT_BACKLOG`). One
    single-connection client per slot: httpx's shared pool scans every connection for every queued
    request, and under a backlog that scan alone saturated a core here, so that the load generator, not
    the server, was what got measured."""
    records: list[tuple[float, float, int]] = []
    request = request or {"content": body, "headers": JSON}
    clients = [httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1)) for _ in range(max_in_flight)]
    idle: asyncio.Queue = asyncio.Queue()
    for c in clients:
        idle.put_nowait(c)
    waiting = 0
    start = time.perf_counter()

    async def one(due: float):
        nonlocal waiting
        client = await idle.get()
        waiting -= 1
        try:
            status = (await client.post(url, **request)).status_code
        except httpx.TransportError:
            status = 0
        finally:
            idle.put_nowait(client)
        records.append((due, time.perf_counter() - start - due, status))

    try:
        tasks = []
        for i in range(int(rate * seconds)):
            due = i / rate
            delay = start + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if waiting >= max_in_flight:
                records.append((due, 0.0, CLIENT_BACKLOG))
                continue
            waiting += 1  # here, not in the task: after a stall many are due before any task has run
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*[c.aclose() for c in clients])
    return records


async def open_loop(url: str, body: bytes | None, rate: float, seconds: float,
                    request: dict | None = None) -> tuple[np.ndarray, int]:
    """:func:`timed_open_loop`'s latencies (s) of the requests answered 200, and the count of the others."""
    records = await timed_open_loop(url, body, rate, seconds, request)
    return np.array([r[1] for r in records if r[2] == 200]), sum(r[2] != 200 for r in records)


async def closed_loop(url: str, body: bytes, in_flight: int, seconds: float) -> int:
    """Requests completed with ``in_flight`` concurrent clients in ``seconds``."""
    done = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=30) as client:
        async def worker():
            nonlocal done
            while time.perf_counter() < deadline:
                r = await client.post(url, content=body, headers=JSON)
                done += r.status_code == 200

        await asyncio.gather(*[worker() for _ in range(in_flight)])
    return done


def measure(name: str, url: str, row: dict, rates: list[float], seconds: float) -> dict:
    # encoded once: json-encoding 256 rows per request would make the load generator the bottleneck
    one, batch = orjson.dumps({"rows": [row]}), orjson.dumps({"rows": [row] * 256})
    for _ in range(20):  # warm up connections and the model
        httpx.post(url, content=one, headers=JSON, timeout=30)
    out = {}
    for rate in rates:
        lat, errors = asyncio.run(open_loop(url, one, rate, seconds))
        p50, p99 = (np.percentile(lat, [50, 99]) * 1000) if len(lat) else (float("nan"),) * 2
        out[rate] = (p50, p99, errors)
        print(f"{name:8s} {rate:5.0f} req/s: p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  errors {errors}", flush=True)
    out["max_rps"] = asyncio.run(closed_loop(url, one, 16, seconds)) / seconds
    out["tracks_per_s"] = asyncio.run(closed_loop(url, batch, 4, seconds)) * 256 / seconds
    print(f"{name:8s} max throughput {out['max_rps']:8.0f} req/s (1 track); "
          f"{out['tracks_per_s']:8.0f} tracks/s (256-track requests)", flush=True)
    return out


def serve_env() -> str:
    """The Ray Serve tuning variables this run inherited (they must be set before Ray starts)."""
    found = {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}
    return ", ".join(f"{k}={v}" for k, v in sorted(found.items())) or "defaults"


@contextlib.contextmanager
def serve_stack(ingress: str):
    """What every online benchmark runs against, all on 127.0.0.1 and stopped at the end: an MLflow server
    of its own, a small HitMusicNet (``bench@champion``) trained on a 400-row generated table with the full
    feature width, and a local Ray (token auth, a throwaway token) with Serve started on a free port. Yields
    ``uri`` (MLflow), ``serve_port``, ``row`` (one valid feature row) and ``tmp`` (a scratch directory)."""
    haproxy_dir = Path(tempfile.mkdtemp(prefix="hm-hap-", dir="/tmp"))
    os.environ.update(serve_runtime_env(ingress, private_dir=haproxy_dir))  # before Ray starts
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(ensure_ray_token(haproxy_dir / "token")))

    import ray

    from hitmodels.registry import promote
    from hitmodels.train import train
    from serve.deploy import PROXY_LOGGING

    tmp = Path(tempfile.mkdtemp(prefix="bench-online-"))
    mlflow_port, serve_port = free_port(), free_port()
    mlflow_proc = start_mlflow(tmp / "mlflow", "127.0.0.1", mlflow_port)
    uri = f"http://127.0.0.1:{mlflow_port}"
    try:
        table = random_table(0, n=400)
        result = train(table, TrainConfig(ae_epochs=5, mlp_epochs=5, model_name="bench", experiment="bench"), uri)
        promote("bench", result.version, tracking_uri=uri)
        cols = [c for c in table.columns if c not in ("track_id", "artist_id", "error", "popularity")]
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": uri}})
        from ray import serve

        serve.start(http_options={"host": "127.0.0.1", "port": serve_port}, logging_config=PROXY_LOGGING)
        yield {"uri": uri, "serve_port": serve_port, "row": {c: float(table.iloc[0][c]) for c in cols}, "tmp": tmp}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stop_process(mlflow_proc)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(haproxy_dir, ignore_errors=True)


@contextlib.contextmanager
def plain_server(uri: str, model: str = "models:/bench@champion"):
    """The peer: ``plain_app.py`` (the same model, parsing and validation in one uvicorn process, no Ray) on a
    free port; yields ``(process, base URL)``."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "plain_app:app", "--host", "127.0.0.1", "--port",
                             str(port), "--log-level", "warning"], cwd=Path(__file__).parent,
                            env=dict(os.environ, MLFLOW_TRACKING_URI=uri, BENCH_MODEL=model), start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout_s=120, proc=proc)
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each measurement (default 10)")
    p.add_argument("--rates", type=float, nargs="+", default=[50, 100, 200], help="offered loads, req/s")
    p.add_argument("--ingress", choices=INGRESS_CHOICES, default=ServiceConfig().serve_ingress,
                   help="Serve's HTTP ingress: haproxy, Ray's Python proxy, or auto (haproxy where installed); "
                        "default $HITMUSIC_SERVE_INGRESS or auto")
    args = p.parse_args()
    from serve.deploy import deploy

    with serve_stack(args.ingress) as stack, plain_server(stack["uri"]) as (_, plain_url):
        uri, serve_port, row = stack["uri"], stack["serve_port"], stack["row"]
        serve_url = deploy(ServeSettings(model_name="bench", tracking_uri=uri, poll_interval_s=3600),
                           port=serve_port, app_name="bench", route_prefix="/")
        direct_url = deploy(ServeSettings(model_name="bench", tracking_uri=uri, poll_interval_s=3600,
                                          max_batch_size=1), port=serve_port, app_name="direct",
                            route_prefix="/direct")
        print(f"load: {os.getloadavg()}, cpus: {os.cpu_count()}, features per row: {len(row)}")
        print(f"Serve ingress: {serve_ingress_in_use()}; Ray Serve environment: {serve_env()}")
        results = {"serve": measure("serve", f"{serve_url}/predict", row, args.rates, args.seconds),
                   "serve-nb": measure("serve-nb", f"{direct_url}/predict", row, args.rates, args.seconds)}
        f = measure("plain", f"{plain_url}/predict", row, args.rates, args.seconds)
        d = ServeSettings()
        print(f"\nserve: @serve.batch for overlapping requests (max_batch_size {d.max_batch_size}, wait "
              f"{d.batch_wait_timeout_s * 1000:g} ms); serve-nb: batching off (max_batch_size 1)")
        for name, s in results.items():
            print(f"ratios {name} / plain (latency: lower is better; throughput: higher is better)")
            for rate in args.rates:
                print(f"  p99 at {rate:.0f} req/s: {s[rate][1] / f[rate][1]:.2f}")
            print(f"  max req/s: {s['max_rps'] / f['max_rps']:.2f}   tracks/s batched: "
                  f"{s['tracks_per_s'] / f['tracks_per_s']:.2f}")
            if 100 in s:
                print(f"  target p99 <= 25 ms at 100 req/s: {'met' if s[100][1] <= 25 else 'NOT met'}")
            print(f"  target >= 5,000 tracks/s batched: {'met' if s['tracks_per_s'] >= 5000 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
