"""Batch scoring throughput: the Ray Data job (``pipelines/score.py``) against a plain single-process
pandas + torch loop over the same Parquet, same model, one run.

    .venv/bin/python benchmarks/bench_batch.py [--rows 1000000] [--bf16]

Generates ``--rows`` feature rows (full feature width, float64, written in row groups so that nothing holds
the table in memory), registers a model on a small generated table with its own MLflow server, then times
(a) the plain loop in a subprocess (pyarrow batch iterator -> the job's own per-batch scoring function ->
ParquetWriter) and (b) the Ray job on a local Ray instance, and prints tracks/s for each, their ratio and
peak memory (plain: the
process's max RSS; Ray: the largest sum of RSS over the driver and every Ray worker, sampled every 0.2 s).
The plain loop runs twice: with the model itself (torch for HitMusicNet: the named peer) and with its NumPy
kernel (what the Ray job's tasks score with). Targets on 2 cores: >= 100,000 tracks/s from a cold start,
>= 1.0x the plain loop, <= 4 GB for the Ray job.
``--bf16`` then times the Ray job again on the warm workers in fp32 and with ``--precision bf16``, and prints
how far the bf16 scores move.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hitmodels.config import TrainConfig  # noqa: E402
from hitmodels.services import free_port, start_mlflow, stop_process  # noqa: E402
from tables import random_table  # noqa: E402


def write_rows(path: Path, columns: list[str], rows: int, group: int = 50_000) -> None:
    rng = np.random.default_rng(0)
    schema = pa.schema([("track_id", pa.string())] + [(c, pa.float64()) for c in columns])
    with pq.ParquetWriter(path, schema) as w:
        for start in range(0, rows, group):
            n = min(group, rows - start)
            data = {"track_id": pa.array([f"t{i}" for i in range(start, start + n)])}
            X = np.abs(rng.normal(1.0, 0.5, (n, len(columns))))
            data.update({c: X[:, j] for j, c in enumerate(columns)})
            w.write_table(pa.table(data, schema=schema))


def plain_loop(table: str, out: str, model_uri: str, kernel: bool = False) -> dict:
    """The peer: one process, no Ray, the same per-batch work (Arrow -> matrix -> model -> Arrow), with the
    model itself (torch for HitMusicNet) or, with ``kernel``, its NumPy kernel (what the Ray job's tasks run)."""
    from hitmodels.registry import ModelRef, load_model
    from pipelines.score import array_predictor, model_outputs, output_schema
    from pipelines.score_rows import row_group_batches, score_table

    t0 = time.perf_counter()  # from loading the model, as the Ray job's time includes its loading too
    ref = ModelRef("bench", model_uri.rsplit("/", 1)[-1])
    model = load_model(ref)  # as the job's workers load it: the bundle as data
    columns = model.columns
    predict, schema = array_predictor(model.kernel() if kernel else model, columns), output_schema(model_outputs(model))
    n = 0
    fs = pafs.LocalFileSystem()
    with pq.ParquetWriter(out, schema) as writer:
        for row_group in range(pq.ParquetFile(table).num_row_groups):
            for batch in row_group_batches(fs, table, row_group, ["track_id", *columns], 16_384):
                writer.write_table(score_table(predict, columns, ref, batch, schema))
                n += batch.num_rows
    seconds = time.perf_counter() - t0
    return {"rows": n, "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


class RaySampler(threading.Thread):
    """Largest sum of RSS over this process and every process of the Ray session."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0.0, threading.Event()

    def run(self):
        import psutil

        me = psutil.Process()
        while not self.stop.wait(0.2):
            total = me.memory_info().rss
            for p in psutil.process_iter(["name", "cmdline"]):
                try:
                    cmd = " ".join(p.info["cmdline"] or [])
                    if p.pid != me.pid and ("ray::" in cmd or "raylet" in cmd or "default_worker" in cmd):
                        total += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total / 2**20)


def ray_job(score, table: Path, out: Path, version: str, uri: str, rows: int,
            precision: str) -> tuple[float, float]:
    """Run the Ray job once; prints and returns tracks/s and the peak memory of driver + workers (MB)."""
    sampler = RaySampler()
    sampler.start()
    t0 = time.perf_counter()
    score.run(table, out, "bench", version, uri, precision=precision)
    seconds = time.perf_counter() - t0
    sampler.stop.set()
    n_out = pq.ParquetDataset(out).read(columns=["track_id"]).num_rows
    print(f"ray job ({precision}): {rows / seconds:10,.0f} tracks/s  ({seconds:.1f} s, {n_out:,} rows out)  "
          f"peak RSS (driver + workers) {sampler.peak:,.0f} MB", flush=True)
    return rows / seconds, sampler.peak


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="feature rows to score (default 1,000,000)")
    p.add_argument("--bf16", action="store_true", help="also time the Ray job with --precision bf16")
    p.add_argument("--plain", nargs=3, metavar=("TABLE", "OUT", "MODEL_URI"), help=argparse.SUPPRESS)
    p.add_argument("--kernel", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain:
        print(json.dumps(plain_loop(*args.plain, kernel=args.kernel)))
        return 0

    import ray

    from hitmodels.registry import promote
    from hitmodels.train import train
    from pipelines import score

    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    port = free_port()
    mlflow_proc = start_mlflow(tmp / "mlflow", "127.0.0.1", port)
    uri = f"http://127.0.0.1:{port}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        small = random_table(0, n=400)
        result = train(small, TrainConfig(ae_epochs=3, mlp_epochs=3, model_name="bench", experiment="bench"), uri)
        promote("bench", result.version, tracking_uri=uri)
        columns = [c for c in small.columns if c not in ("track_id", "artist_id", "error", "popularity")]
        table = tmp / "catalogue.parquet"
        t0 = time.perf_counter()
        write_rows(table, columns, args.rows)
        size_gb = table.stat().st_size / 2**30
        print(f"generated {args.rows:,} rows x {len(columns)} features ({size_gb:.2f} GB) in "
              f"{time.perf_counter() - t0:.0f} s; load {os.getloadavg()}, cpus {os.cpu_count()}", flush=True)

        rates = {}
        for peer, flags, scores in (("plain loop", [], "plain.parquet"),
                                    ("plain loop, NumPy kernel", ["--kernel"], "plain_kernel.parquet")):
            out = subprocess.run([sys.executable, __file__, "--plain", str(table), str(tmp / scores),
                                  f"models:/bench/{result.version}", *flags], capture_output=True, text=True,
                                 env=dict(os.environ))
            if out.returncode != 0:
                print(out.stderr[-3000:])
                return 1
            plain = json.loads(out.stdout.strip().splitlines()[-1])
            rates[peer] = plain["rows"] / plain["seconds"]
            print(f"{peer}: {rates[peer]:10,.0f} tracks/s  ({plain['seconds']:.1f} s)  "
                  f"peak RSS {plain['peak_rss_mb']:,.0f} MB", flush=True)
        plain_rate = rates["plain loop"]

        from hitmodels.services import use_ray_auth

        use_ray_auth()  # token auth, as every Ray of the project
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": uri}})
        ray_rate, peak = ray_job(score, table, tmp / "ray_scores", result.version, uri, args.rows, "fp32")
        torch_scores = pq.read_table(tmp / "plain.parquet", columns=["track_id", "popularity"]).to_pandas()
        job_scores = pq.read_table(tmp / "ray_scores", columns=["track_id", "popularity"]).to_pandas()
        diff = (torch_scores.set_index("track_id")["popularity"] - job_scores.set_index("track_id")["popularity"]).abs()
        print(f"ray job's scores against the plain loop's (the model itself): largest difference {diff.max():.2e} "
              f"popularity points, mean {diff.mean():.2e}")
        print(f"ratio ray / plain loop: {ray_rate / plain_rate:.2f}; ray / plain loop with the kernel: "
              f"{ray_rate / rates['plain loop, NumPy kernel']:.2f}")
        print(f"targets: >= 100,000 tracks/s: {'met' if ray_rate >= 1e5 else 'NOT met'}; >= 1.0 x plain loop: "
              f"{'met' if ray_rate >= plain_rate else 'NOT met'}; <= 4 GB: "
              f"{'met' if peak <= 4096 else 'NOT met'}")
        if args.bf16:
            # both again on the now warm workers (processes started, model loaded), so that only the
            # arithmetic differs between the two
            ray_rate, _ = ray_job(score, table, tmp / "ray_scores_warm", result.version, uri, args.rows, "fp32")
            bf16_rate, _ = ray_job(score, table, tmp / "ray_scores_bf16", result.version, uri, args.rows, "bf16")
            exact = pq.read_table(tmp / "ray_scores", columns=["track_id", "popularity"]).to_pandas()
            fast = pq.read_table(tmp / "ray_scores_bf16", columns=["track_id", "popularity"]).to_pandas()
            diff = exact.set_index("track_id")["popularity"] - fast.set_index("track_id")["popularity"]
            print(f"warm ray job in bf16 / fp32: {bf16_rate / ray_rate:.2f}; largest score difference "
                  f"{diff.abs().max():.3f} points (mean {diff.abs().mean():.3f})")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stop_process(mlflow_proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
