"""Ray Data job: one Parquet row of features per track of a manifest.

    python -m pipelines.extract MANIFEST OUT_DIR            # or: hitmusic extract ...
    ray job submit --working-dir . -- python -m pipelines.extract MANIFEST OUT_DIR

Input is a manifest (Parquet or CSV with ``track_id``, ``audio_uri``, optional ``lyrics``) or an SPD
directory. Audio URIs may be local paths, ``file://``, ``s3://`` or ``http(s)://``. Bad previews never stop
the job: their rows carry an ``error`` and null features (rows in = rows out), and a count per reason is
printed at the end. Re-running into the same OUT_DIR skips tracks already there, so the job resumes; a part
file left unreadable by an interrupted run is moved to ``OUT_DIR/_quarantine/`` and its tracks are done again.

S3 settings in the driver's environment (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, region, credentials)
travel to the extraction tasks in their runtime environment, so workers started before, or on other nodes,
read from the same store.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from hitmodels import features
from hitmodels.config import FeatureConfig
from hitmodels.data import read_manifest
from hitmodels.services import init_ray
from hitmodels.cli import module_main


def extract_batch(batch: pd.DataFrame, cfg: FeatureConfig):
    """Ray Data task: :func:`hitmodels.features.extract_row` over a batch, as one Arrow table with the fixed
    feature schema. Tasks rather than actors: nothing holds a CPU between batches, so the job shares a small
    machine with Serve without deadlocking, and a crashed worker only costs its batch (retried by Ray)."""
    rows = [features.extract_row(t, u, lyr, cfg)
            for t, u, lyr in zip(batch["track_id"], batch["audio_uri"], batch["lyrics"])]
    return features.rows_to_table(rows, cfg)


QUARANTINE = "_quarantine"  # a leading underscore keeps it out of Arrow's dataset discovery
# What fetch_bytes needs to reach an S3-compatible store; forwarded from the driver to the tasks.
# (Not file paths such as AWS_CA_BUNDLE or AWS_CONFIG_FILE: they mean nothing on another node.)
S3_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ACCESS_KEY_ID",
          "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def part_files(out_dir: Path) -> list[Path]:
    """Readable Parquet parts in ``out_dir``; an unreadable one (a run killed while writing it) is moved to
    ``out_dir/_quarantine`` so that its tracks count as not done and every later read succeeds."""
    good = []
    for f in sorted(out_dir.glob("*.parquet")) if out_dir.is_dir() else []:
        try:
            pq.read_metadata(f)
            good.append(f)
        except Exception as exc:  # truncated footer, zero bytes, not Parquet at all: all mean "redo"
            (out_dir / QUARANTINE).mkdir(exist_ok=True)
            f.rename(out_dir / QUARANTINE / f.name)
            print(f"extract: {f.name} is unreadable ({type(exc).__name__}); moved to {QUARANTINE}/, its tracks "
                  "will be extracted again", file=sys.stderr)
    return good


def _column(out_dir: Path, name: str) -> list:
    files = part_files(out_dir)
    if not files:
        return []
    return pads.dataset([str(f) for f in files], format="parquet").to_table(columns=[name])[name].to_pylist()


def done_track_ids(out_dir: Path) -> set[str]:
    """track_ids already written to ``out_dir`` by earlier runs."""
    return set(_column(out_dir, "track_id"))


def summary(out_dir: Path) -> Counter:
    """Rows per outcome (``ok`` or the error reason) in ``out_dir``."""
    return Counter(features.error_reason(e) for e in _column(out_dir, "error"))


def _task_env(uris: pd.Series) -> dict:
    """Ray remote args that carry the driver's S3 settings to the tasks, when the manifest reads from S3 and
    the job's runtime environment does not already carry them (a runtime environment of its own means fresh
    worker processes, so only then)."""
    import ray

    job_env = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
    env = {k: os.environ[k] for k in S3_ENV if os.environ.get(k) and job_env.get(k) != os.environ[k]}
    if not env or not uris.astype(str).str.startswith("s3://").any():
        return {}
    return {"runtime_env": {"env_vars": env}}


def run(manifest: str | Path, out_dir: str | Path, cfg: FeatureConfig = FeatureConfig(),
        batch_size: int = 4, block_size: int = 64) -> Counter:
    """Extract features for every track of ``manifest`` not yet in ``out_dir``; returns counts per outcome."""
    import ray

    init_ray()
    out_dir = Path(out_dir)
    df = read_manifest(manifest)
    n_in = len(df)
    df = df.drop_duplicates("track_id")
    done = done_track_ids(out_dir)
    todo = df[~df["track_id"].isin(done)].reset_index(drop=True)
    print(f"extract: {n_in} tracks in manifest, {len(done)} already in {out_dir}, {len(todo)} to do",
          file=sys.stderr)
    if len(todo):
        # Many small input blocks: the job streams, and work spreads over every CPU of the cluster.
        chunks = [todo.iloc[i:i + block_size] for i in range(0, len(todo), block_size)]
        ds = ray.data.from_pandas(chunks)
        ds = ds.map_batches(extract_batch, fn_kwargs={"cfg": cfg}, batch_size=batch_size, batch_format="pandas",
                            num_cpus=1, **_task_env(todo["audio_uri"]))
        ds.write_parquet(str(out_dir))
    counts = summary(out_dir)
    print("extract: rows per outcome: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())),
          file=sys.stderr)
    return counts


def read_features(out_dir: str | Path) -> pd.DataFrame:
    """The feature table written by :func:`run` (all parts), one row per track."""
    files = [str(f) for f in part_files(Path(out_dir))]
    return pads.dataset(files, format="parquet").to_table().to_pandas().drop_duplicates("track_id")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", type=Path, help="manifest (.parquet/.csv: track_id, audio_uri[, lyrics]) or SPD dir")
    p.add_argument("out_dir", type=Path, help="output directory of Parquet parts (re-runs resume into it)")
    p.add_argument("--batch-size", type=int, default=4, help="tracks per actor call (default 4)")
    p.add_argument("--block-size", type=int, default=64, help="tracks per output block/file (default 64)")
    p.add_argument("--sr", type=int, default=None, help="resample to this rate (default: each file's own)")
    p.add_argument("--n-mfcc", type=int, default=FeatureConfig.n_mfcc, help="MFCC coefficients (default 48)")


def main_from_args(args: argparse.Namespace) -> int:
    cfg = FeatureConfig(sr=args.sr, n_mfcc=args.n_mfcc)
    run(args.manifest, args.out_dir, cfg, batch_size=args.batch_size, block_size=args.block_size)
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main(__doc__, "python -m pipelines.extract", add_arguments, main_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
