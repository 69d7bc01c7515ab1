"""Ray Data job: score a whole catalogue with a registered model into Parquet.

    python -m pipelines.score TABLE OUT_DIR [--model hitmusicnet] [--version champion]
    ray job submit --working-dir . -- python -m pipelines.score TABLE OUT_DIR

TABLE is a feature table (Parquet file or directory, or CSV) with ``track_id`` and the model's feature
columns, as ``hitmusic build`` writes it. The alias is resolved to one version before the job starts, so
every row of a run is scored by the same version even if the alias moves meanwhile. Output per row:
``track_id, popularity, class, model_name, model_version, error``; rows whose features are missing (failed
extraction) get null scores and the reason in ``error``: rows in = rows out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from hitmodels.config import tracking_uri as resolve_tracking_uri
from hitmodels.registry import CHAMPION, ModelRef, resolve
from hitmodels.services import init_ray
from hitmodels.cli import module_main

OUTPUT_SCHEMA = pa.schema([("track_id", pa.string()), ("popularity", pa.float64()), ("class", pa.string()),
                           ("model_name", pa.string()), ("model_version", pa.string()), ("error", pa.string())])


def load_model(ref: ModelRef, tracking_uri: str | None):
    import mlflow

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    return mlflow.pyfunc.load_model(ref.uri)


def score_frame(model, ref: ModelRef, batch: pd.DataFrame) -> pa.Table:
    """Score one batch; rows carrying an extraction error are passed through with null scores."""
    n = len(batch)
    err = (batch["error"] if "error" in batch else pd.Series([None] * n)).astype(object)
    bad = err.notna().to_numpy() & (err.astype(str) != "").to_numpy()
    pop = np.full(n, np.nan)
    cls = np.full(n, None, dtype=object)
    if (~bad).any():
        out = model.predict(batch.loc[~bad])
        pop[~bad] = out["popularity"].to_numpy()
        cls[~bad] = out["class"].to_numpy()
    return pa.table({
        "track_id": batch["track_id"].astype(str).to_numpy(),
        "popularity": pa.array(pop, mask=np.isnan(pop)),
        "class": cls,
        "model_name": [ref.name] * n,
        "model_version": [ref.version] * n,
        "error": [f"features: {e}" if b else None for e, b in zip(err, bad)],
    }, schema=OUTPUT_SCHEMA)


_MODELS: dict[tuple[str, str | None], object] = {}


def score_batch(batch: pd.DataFrame, ref: ModelRef, tracking_uri: str | None) -> pa.Table:
    """Ray Data task: score one batch. The model is loaded once per worker process and cached; tasks (not
    actors) so that no CPU stays held between batches and a small machine shared with Serve cannot deadlock."""
    key = (ref.uri, tracking_uri)
    if key not in _MODELS:
        _MODELS[key] = load_model(ref, tracking_uri)
    return score_frame(_MODELS[key], ref, batch)


def read_table_schema(path: Path) -> list[str]:
    if path.suffix == ".csv":
        return list(pd.read_csv(path, nrows=0).columns)
    return pads.dataset(path, format="parquet").schema.names


def run(table: str | Path, out_dir: str | Path, model_name: str = "hitmusicnet", version: str = CHAMPION,
        tracking_uri: str | None = None, batch_size: int = 4096) -> ModelRef:
    """Score every row of ``table`` into ``out_dir``; returns the model version used."""
    import ray

    init_ray()
    table, out_dir = Path(table), Path(out_dir)
    tracking_uri = resolve_tracking_uri(tracking_uri)
    ref = resolve(model_name, version, tracking_uri)
    # Fail before any work if the table cannot feed the model at all (a schema problem, not a bad row).
    columns = load_model(ref, tracking_uri).unwrap_python_model().columns
    missing = sorted(set(columns) - set(read_table_schema(table)))
    if missing:
        raise ValueError(f"{table} lacks feature column(s) {missing[:10]} needed by {ref.uri}")
    ds = (ray.data.read_csv(str(table)) if table.suffix == ".csv" else ray.data.read_parquet(str(table)))
    ds = ds.map_batches(score_batch, fn_kwargs={"ref": ref, "tracking_uri": tracking_uri},
                        batch_size=batch_size, batch_format="pandas", num_cpus=1)
    ds.write_parquet(str(out_dir))
    print(f"score: {table} scored by {ref.uri} into {out_dir}", file=sys.stderr)
    return ref


def read_scores(out_dir: str | Path) -> pd.DataFrame:
    return pads.dataset(Path(out_dir), format="parquet").to_table().to_pandas()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", type=Path, help="feature table: Parquet file/dir or CSV (as written by hitmusic build)")
    p.add_argument("out_dir", type=Path, help="output directory for the scored Parquet parts")
    p.add_argument("--model", default="hitmusicnet", help="registered model name (default hitmusicnet)")
    p.add_argument("--version", default=CHAMPION, help="version number or alias (default champion)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--batch-size", type=int, default=4096, help="rows per model call (default 4096)")


def main_from_args(args: argparse.Namespace) -> int:
    ref = run(args.table, args.out_dir, args.model, args.version, args.tracking_uri, args.batch_size)
    print(f"scored with {ref.name} version {ref.version}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main(__doc__, "python -m pipelines.score", add_arguments, main_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
