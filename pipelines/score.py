"""Ray Data job: score a whole catalogue with a registered model into Parquet.

    python -m pipelines.score TABLE OUT_DIR [--model hitmusicnet] [--version champion]
    ray job submit -- python -m pipelines.score s3://bucket/catalogue.parquet s3://bucket/scores

TABLE is a Parquet file or directory, or a CSV, local or ``s3://`` (an S3-compatible endpoint is taken from
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``). Either it carries the model's feature columns (as
``hitmusic build`` writes them), or it is a manifest with ``audio_uri`` (and optional ``lyrics`` and metadata
columns): features are then extracted first, exactly as ``hitmusic extract`` does.

The alias is resolved to one version before the job starts, so every row of a run is scored by the same
version even if the alias moves meanwhile. Output per row: ``track_id, popularity, class``, the interval and
class probabilities when the model gives them, ``model_name, model_version, error``. A row that cannot be
scored (failed extraction, a value the model rejects) keeps its place with null scores and the reason in
``error``: rows in = rows out. Re-running into the same OUT_DIR skips track_ids already scored there.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from hitmodels.cli import module_main
from hitmodels.config import FeatureConfig
from hitmodels.config import tracking_uri as resolve_tracking_uri
from hitmodels.registry import CHAMPION, ModelRef, resolve
from hitmodels.services import init_ray

BASE_COLUMNS = [("track_id", pa.string()), ("popularity", pa.float64()), ("class", pa.string())]
TAIL_COLUMNS = [("model_name", pa.string()), ("model_version", pa.string()), ("error", pa.string())]


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local path or ``s3://`` URI (S3-compatible endpoint from env)."""
    parsed = urlparse(str(uri))
    if parsed.scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        fs = pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True,
                               region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
        return fs, f"{parsed.netloc}{parsed.path}"
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def output_schema(model_outputs: list[str]) -> pa.Schema:
    """Fixed output schema: base columns, then every other model output as float64, then bookkeeping."""
    extra = [(c, pa.float64()) for c in model_outputs if c not in ("popularity", "class")]
    return pa.schema(BASE_COLUMNS + extra + TAIL_COLUMNS)


def load_model(ref: ModelRef, tracking_uri: str | None):
    import mlflow

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    return mlflow.pyfunc.load_model(ref.uri)


def model_outputs(model) -> list[str]:
    schema = model.metadata.get_output_schema()
    return schema.input_names() if schema is not None else ["popularity", "class"]


def extract_features(batch: pd.DataFrame, cfg: FeatureConfig) -> pd.DataFrame:
    """Add extracted features to manifest rows (``audio_uri``, ``lyrics``); metadata columns already in the
    batch win over nothing, absent ones stay missing and are imputed by the model."""
    from hitmodels.features import extract_row

    lyr = batch["lyrics"] if "lyrics" in batch else pd.Series([""] * len(batch))
    rows = [extract_row(t, u, ly, cfg) for t, u, ly in zip(batch["track_id"], batch["audio_uri"], lyr.fillna(""))]
    feats = pd.DataFrame(rows).drop(columns=["track_id"])
    keep = batch.drop(columns=[c for c in feats.columns if c in batch.columns]).reset_index(drop=True)
    return pd.concat([keep, feats], axis=1)


def predict_rows(model, frame: pd.DataFrame) -> tuple[pd.DataFrame | None, list[str | None]]:
    """Predict a frame; if the model rejects the frame, fall back to row by row so that one bad row costs
    only itself. Returns predictions (None where a row failed) and per-row errors."""
    try:
        return model.predict(frame).reset_index(drop=True), [None] * len(frame)
    except Exception:
        outs, errors = [], []
        for i in range(len(frame)):
            try:
                outs.append(model.predict(frame.iloc[[i]]))
                errors.append(None)
            except Exception as exc:
                outs.append(None)
                errors.append(f"model: {type(exc).__name__}: {exc}"[:500])
        template = next((o for o in outs if o is not None), None)
        if template is None:
            return None, errors
        blank = pd.DataFrame({c: [None] for c in template.columns})
        return pd.concat([o if o is not None else blank for o in outs], ignore_index=True), errors


def score_frame(model, ref: ModelRef, batch: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Score one batch; rows carrying an extraction error pass through with null scores and the reason."""
    batch = batch.reset_index(drop=True)
    n = len(batch)
    err = batch["error"].astype(object).where(batch["error"].notna(), None) if "error" in batch \
        else pd.Series([None] * n, dtype=object)
    bad = np.array([bool(e) for e in err])
    errors = np.array([f"features: {e}" if b else None for e, b in zip(err, bad)], dtype=object)
    columns = {name: np.full(n, None, dtype=object) for name in schema.names}
    columns["track_id"] = batch["track_id"].astype(str).to_numpy(dtype=object)
    good = np.flatnonzero(~bad)
    if len(good):
        out, row_errors = predict_rows(model, batch.iloc[good])
        failed = np.array([e is not None for e in row_errors])
        errors[good[failed]] = np.array(row_errors, dtype=object)[failed]
        if out is not None:
            for c in out.columns:
                if c in columns:
                    values = out[c].to_numpy(dtype=object, copy=True)
                    values[failed] = None
                    columns[c][good] = values
    columns["model_name"] = np.full(n, ref.name, dtype=object)
    columns["model_version"] = np.full(n, ref.version, dtype=object)
    columns["error"] = errors
    arrays = [pa.array(columns[f.name], type=f.type, from_pandas=True) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


_MODELS: dict[tuple[str, str | None], object] = {}


def score_batch(batch: pd.DataFrame, ref: ModelRef, tracking_uri: str | None, schema: pa.Schema,
                extract: FeatureConfig | None) -> pa.Table:
    """Ray Data task: (extract, then) score one batch. The model is loaded once per worker process and
    cached; tasks rather than actors so that no CPU stays held between batches and a small machine shared
    with Serve cannot deadlock."""
    key = (ref.uri, tracking_uri)
    if key not in _MODELS:
        _MODELS[key] = load_model(ref, tracking_uri)
    model = _MODELS[key]
    if extract is not None:
        batch = extract_features(batch, extract)
        # metadata a manifest does not carry is imputed by the model (training medians), as documented
        for c in model.unwrap_python_model().columns:
            if c not in batch:
                batch[c] = np.nan
    # integer columns (CSV, JSON) must reach the model as the double its signature declares
    ints = [c for c in batch.columns if pd.api.types.is_integer_dtype(batch[c]) or pd.api.types.is_bool_dtype(batch[c])]
    batch[ints] = batch[ints].astype("float64")
    return score_frame(model, ref, batch, schema)


def input_columns(uri: str) -> list[str]:
    fs, path = filesystem(uri)
    if path.endswith(".csv"):
        with fs.open_input_stream(path) as f:
            return list(pd.read_csv(f, nrows=0).columns)
    return pads.dataset(path, filesystem=fs, format="parquet").schema.names


def done_track_ids(out_dir: str) -> set[str]:
    """track_ids already scored in ``out_dir`` by an earlier (possibly interrupted) run."""
    fs, path = filesystem(out_dir)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        return set()
    files = [f.path for f in fs.get_file_info(pafs.FileSelector(path)) if f.path.endswith(".parquet")]
    if not files:
        return set()
    return set(pads.dataset(files, filesystem=fs, format="parquet").to_table(columns=["track_id"])
               ["track_id"].to_pylist())


def run(table: str | Path, out_dir: str | Path, model_name: str = "hitmusicnet", version: str = CHAMPION,
        tracking_uri: str | None = None, batch_size: int = 4096) -> ModelRef:
    """Score every row of ``table`` not yet in ``out_dir``; returns the model version used."""
    import ray

    init_ray()
    table, out_dir = str(table), str(out_dir)
    tracking_uri = resolve_tracking_uri(tracking_uri)
    ref = resolve(model_name, version, tracking_uri)
    model = load_model(ref, tracking_uri)
    columns = model.unwrap_python_model().columns
    have = set(input_columns(table))
    # Fail before any work if the table cannot feed the model at all (a schema problem, not a bad row).
    if "track_id" not in have:
        raise ValueError(f"{table} has no track_id column")
    metadata_only = [c for c in columns if c not in have]
    extract = None
    if metadata_only and "audio_uri" in have:
        extract = FeatureConfig()
    elif metadata_only:
        raise ValueError(f"{table} lacks feature column(s) {metadata_only[:10]} needed by {ref.uri} "
                         "(and has no audio_uri to extract them from)")
    fs, path = filesystem(table)
    ds = (ray.data.read_csv(path, filesystem=fs) if path.endswith(".csv")
          else ray.data.read_parquet(path, filesystem=fs))
    done = done_track_ids(out_dir)
    if done:
        from ray.data.expressions import col

        ds = ds.filter(expr=~col("track_id").is_in(sorted(done)))
        print(f"score: {len(done)} tracks already scored in {out_dir}: skipped", file=sys.stderr)
    schema = output_schema(model_outputs(model))
    ds = ds.map_batches(score_batch, batch_size=min(batch_size, 64) if extract else batch_size,
                        fn_kwargs={"ref": ref, "tracking_uri": tracking_uri, "schema": schema, "extract": extract},
                        batch_format="pandas", num_cpus=1)
    out_fs, out_path = filesystem(out_dir)
    ds.write_parquet(out_path, filesystem=out_fs)
    print(f"score: {table} scored by {ref.uri} into {out_dir}", file=sys.stderr)
    return ref


def read_scores(out_dir: str | Path) -> pd.DataFrame:
    fs, path = filesystem(str(out_dir))
    return pads.dataset(path, filesystem=fs, format="parquet").to_table().to_pandas()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", help="feature table or audio manifest: Parquet file/dir or CSV, local or s3://")
    p.add_argument("out_dir", help="output directory for the scored Parquet parts, local or s3://")
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
