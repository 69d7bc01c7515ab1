"""Cross-validation cost: 5-fold CV of HitMusicNet configuration 1-A and of the HistGradientBoosting baseline
on the same generated table, one run.

    .venv/bin/python benchmarks/bench_train.py [--rows 100000] [--folds 5] [--config 1-A] [--threads N]

Generates ``--rows`` rows with every feature column of the model table (the extractor's audio and lyric
columns plus the metadata columns, about 400) whose popularity is a non-linear function of a few latent
factors that the features mix, then runs :func:`hitmodels.crossval.cross_validate` once with the configuration
only and once with the ``hgb`` baseline only, each in its own process, and prints wall time (generation
excluded) and peak resident memory (the process's max RSS) for each, the load average before and after, and
the averaged test MAE of both. Target on 2 cores: <= 60 s for 1-A.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from hitmodels.config import EvaluateConfig, FeatureConfig, TrainConfig
from hitmodels.data import METADATA_COLUMNS
from hitmodels.features import feature_names


def generated_table(n_rows: int, seed: int = 0, n_latent: int = 12) -> pd.DataFrame:
    """Full-width rows: features mix ``n_latent`` factors (plus noise); popularity (mean 40, sd about 17,
    0-100, integers like SPD) is a non-linear function of four of them plus noise."""
    rng = np.random.default_rng(seed)
    columns = list(feature_names(FeatureConfig())) + METADATA_COLUMNS
    z = rng.standard_normal((n_rows, n_latent)).astype(np.float32)
    mix = rng.standard_normal((n_latent, len(columns))).astype(np.float32) / np.sqrt(n_latent)
    X = np.tanh(z @ mix) + 0.1 * rng.standard_normal((n_rows, len(columns)), dtype=np.float32)
    signal = z[:, 0] + 0.8 * np.sin(2 * z[:, 1]) + 0.6 * z[:, 2] * z[:, 3]
    popularity = np.clip(40 + 15 * signal / signal.std() + rng.normal(0, 8, n_rows), 0, 100).round()
    df = pd.DataFrame(X.astype(np.float64), columns=columns)
    df["popularity"] = popularity
    df["track_id"] = [f"t{i}" for i in range(n_rows)]
    df["artist_id"] = "a"
    df["error"] = None
    return df


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def phase(args: argparse.Namespace) -> dict:
    """One measured run, in this process: the configuration or the baseline."""
    from hitmodels.crossval import cross_validate

    table = generated_table(args.rows)
    base = TrainConfig(threads=args.threads)
    ecfg = replace(EvaluateConfig(), n_folds=args.folds, tsne_points=0,
                   configs=(args.config,) if args.phase == "config" else (),
                   baselines=("hgb",) if args.phase == "hgb" else ())
    start = time.perf_counter()
    result = cross_validate(table, base, ecfg, progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    seconds = time.perf_counter() - start
    test = result.scores[result.scores["split"] == "test"]
    epochs = {stage: float(np.mean([len(h[stage]) for h in result.histories.values()]))
              for stage in ("ae", "pop", "cls") if result.histories}
    return {"phase": args.config if args.phase == "config" else "HistGradientBoosting", "seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "test_mae": float(test["mae"].mean()), "rows": args.rows, "folds": args.folds,
            "mean_epochs": epochs, "threads": args.threads}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--config", default="1-A")
    p.add_argument("--threads", type=int, default=TrainConfig.threads,
                   help=f"torch and scikit-learn threads while fitting (default {TrainConfig.threads})")
    p.add_argument("--phase", choices=["config", "hgb"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        print(json.dumps(phase(args)))
        return 0
    print(f"rows {args.rows}, features {len(feature_names(FeatureConfig())) + len(METADATA_COLUMNS)}, "
          f"{args.folds}-fold CV, {os.cpu_count()} cores; load average before: {load()}")
    results = []
    for which in ("config", "hgb"):
        cmd = [sys.executable, __file__, "--phase", which, "--rows", str(args.rows), "--folds", str(args.folds),
               "--config", args.config] + (["--threads", str(args.threads)] if args.threads else [])
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        epochs = ", ".join(f"{k} {v:.0f}" for k, v in r["mean_epochs"].items())
        print(f"{r['phase']:>22}: {r['seconds']:7.1f} s, peak RSS {r['peak_rss_mb']:7.0f} MB, "
              f"test MAE {r['test_mae']:.4f}" + (f", mean epochs {epochs}" if epochs else "")
              + f"   (load average now {load()})", flush=True)
    print(json.dumps({"load_after": load(), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
