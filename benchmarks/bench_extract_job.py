"""Extraction at catalogue scale: the real extraction job (``pipelines/extract.py``: fetch, decode, features,
lyrics, write) over generated 30 s previews through Ray Data on this machine, against the projection
``n_clips / (cores x per-core rate)``, the per-core rate measured in the same run.

    .venv/bin/python benchmarks/bench_extract_job.py [--clips 1000] [--sample 100] [--cores N] [--catalogue DIR]

Generates ``--clips`` tracks with ``hitmusic synth`` (30 s WAV previews at 44.1 kHz with lyrics), measures the
per-core rate on ``--sample`` of them (spread over the catalogue) in a fresh process held to one thread (``extract_batch``, the job's own
per-batch function: decode, audio features, lyric features; nothing written), then runs the job on a local
Ray instance of ``--cores`` CPUs (default all) from a cold start, and prints both, the projection and the
ratio job / projection (target <= 1.25). The job's own progress line (rows, rate, ETA) is on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

PER_CORE = """
import json, os, sys, time
for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[v] = "1"
from hitmodels.config import FeatureConfig, InputPolicy
from hitmodels.data import read_manifest
from pipelines.extract import extract_batch
manifest, n = sys.argv[1], int(sys.argv[2])
every = read_manifest(manifest)
rows = every.iloc[::max(1, len(every) // n)].head(n)  # spread over the catalogue, as the job sees it
policy = InputPolicy.for_manifest(manifest)
extract_batch(every.tail(2), FeatureConfig(), policy)  # first calls: caches, lazy imports
t0 = time.perf_counter()
out = extract_batch(rows, FeatureConfig(), policy)
print(json.dumps({"clips": n, "seconds": time.perf_counter() - t0, "errors": sum(1 for e in out.column("error").to_pylist() if e)}))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=1000, help="previews to generate and extract (default 1000)")
    p.add_argument("--sample", type=int, default=100,
                   help="clips timed for the per-core rate, spread over the catalogue (default 100)")
    p.add_argument("--catalogue", type=Path, help="a catalogue `hitmusic synth` made earlier, instead of a new one")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="CPUs of the local Ray instance")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    root = Path(__file__).resolve().parents[1]
    t0 = time.perf_counter()
    if args.catalogue is None:
        subprocess.run([sys.executable, "-m", "hitmodels.cli", "synth", str(tmp / "cat"), "--n-tracks",
                        str(args.clips), "--sr", "44100"], check=True, cwd=root, capture_output=True)
        print(f"generated {args.clips} previews of 30 s in {time.perf_counter() - t0:.0f} s", flush=True)
    manifest = (args.catalogue or tmp / "cat") / "manifest.parquet"
    args.clips = len(pd.read_parquet(manifest, columns=["track_id"]))
    print(f"{args.clips} previews in {manifest}; load {os.getloadavg()}", flush=True)

    done = subprocess.run([sys.executable, "-c", PER_CORE, str(manifest), str(args.sample)], cwd=root,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(root)))
    if done.returncode != 0:
        print(done.stderr[-3000:])
        return 1
    sample = json.loads(done.stdout.strip().splitlines()[-1])
    rate = sample["clips"] / sample["seconds"]
    projected = args.clips / (args.cores * rate)
    print(f"per core: {rate:.2f} clips/s ({sample['clips']} clips in {sample['seconds']:.1f} s, one thread, "
          f"{sample['errors']} errors); projected for {args.clips} clips on {args.cores} cores: {projected:.1f} s",
          flush=True)

    import ray

    from hitmodels.services import use_ray_auth
    from pipelines import extract

    use_ray_auth()
    ray.init(address="local", num_cpus=args.cores, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        counts = extract.run(manifest, tmp / "features")
        seconds = time.perf_counter() - t0
    finally:
        ray.shutdown()
    print(f"extraction job: {args.clips / seconds:.2f} clips/s ({seconds:.1f} s, outcomes {dict(counts)}); "
          f"job / projection {seconds / projected:.2f} (target <= 1.25: "
          f"{'met' if seconds <= 1.25 * projected else 'NOT met'}); load {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
