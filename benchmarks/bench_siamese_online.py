"""``/predict/audio`` latency of a Siamese CNN champion, next to a feature-row champion's, same upload, one run.

    .venv/bin/python benchmarks/bench_siamese_online.py [--seconds 20] [--rates 1 2 4]

Starts its own MLflow server and local Ray, registers a Siamese CNN (trained for two epochs on a generated
catalogue's mel store: its weights do not change its cost) and an MLR + Lasso on feature rows of the full
feature width, serves both side by side on Ray Serve (``/siamese-cnn`` and ``/rows``, as ``hitmusic serve
--model`` places them), then uploads the same 30 s preview (the shared rock preview if ../shared exists, else
a generated one) on a fixed schedule (open loop) at each rate and prints p50/p99 of each and the ratio
Siamese / rows. The Siamese path decodes, computes one log-mel segment (~20 ms) and runs the CNN; the rows
path decodes and extracts the ~440 audio features (~150 ms). Everything binds to 127.0.0.1 and is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hitmodels.config import ServeSettings, ServiceConfig, SynthConfig, TrainConfig  # noqa: E402
from hitmodels.services import ensure_ray_token, free_port, serve_runtime_env, start_mlflow, stop_process  # noqa: E402
from bench_online import open_loop  # noqa: E402
from tables import random_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HITMUSIC_SHARED", REPO.parent / "shared"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rates", type=float, nargs="+", default=[1, 2, 4])
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-siamese-"))
    os.environ.update(serve_runtime_env(ServiceConfig().serve_ingress, private_dir=tmp))
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(ensure_ray_token(tmp / "token")))
    os.environ["HITMUSIC_ALLOWED_ROOTS"] = os.pathsep.join([str(tmp), str(SHARED)])

    import pyarrow.parquet as pq
    import ray

    from hitmodels import melstore
    from hitmodels.config import MelConfig
    from hitmodels.registry import promote
    from hitmodels.synth import generate
    from hitmodels.train import train
    from serve.deploy import PROXY_LOGGING, deploy, placement

    mlflow_port, serve_port = free_port(), free_port()
    mlflow_proc = start_mlflow(tmp / "mlflow", "127.0.0.1", mlflow_port)
    uri = f"http://127.0.0.1:{mlflow_port}"
    try:
        paths = generate(tmp / "cat", SynthConfig(n_tracks=40, seed=2))
        manifest = pd.read_parquet(paths["manifest"])
        store = tmp / "mels"
        melstore.record_config(store, MelConfig())
        pq.write_table(melstore.rows_to_table([melstore.mel_row(t, u) for t, u in
                                               zip(manifest["track_id"], manifest["audio_uri"])]), store / "part-0.parquet")
        truth = pd.read_parquet(paths["truth"])[["track_id", "artist_id", "popularity"]].assign(error=None)
        sv = train(truth, TrainConfig(family="siamese", model_name="siamese-cnn", experiment="bench",
                                      params={"mels": str(store), "epochs": 2}), uri)
        rv = train(random_table(0, n=300), TrainConfig(family="lasso", name="lasso", model_name="rows",
                                                       experiment="bench"), uri)
        promote("siamese-cnn", sv.version, tracking_uri=uri)
        promote("rows", rv.version, tracking_uri=uri)
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": uri}})
        from ray import serve

        serve.start(http_options={"host": "127.0.0.1", "port": serve_port}, logging_config=PROXY_LOGGING)
        app, prefix = placement("siamese-cnn")
        urls = {"siamese": deploy(ServeSettings(model_name="siamese-cnn", tracking_uri=uri, poll_interval_s=3600),
                                  port=serve_port, app_name=app, route_prefix=prefix),
                "rows": deploy(ServeSettings(model_name="rows", tracking_uri=uri, poll_interval_s=3600),
                               port=serve_port, app_name="rows", route_prefix="/rows")}
        clip = SHARED / "data" / "audio" / "rock.mp3"
        clip = clip if clip.is_file() else Path(manifest["audio_uri"].iloc[0])
        data = clip.read_bytes()
        for url in urls.values():
            for _ in range(5):  # warm up
                assert httpx.post(f"{url}/predict/audio", files={"file": (clip.name, data)}, timeout=60).status_code == 200
        print(f"load: {os.getloadavg()}, cpus: {os.cpu_count()}, upload: {clip.name} ({len(data) / 1e6:.2f} MB)")
        res = {}
        for rate in args.rates:
            for name, url in urls.items():
                lat, errors = asyncio.run(open_loop(f"{url}/predict/audio", None, rate, args.seconds,
                                                    {"files": {"file": (clip.name, data)}}))
                p50, p99 = np.percentile(lat, [50, 99]) * 1000 if len(lat) else (float("nan"),) * 2
                res[(name, rate)] = (p50, p99)
                print(f"{name:8s} {rate:4.1f} req/s: p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  errors {errors}", flush=True)
            s, r = res[("siamese", rate)], res[("rows", rate)]
            print(f"  ratio siamese / rows at {rate:g} req/s: p50 {s[0] / r[0]:.2f}, p99 {s[1] / r[1]:.2f}")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stop_process(mlflow_proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
