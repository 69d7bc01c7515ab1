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


async def open_loop(url: str, body: bytes | None, rate: float, seconds: float,
                    request: dict | None = None) -> tuple[np.ndarray, int]:
    """Fire requests at ``rate`` per second for ``seconds``; returns latencies (s) and the error count.
    Each is a POST of JSON ``body``, or of ``request`` (httpx's keyword arguments, e.g. ``files``)."""
    latencies, errors = [], 0
    request = request or {"content": body, "headers": JSON}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=512)) as client:
        async def one():
            nonlocal errors
            t0 = time.perf_counter()
            r = await client.post(url, **request)
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return np.array(latencies), errors


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each measurement (default 10)")
    p.add_argument("--rates", type=float, nargs="+", default=[50, 100, 200], help="offered loads, req/s")
    p.add_argument("--ingress", choices=INGRESS_CHOICES, default=ServiceConfig().serve_ingress,
                   help="Serve's HTTP ingress: haproxy, Ray's Python proxy, or auto (haproxy where installed); "
                        "default $HITMUSIC_SERVE_INGRESS or auto")
    args = p.parse_args()
    haproxy_dir = Path(tempfile.mkdtemp(prefix="hm-hap-", dir="/tmp"))
    os.environ.update(serve_runtime_env(args.ingress, private_dir=haproxy_dir))  # before Ray starts
    # token auth as everywhere, with a throwaway token of the benchmark's own
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(ensure_ray_token(haproxy_dir / "token")))

    import ray

    from hitmodels.registry import promote
    from hitmodels.train import train
    from serve.deploy import PROXY_LOGGING, deploy

    tmp = Path(tempfile.mkdtemp(prefix="bench-online-"))
    mlflow_port, serve_port, plain_port = free_port(), free_port(), free_port()
    mlflow_proc = start_mlflow(tmp / "mlflow", "127.0.0.1", mlflow_port)
    uri = f"http://127.0.0.1:{mlflow_port}"
    plain = None
    try:
        table = random_table(0, n=400)
        result = train(table, TrainConfig(ae_epochs=5, mlp_epochs=5, model_name="bench", experiment="bench"), uri)
        promote("bench", result.version, tracking_uri=uri)
        cols = [c for c in table.columns if c not in ("track_id", "artist_id", "error", "popularity")]
        row = {c: float(table.iloc[0][c]) for c in cols}

        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": uri}})
        from ray import serve

        serve.start(http_options={"host": "127.0.0.1", "port": serve_port}, logging_config=PROXY_LOGGING)
        serve_url = deploy(ServeSettings(model_name="bench", tracking_uri=uri, poll_interval_s=3600),
                           port=serve_port, app_name="bench", route_prefix="/")
        direct_url = deploy(ServeSettings(model_name="bench", tracking_uri=uri, poll_interval_s=3600,
                                          max_batch_size=1), port=serve_port, app_name="direct",
                            route_prefix="/direct")
        plain = subprocess.Popen([sys.executable, "-m", "uvicorn", "plain_app:app", "--host", "127.0.0.1",
                                  "--port", str(plain_port), "--log-level", "warning"],
                                 cwd=Path(__file__).parent,
                                 env=dict(os.environ, MLFLOW_TRACKING_URI=uri, BENCH_MODEL="models:/bench@champion"),
                                 start_new_session=True)
        wait_http(f"http://127.0.0.1:{plain_port}/healthz", timeout_s=120, proc=plain)
        print(f"load: {os.getloadavg()}, cpus: {os.cpu_count()}, features per row: {len(row)}")
        print(f"Serve ingress: {serve_ingress_in_use()}; Ray Serve environment: {serve_env()}")
        results = {"serve": measure("serve", f"{serve_url}/predict", row, args.rates, args.seconds),
                   "serve-nb": measure("serve-nb", f"{direct_url}/predict", row, args.rates, args.seconds)}
        f = measure("plain", f"http://127.0.0.1:{plain_port}/predict", row, args.rates, args.seconds)
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
    finally:
        if plain is not None:
            stop_process(plain)
        if ray.is_initialized():
            ray.shutdown()
        stop_process(mlflow_proc)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(haproxy_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
