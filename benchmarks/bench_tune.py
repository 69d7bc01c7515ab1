"""Tuning throughput: trials per hour of the default HitMusicNet search space, and the wall time of the
demo's tuning budget (4 random trials, 20 epochs, best retrained with Ray Train and registered).

    .venv/bin/python benchmarks/bench_tune.py [--rows 200] [--trials 4] [--epochs 20] [--retrain-workers 1 2]

Starts its own MLflow server and local Ray, tunes on a generated table with the full feature width
(``--rows`` rows, the demo catalogue's size by default), and prints the wall time of the search alone,
of the retraining + registration, trials per hour, and the same against a plain sequential loop of the
same trials' training (no Ray, no MLflow) in the same run, as the ratio of their per-trial times. Then it
times the retraining alone (Ray Train, default configuration, ``--epochs``) with each ``--retrain-workers``
count: more than one worker is data-parallel (DDP over gloo), each worker training on its share of the rows.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hitmodels.config import TrainConfig  # noqa: E402
from hitmodels.services import free_port, start_mlflow, stop_process  # noqa: E402
from tables import random_table  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200, help="rows of the generated model table (default 200)")
    p.add_argument("--trials", type=int, default=4, help="random trials (default 4, the demo's budget)")
    p.add_argument("--epochs", type=int, default=20, help="maximum epochs per trial (default 20, the demo's)")
    p.add_argument("--retrain-workers", type=int, nargs="*", default=[1, 2],
                   help="Ray Train worker counts to time the retraining with (default 1 2; none to skip)")
    args = p.parse_args()

    import ray

    from hitmodels.data import feature_columns, training_rows
    from hitmodels.families.hitmusicnet.fit import fit_model
    from hitmodels.train import split_rows
    from hitmodels.families.hitmusicnet import tune as hitmusicnet_tune
    from pipelines import tune

    tmp = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    port = free_port()
    proc = start_mlflow(tmp / "mlflow", "127.0.0.1", port)
    uri = f"http://127.0.0.1:{port}"
    try:
        table = random_table(0, n=args.rows)
        path = tmp / "table.parquet"
        table.to_parquet(path)
        base = TrainConfig(model_name="bench-tune", experiment="bench-tune")
        print(f"load {os.getloadavg()}, cpus {os.cpu_count()}, rows {args.rows}, features "
              f"{len(feature_columns(training_rows(table)))}", flush=True)

        # the peer: the same number of trials, trained one after the other in this process
        rows = training_rows(table)
        s = split_rows(rows, base)
        t0 = time.perf_counter()
        for i, (delta, opt) in enumerate([(1 / 5, "adam"), (1 / 4, "nadam"), (1 / 7, "sgd"), (1 / 5, "adadelta")]
                                         [: args.trials]):
            fit_model(s.fit, s.val, s.fit.iloc[:0], feature_columns(rows),
                      replace(base, delta=delta, optimizer=opt, ae_epochs=args.epochs, mlp_epochs=args.epochs))
        plain = (time.perf_counter() - t0) / min(args.trials, 4)

        from hitmodels.services import use_ray_auth

        use_ray_auth()  # token auth, as every Ray of the project
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": uri}})
        t0 = time.perf_counter()
        results, reg = tune.run(path, num_samples=args.trials, epochs=args.epochs, name="bench",
                                storage=tmp / "ray_results", base=base, tracking_uri=uri)
        total = time.perf_counter() - t0
        print(f"tune job (search + retrain + register): {total:.1f} s for {len(results)} trials "
              f"-> {len(results) / total * 3600:.0f} trials/hour end to end")
        print(f"per trial: tune {total / len(results):.1f} s, plain sequential loop {plain:.1f} s "
              f"(ratio tune/plain {total / len(results) / plain:.2f}; ASHA stops some trials early, Ray, MLflow "
              f"logging and the final retraining add overhead)")
        print(f"registered version {reg.version}, test MAE {reg.metrics['test_mae']:.4f}")
        cfg = replace(base, ae_epochs=args.epochs, mlp_epochs=args.epochs)
        for workers in args.retrain_workers:
            t0 = time.perf_counter()
            result = hitmusicnet_tune.retrain(str(path), cfg, tmp / "ray_results", workers, f"retrain-{workers}")
            shards = [r["shard_rows"] for r in result.metrics["ranks"]]
            print(f"retrain with {workers} Ray Train worker(s): {time.perf_counter() - t0:.1f} s, of which fitting "
                  f"{result.metrics['fit_seconds']:.1f} s (rows per worker {shards}, best val_loss "
                  f"{result.metrics['val_loss']:.4f}, load {os.getloadavg()[0]:.2f})")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stop_process(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
