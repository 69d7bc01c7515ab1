"""Ray Data job: score a whole catalogue with a registered model into Parquet.

    python -m pipelines.score TABLE OUT_DIR [--model hitmusicnet] [--version champion]
    ray job submit -- python -m pipelines.score s3://bucket/catalogue.parquet s3://bucket/scores

TABLE is a Parquet file or directory, or a CSV, local or ``s3://`` (an S3-compatible endpoint is taken from
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``). Either it carries the model's feature columns (as
``hitmusic build`` writes them), or it is a manifest with ``audio_uri`` (and optional ``lyrics`` and metadata
columns): features are then extracted first, exactly as ``hitmusic extract`` does. A model on log-mel segments
(``--model siamese-cnn``) scores an audio manifest (its segments computed per row, as ``hitmusic mels`` does)
or a mel store directory.

The alias is resolved to one version before the job starts, so every row of a run is scored by the same
version even if the alias moves meanwhile. Output per row: ``track_id, row_key, popularity, class``, the
interval and class probabilities when the model gives them, ``model_name, model_version, error``. A row that cannot be
scored (failed extraction, a value the model rejects) keeps its place with null scores and the reason in
``error``: rows in = rows out. Re-running into the same OUT_DIR skips the rows already scored there, found by
their ``row_key`` (as ``hitmusic extract`` keys its rows: a track's first row by its id, a later row with
the same id as ``<id>#<k>``, a row without an id as ``#row<n>``, its position); so duplicate track ids and
rows without one are each scored once, and rows appended to the input since are scored on resume. One run
writes into an OUT_DIR at a time, and each part appears whole or not at all (:mod:`hitmodels.outdir`; an
``s3://`` OUT_DIR is not locked); an unreadable part (from versions that wrote in place) is moved to
``OUT_DIR/_quarantine/`` and its rows redone. Scoring an audio manifest, a row whose worker dies every time
(out of memory, a native crash in a decoder) gets ``worker_died: ...`` and the rest of its batch is scored
(:mod:`hitmodels.isolate`).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hitmodels import isolate, outdir
from hitmodels.entry import module_main
from hitmodels.config import FeatureConfig, InputPolicy
from hitmodels.fetch import add_policy_arguments, policy_from_args
from hitmodels.config import tracking_uri as resolve_tracking_uri
from hitmodels.predict import PRECISIONS
from hitmodels.registry import CHAMPION, ModelRef, load_model, resolve
from hitmodels.services import init_ray
from hitmodels.data import ROW_KEY, row_keys
from hitmodels.storage import filesystem, s3_read

BASE_COLUMNS = [("track_id", pa.string()), (ROW_KEY, pa.string()), ("popularity", pa.float64()),
                ("class", pa.string())]
TEXT_OUTPUTS = ("class", "popularity_class")  # outputs that are class names; every other one is a number
TAIL_COLUMNS = [("model_name", pa.string()), ("model_version", pa.string()), ("error", pa.string())]


def output_schema(model_outputs: list[str]) -> pa.Schema:
    """Fixed output schema: base columns, then every other model output as float64, then bookkeeping."""
    extra = [(c, pa.string() if c in TEXT_OUTPUTS else pa.float64()) for c in model_outputs
             if c not in ("popularity", "class")]
    return pa.schema(BASE_COLUMNS + extra + TAIL_COLUMNS)


def model_outputs(model) -> list[str]:
    return list(model.outputs)


def manifest_dir(table: str | Path) -> str | None:
    """The directory a local manifest's relative ``audio_uri`` are relative to (None on S3), resolved here on
    the driver: the scoring tasks run in Ray workers, in another directory."""
    return None if str(table).startswith("s3://") else str(Path(table).resolve().parent)


def audio_uris(uris, base: str | None) -> list:
    from hitmodels.data import absolute_uri

    return list(uris) if base is None else [absolute_uri(u, Path(base)) for u in uris]


def extract_features(batch: pd.DataFrame, cfg: FeatureConfig, policy: InputPolicy,
                     base: str | None = None) -> pd.DataFrame:
    """Add extracted features to manifest rows (``audio_uri``, relative ones against ``base``, ``lyrics``);
    metadata columns already in the batch win over nothing, absent ones stay missing and are imputed by the
    model."""
    from hitmodels.features import extract_rows

    lyr = batch["lyrics"] if "lyrics" in batch else pd.Series([""] * len(batch))
    rows = extract_rows(list(zip(batch["track_id"], audio_uris(batch["audio_uri"], base), lyr.fillna(""))), cfg,
                        policy)
    feats = pd.DataFrame(rows).drop(columns=["track_id"])
    keep = batch.drop(columns=[c for c in feats.columns if c in batch.columns]).reset_index(drop=True)
    return pd.concat([keep, feats], axis=1)


def feature_matrix(batch: pa.Table, columns: list[str]) -> tuple[np.ndarray, list[str | None]]:
    """``(n_rows, n_columns)`` float32 of ``columns`` straight from Arrow (no DataFrame of hundreds of
    columns), and per row the first value that is not a number (``None`` for a clean row). Nulls become NaN,
    which the model imputes; text columns (a CSV with a stray word) are parsed and only the offending rows fail.
    """
    n = batch.num_rows
    # column-major, so that each column is one contiguous copy; the model reads it in row chunks
    X = np.empty((len(columns), n), dtype=np.float32).T
    errors: list[str | None] = [None] * n
    for j, c in enumerate(columns):
        col = batch.column(c)
        t = col.type
        if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_null(t) \
                or pa.types.is_decimal(t):
            X[:, j] = (col if pa.types.is_floating(t) else col.cast(pa.float64())).to_numpy(zero_copy_only=False)
            continue
        raw = col.to_pandas()
        num = pd.to_numeric(raw, errors="coerce")
        for i in np.flatnonzero(num.isna().to_numpy() & raw.notna().to_numpy()):
            if errors[i] is None and str(raw.iloc[i]).strip():
                errors[i] = f"value: {c} is not a number: {str(raw.iloc[i])[:80]!r}"
        X[:, j] = num.to_numpy(dtype=np.float64, na_value=np.nan)
    return X, errors


def predict_rows(predict, X: np.ndarray) -> tuple[dict[str, np.ndarray] | None, list[str | None]]:
    """``predict(X) -> {output: array}`` over all rows; if it raises, row by row so that one bad row costs
    only itself. Returns the outputs (rows that failed hold placeholders) and per-row errors."""
    try:
        return predict(X), [None] * len(X)
    except Exception:
        outs, errors = [], []
        for i in range(len(X)):
            try:
                outs.append(predict(X[i:i + 1]))
                errors.append(None)
            except Exception as exc:
                outs.append(None)
                errors.append(f"model: {type(exc).__name__}: {exc}"[:500])
        template = next((o for o in outs if o is not None), None)
        if template is None:
            return None, errors
        blank = {k: np.zeros(1, dtype=v.dtype) for k, v in template.items()}
        return {k: np.concatenate([(o or blank)[k] for o in outs]) for k in template}, errors


def score_table(predict, columns: list[str], ref: ModelRef, batch: pa.Table, schema: pa.Schema,
                inputs: tuple[np.ndarray, list[str | None]] | None = None) -> pa.Table:
    """Score one Arrow batch into ``schema``; a row carrying an extraction error, a non-numeric value or a
    value the model rejects keeps its place with null scores and the reason in ``error``. ``inputs``: the
    model's inputs and per-row errors when the caller built them (log-mel models), instead of
    :func:`feature_matrix` of ``columns``."""
    n = batch.num_rows
    errors = np.full(n, None, dtype=object)
    if "error" in batch.column_names:
        for i, e in enumerate(batch.column("error").to_pylist()):
            if e:
                errors[i] = f"features: {e}"
    X, value_errors = inputs if inputs is not None else feature_matrix(batch, columns)
    for i, e in enumerate(value_errors):
        if e is not None and errors[i] is None:
            errors[i] = e
    good = np.flatnonzero(np.equal(errors, None))
    ok = np.zeros(n, dtype=bool)
    out: dict[str, np.ndarray] = {}
    if len(good):
        out, row_errors = predict_rows(predict, X[good] if len(good) < n else X)
        failed = np.array([e is not None for e in row_errors], dtype=bool)
        errors[good[failed]] = np.array(row_errors, dtype=object)[failed]
        ok[good[~failed]] = True
        out = out or {}
    arrays = []
    for f in schema:
        if f.name == "track_id":
            arrays.append(batch.column("track_id").cast(pa.string()))
        elif f.name == ROW_KEY:  # the input row's key, which a resume looks for
            arrays.append(batch.column(ROW_KEY).cast(pa.string()) if ROW_KEY in batch.column_names
                          else pa.nulls(n, pa.string()))
        elif f.name == "model_name" or f.name == "model_version":
            arrays.append(pa.array(np.full(n, ref.name if f.name == "model_name" else ref.version, dtype=object),
                                   type=f.type))
        elif f.name == "error":
            arrays.append(pa.array(errors, type=f.type))
        elif f.name in out:
            values = np.empty(n, dtype=out[f.name].dtype)
            values[good] = out[f.name]
            arrays.append(pa.array(values, type=f.type, mask=~ok))
        else:
            arrays.append(pa.nulls(n, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def array_predictor(model, columns: list[str], precision: str = "fp32"):
    """``X -> {output: array}`` for a loaded model: the project's models answer on arrays directly (no
    per-call schema enforcement over every column; :func:`feature_matrix` already checked the values), in
    ``precision``; any other model gets a DataFrame."""
    if hasattr(model, "predict_array"):
        return functools.partial(model.predict_array, precision=precision)

    def predict(X: np.ndarray) -> dict[str, np.ndarray]:
        out = model.predict(None, pd.DataFrame(X.astype(np.float64), columns=columns))
        return {c: out[c].to_numpy() for c in out.columns}

    return predict


_MODELS: dict[tuple[str, str | None], object] = {}


def cached_model(ref: ModelRef, tracking_uri: str | None):
    """The model, loaded once per worker process: tasks rather than actors, so that no CPU stays held
    between batches and a small machine shared with Serve cannot deadlock, yet no reload per batch."""
    key = (ref.uri, tracking_uri)
    if key not in _MODELS:
        _MODELS[key] = load_model(ref, tracking_uri)
    return _MODELS[key]


def score_batch(batch: pa.Table, ref: ModelRef, tracking_uri: str | None, schema: pa.Schema,
                extract: FeatureConfig | None, precision: str = "fp32",
                policy: InputPolicy | None = None, base: str | None = None) -> pa.Table:
    """Ray Data task over rows Ray Data read (CSV, audio manifests): (extract, then) score one batch."""
    model = cached_model(ref, tracking_uri)
    columns = model.columns
    if extract is not None:
        frame = extract_features(batch.to_pandas(), extract, policy, base)
        # metadata a manifest does not carry is imputed by the model (training medians), as documented
        for c in columns:
            if c not in frame:
                frame[c] = np.nan
        batch = pa.Table.from_pandas(frame, preserve_index=False)
    return score_table(array_predictor(model, columns, precision), columns, ref, batch, schema)


def score_mel_batch(batch: pa.Table, ref: ModelRef, tracking_uri: str | None, schema: pa.Schema, source: str,
                    policy: InputPolicy | None = None, base: str | None = None) -> pa.Table:
    """Ray Data task for a model on log-mel segments: its segment of each row, from the row's ``audio_uri``
    (``source="audio"``, computed as ``hitmusic mels`` does, same errors) or from a mel store's row
    (``source="store"``); the tagger's ``tag_*`` columns the model takes, computed from the same decode (or read
    from a store made with ``--tags``); its other metadata columns when the batch has them (else imputed); then
    scored. A row without a segment or tags keeps its place with the reason in ``error``."""
    from hitmodels import features, melstore

    model = cached_model(ref, tracking_uri)
    df = batch.to_pandas()
    segment = model.segment
    tagged = features.tagger_columns(model.columns[1:])
    if source == "audio":
        rows = melstore.mel_rows(list(zip(df["track_id"], audio_uris(df["audio_uri"], base))), model.mel_config, policy,
                                 bool(tagged))
        errors = [None if not r["error"] else f"tags: {r['error']}" if r["error"].startswith("internal: tagger")
                  else f"audio: {r['error']}" for r in rows]
        segments = [r.get(segment) or r.get("mid30") for r in rows]
        frame = pd.DataFrame({melstore.MEL_COLUMN: segments})
        for c in tagged:
            frame[c] = [r.get(c, np.nan) for r in rows]
    else:
        # pandas reads Arrow's nulls as NaN in text columns and None in binary ones
        errors = [f"mel store: {e}" if isinstance(e, str) and e else None for e in df["error"]]
        hl = df["hl30"] if "hl30" in df else pd.Series([None] * len(df))
        segments = [h if isinstance(h, bytes) else m for h, m in zip(hl, df["mid30"])]
        frame = pd.DataFrame({melstore.MEL_COLUMN: segments})
        for c in tagged:  # the job checked that the store has them
            frame[c] = df[c].to_numpy(dtype=np.float64)
    meta = [c for c in model.columns[1:] if c in df and c not in tagged]
    if meta:  # metadata columns checked as the feature-row path checks them: a bad value fails its row only
        values, value_errors = feature_matrix(batch, meta)
        frame[meta] = values
        errors = [e or v for e, v in zip(errors, value_errors)]
    for c in model.columns[1:]:
        if c not in frame:
            frame[c] = np.nan  # absent metadata: imputed with the training medians

    def predict(P: np.ndarray) -> dict[str, np.ndarray]:
        out = model.predict(None, frame.iloc[P[:, 0]].reset_index(drop=True))
        return {c: out[c].to_numpy() for c in out.columns}

    plain = batch.drop_columns([c for c in ("error",) if c in batch.column_names])
    if ROW_KEY not in plain.column_names:  # a store from before row keys: its rows are keyed by track_id
        plain = plain.append_column(ROW_KEY, plain.column("track_id").cast(pa.string()))
    return score_table(predict, [], ref, plain, schema, (np.arange(len(df))[:, None], errors))


def parquet_pieces(fs: pafs.FileSystem, path: str) -> list[dict]:
    """The work units of a Parquet file or directory: one per row group (``path``, ``row_group``, ``rows``)."""
    def read() -> list[dict]:
        pieces = []
        for fragment in pads.dataset(path, filesystem=fs, format="parquet").get_fragments():
            fragment.ensure_complete_metadata()
            pieces += [{"path": fragment.path, "row_group": rg.id, "rows": rg.num_rows} for rg in fragment.row_groups]
        return pieces

    return s3_read(fs, read)


def piece_keys(fs: pafs.FileSystem, pieces: list[dict]) -> list[str]:
    """Per piece, as JSON ``{row in the group: key}``, the rows whose :func:`hitmodels.data.row_keys` key is
    not their track_id (a duplicate id's later rows, rows without one); usually ``{}``. Worked out here from
    the track_id column alone, in the pieces' order, since a duplicate's key depends on the rows before it."""
    import json

    ids = [s3_read(fs, read_row_group, fs, piece["path"], piece["row_group"], ["track_id"])
           .column("track_id").cast(pa.string()).to_pylist() for piece in pieces]
    keys = iter(row_keys([t for group in ids for t in group])[0])
    return [json.dumps({i: k for i, (t, k) in enumerate(zip(group, keys)) if k != t}) for group in ids]


def read_row_group(fs: pafs.FileSystem, path: str, row_group: int, columns: list[str] | None) -> pa.Table:
    """One row group's ``columns``. On S3 its column chunks are fetched in a few coalesced range GETs
    (``pre_buffer``) instead of one GET per column: hundreds fewer requests, each of which could fail."""
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f, pre_buffer=not isinstance(fs, pafs.LocalFileSystem)).read_row_group(
            row_group, columns=columns)


def row_group_batches(fs: pafs.FileSystem, path: str, row_group: int, columns: list[str] | None,
                      batch_size: int, other_keys: dict[int, str] | None = None):
    """Slices of at most ``batch_size`` rows of one row group; with ``other_keys`` (None: the table has its
    own :data:`ROW_KEY` column), each with a :data:`ROW_KEY` column: the row's track_id, or
    ``other_keys[row in the group]`` where the row's key is not its id (:func:`piece_keys`). The row group is read whole: pyarrow's ``iter_batches`` decodes ahead
    and peaked at 3.6x the memory of one row group here."""
    table = s3_read(fs, read_row_group, fs, path, row_group, columns)
    for start in range(0, table.num_rows, batch_size):
        part = table.slice(start, batch_size)
        if other_keys is not None:
            keys = part.column("track_id").cast(pa.string())
            if other_keys:
                keys = pa.array([other_keys.get(start + i, k) for i, k in enumerate(keys.to_pylist())],
                                pa.string())
            part = part.append_column(ROW_KEY, keys)
        yield part


def score_pieces(pieces: pa.Table, ref: ModelRef, tracking_uri: str | None, schema: pa.Schema,
                 fs: pafs.FileSystem, read_columns: list[str], batch_size: int, done: pa.Array | None,
                 precision: str = "fp32") -> pa.Table:
    """Ray Data task over Parquet row groups: read only the columns the model needs, skip rows already
    scored (by row key) and rows a later attempt superseded (a piece's ``stale`` keys), score, and hand back the scores alone. Reading inside the task keeps the hundreds of feature
    columns out of the object store (3x the plain loop's time when Ray Data read them and passed them on)."""
    model = cached_model(ref, tracking_uri)
    features = model.columns
    predict = array_predictor(model, features, precision)
    outs = []
    import json

    for path, row_group, other, stale in zip(*(pieces.column(c).to_pylist()
                                               for c in ("path", "row_group", "other_keys", "stale"))):
        other_keys = None if other is None else {int(i): k for i, k in json.loads(other).items()}
        for batch in row_group_batches(fs, path, row_group, read_columns, batch_size, other_keys):
            if stale:
                batch = batch.filter(pc.invert(pc.is_in(batch.column(ROW_KEY), value_set=pa.array(stale, pa.string()))))
            if done is not None:
                batch = batch.filter(pc.invert(pc.is_in(batch.column(ROW_KEY), value_set=done)))
            if batch.num_rows:
                outs.append(score_table(predict, features, ref, batch, schema))
    return pa.concat_tables(outs) if outs else schema.empty_table()


def keyed_rows(fs: pafs.FileSystem, path: str, done: set[str], block_rows: int = 4096) -> tuple[object, pa.Table]:
    """The rows of a CSV or Parquet table (an audio manifest, a CSV feature table), read here on the driver,
    each with its :data:`ROW_KEY` (the table's own, each key's latest attempt, where it has the column; else
    :func:`hitmodels.data.row_keys`), without those in ``done``, as a Ray
    Dataset of ``block_rows``-row blocks. Read whole, so meant for manifests (a few columns per track); a big
    feature table is scored from Parquet row groups in the tasks instead (:func:`score_pieces`). Returns the
    Dataset and the rows it holds (what :func:`write_isolated` checks were written)."""
    import pyarrow.csv as pacsv
    import ray

    if path.endswith(".csv"):
        with fs.open_input_stream(path) as f:
            t = pacsv.read_csv(f)
    else:
        t = pads.dataset(path, filesystem=fs, format="parquet").to_table()
    if ROW_KEY in t.column_names:  # the table's own keys (a hitmusic extract or build output); latest attempts
        keys = t.select([c for c in (ROW_KEY, outdir.ATTEMPT) if c in t.column_names]).to_pandas()
        t = t.take(pa.array(outdir.latest(keys.assign(_row=np.arange(len(keys))))["_row"].to_numpy()))
    else:
        t = t.append_column(ROW_KEY, pa.array(row_keys(t.column("track_id").cast(pa.string()).to_pylist())[0],
                                              pa.string()))
    if done:
        t = t.filter(pc.invert(pc.is_in(t.column(ROW_KEY), value_set=pa.array(sorted(done), pa.string()))))
    return ray.data.from_arrow([t.slice(i, block_rows) for i in range(0, t.num_rows, block_rows)] or [t]), t


def arrow_task(frame: pd.DataFrame, task, **kwargs) -> pa.Table:
    """``task`` (an Arrow batch task) on one row that :func:`hitmodels.isolate.redo_one_by_one` hands over as
    a DataFrame."""
    return task(pa.Table.from_pandas(frame, preserve_index=False), **kwargs)


def write_isolated(ds, out_dir: str, state: outdir.Resume, rows: pa.Table, task, task_kwargs: dict, ref: ModelRef,
                   schema: pa.Schema, max_attempts: int, remote_args: dict | None = None) -> None:
    """Write ``ds`` (``task`` over ``rows``) into ``out_dir``, with the rows of a batch whose worker died
    every time (a poison row: out of memory, a native crash in a decoder) set aside, then scored one per
    task (:mod:`hitmodels.isolate`): the healthy rows of that batch get their scores, the poison row its
    ``worker_died`` error, and rows in = rows out."""
    if outdir.write_dataset(ds, out_dir, set_aside_failed=True, attempts=state.retry) >= rows.num_rows:
        return  # one row out per row in: no block was set aside
    todo = rows.select(["track_id", ROW_KEY]).to_pandas()
    lost_keys = set(outdir.not_written(todo, state, scored(out_dir, max_attempts)[0])[ROW_KEY])
    if not lost_keys:
        return
    lost = rows.filter(pc.is_in(rows.column(ROW_KEY), value_set=pa.array(sorted(lost_keys), pa.string())))
    fs, path = filesystem(out_dir)

    def error_table(row: pd.DataFrame, reason: str) -> pa.Table:
        keys = pa.Table.from_pandas(row[["track_id", ROW_KEY]].astype(object), preserve_index=False)
        return score_table(None, [], ref, keys, schema, (np.empty((1, 0), np.float32), [reason]))

    for table in isolate.redo_one_by_one(lost.to_pandas(), arrow_task, {"task": task, **task_kwargs}, error_table,
                                         "score", remote_args):
        outdir.write_part(table, fs, path, state.retry)


def input_columns(uri: str) -> list[str]:
    fs, path = filesystem(uri)
    if path.endswith(".csv"):
        with fs.open_input_stream(path) as f:
            return list(pd.read_csv(f, nrows=0).columns)
    return pads.dataset(path, filesystem=fs, format="parquet").schema.names


QUARANTINE = "_quarantine"  # a leading underscore keeps it out of Arrow's dataset discovery


def _progress_columns(fs: pafs.FileSystem, part: str, out_dir: str) -> pd.DataFrame:
    names = pq.read_schema(part, filesystem=fs).names
    if ROW_KEY not in names:
        raise ValueError(f"{out_dir} was begun by a version of hitmusic that kept no row keys: score into a new "
                         "directory")
    wanted = [c for c in (ROW_KEY, "error", "model_version", outdir.ATTEMPT) if c in names]
    return pq.read_table(part, columns=wanted, filesystem=fs).to_pandas()


def scored(out_dir: str, max_attempts: int = outdir.MAX_ATTEMPTS) -> tuple[outdir.Resume, set[str]]:
    """What a run into ``out_dir`` skips and retries (:func:`hitmodels.outdir.resume_from`: a failed row is
    scored again until it has failed ``max_attempts`` times) and the model versions that scored it. A part
    file that cannot be read (cut short by a crash in versions that wrote parts in place) is moved to
    ``out_dir/_quarantine`` so that its rows count as not done, are scored again, and every later read of
    ``out_dir`` succeeds; on S3 only a part that is not Parquet is, while one S3 keeps failing to serve past
    the retries (:func:`hitmodels.storage.s3_read`) fails the run and stays. An output begun before row keys existed is refused: it can only be told apart by
    track_id, which loses duplicate rows and repeats rows without an id."""
    fs, path = filesystem(out_dir)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return outdir.resume_from(pd.DataFrame(columns=[ROW_KEY, "error"]), max_attempts), set()
    frames = []
    for info in fs.get_file_info(pafs.FileSelector(path)):
        if not info.path.endswith(".parquet"):
            continue
        try:
            frames.append(s3_read(fs, _progress_columns, fs, info.path, out_dir))
        except (pa.ArrowException, OSError) as exc:
            if isinstance(fs, pafs.S3FileSystem) and not isinstance(exc, pa.ArrowInvalid):
                raise  # S3 still failing after the retries: the part may be fine, so keep it
            target = f"{path}/{QUARANTINE}/{info.base_name}"
            fs.create_dir(f"{path}/{QUARANTINE}")
            fs.move(info.path, target)
            print(f"score: {info.path} is unreadable ({type(exc).__name__}: {str(exc)[:200]}); moved to "
                  f"{target}, its tracks are scored again", file=sys.stderr)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[ROW_KEY, "error"])
    versions = {v for v in rows.get("model_version", pd.Series(dtype=object)).tolist() if isinstance(v, str)}
    return outdir.resume_from(rows[rows[ROW_KEY].notna()], max_attempts), versions


def run(table: str | Path, out_dir: str | Path, model_name: str = "hitmusicnet", version: str = CHAMPION,
        tracking_uri: str | None = None, batch_size: int = 16384, precision: str = "fp32",
        policy: InputPolicy | None = None, max_attempts: int = outdir.MAX_ATTEMPTS, batch_task=None) -> ModelRef:
    """Score every row of ``table`` not yet in ``out_dir`` (a row that failed is scored again until it has
    failed ``max_attempts`` times); returns the model version used. ``policy``: what the ``audio_uri`` of a
    manifest may name and the input bounds (default :meth:`InputPolicy.for_manifest`). One run per
    ``out_dir`` at a time (:func:`hitmodels.outdir.exclusive`). ``batch_task``: the task over an audio
    manifest's or CSV's rows (default :func:`score_batch`, :func:`score_mel_batch` for a model on log-mel
    segments; the poison-row tests pass one that crashes its worker)."""
    with outdir.exclusive(str(out_dir), "score"):
        return _run(table, out_dir, model_name, version, tracking_uri, batch_size, precision, policy, max_attempts,
                    batch_task)


def _run(table: str | Path, out_dir: str | Path, model_name: str, version: str, tracking_uri: str | None,
         batch_size: int, precision: str, policy: InputPolicy | None, max_attempts: int,
         batch_task=None) -> ModelRef:
    import ray

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose {' or '.join(PRECISIONS)}")

    table, out_dir = str(table), str(out_dir)
    tracking_uri = resolve_tracking_uri(tracking_uri)
    ref = resolve(model_name, version, tracking_uri)  # before Ray starts: a registry outage fails fast
    model = load_model(ref, tracking_uri)
    init_ray()
    if precision not in model.precisions:
        raise ValueError(f"{ref.uri} is a {model.family} model, which scores in {', '.join(model.precisions)} "
                         f"only, not {precision}")
    columns = model.columns
    have = set(input_columns(table))
    # Fail before any work if the table cannot feed the model at all (a schema problem, not a bad row).
    if "track_id" not in have:
        raise ValueError(f"{table} has no track_id column")
    from hitmodels import families

    if families.get(model.family).input_kind == "mel":
        return _run_mel(table, out_dir, ref, model, have, tracking_uri, batch_size, policy, max_attempts, batch_task)
    metadata_only = [c for c in columns if c not in have]
    extract = None
    if metadata_only and "audio_uri" in have:
        extract = model.feature_config  # as the training table's features were extracted
    elif metadata_only:
        raise ValueError(f"{table} lacks feature column(s) {metadata_only[:10]} needed by {ref.uri} "
                         "(and has no audio_uri to extract them from)")
    fs, path = filesystem(table)
    state = _done_and_same_version(out_dir, ref, max_attempts)
    done = state.done
    schema = output_schema(model_outputs(model))
    if extract is None and not path.endswith(".csv"):
        pieces = parquet_pieces(fs, path)
        if not pieces:
            raise ValueError(f"{table} holds no Parquet row groups")
        files = sorted({p["path"] for p in pieces})
        own = all(ROW_KEY in pq.read_schema(f, filesystem=fs).names for f in files)
        if own:
            # the table's own keys (hitmusic extract's or build's, made in manifest order), not ones rebuilt
            # from track_id in part order; a key an extract re-run retried is scored from its latest attempt
            stale: dict[str, list[str]] = {}
            for entry in outdir.stale_rows(fs, files).to_pylist():
                part, key = entry.split("\x1f", 1)
                stale.setdefault(part, []).append(key)
            for piece in pieces:
                piece["other_keys"], piece["stale"] = None, stale.get(piece["path"], [])
        else:  # a table written elsewhere: keyed as extract keys a manifest, by track_id in row order
            for piece, other in zip(pieces, piece_keys(fs, pieces)):
                piece["other_keys"], piece["stale"] = other, []
        wanted = ["track_id", *([ROW_KEY] if own else []), *columns, *(["error"] if "error" in have else [])]
        ds = ray.data.from_items(pieces, override_num_blocks=len(pieces)).map_batches(
            score_pieces, batch_size=None, batch_format="pyarrow", num_cpus=1, max_retries=isolate.TASK_RETRIES,
            fn_kwargs={"ref": ref, "tracking_uri": tracking_uri, "schema": schema, "fs": fs, "read_columns": wanted,
                       "batch_size": batch_size, "done": pa.array(sorted(done), pa.string()) if done else None,
                       "precision": precision})
        outdir.write_dataset(ds, out_dir, attempts=state.retry)  # feature rows: no decoder to crash a worker
    else:
        task = batch_task or score_batch
        kwargs = {"ref": ref, "tracking_uri": tracking_uri, "schema": schema, "extract": extract,
                  "precision": precision, "policy": policy or InputPolicy.for_manifest(table),
                  "base": manifest_dir(table)}
        read, rows = keyed_rows(fs, path, done)
        ds = read.map_batches(task, batch_size=min(batch_size, 64) if extract else batch_size, fn_kwargs=kwargs,
                              batch_format="pyarrow", num_cpus=1, max_retries=isolate.TASK_RETRIES)
        write_isolated(ds, out_dir, state, rows, task, kwargs, ref, schema, max_attempts)
    print(f"score: {table} scored by {ref.uri} ({precision}) into {out_dir}", file=sys.stderr)
    return ref


def _done_and_same_version(out_dir: str, ref: ModelRef, max_attempts: int) -> outdir.Resume:
    """What a run into ``out_dir`` skips and retries (:func:`scored`); refuses an output scored by another
    version."""
    state, versions = scored(out_dir, max_attempts)
    if versions - {ref.version}:
        # one output, one version: finishing an interrupted run with another one would mix them silently
        raise ValueError(f"{out_dir} already holds scores by {ref.name} version(s) {sorted(versions)}, not "
                         f"version {ref.version}: score into a new directory, or pass --version "
                         f"{sorted(versions)[0]} to finish the earlier run")
    if state.latest_attempt:
        print(f"score: in {out_dir}: {state.line()}", file=sys.stderr)
    return state


def _run_mel(table: str, out_dir: str, ref: ModelRef, model, have: set[str], tracking_uri: str,
             batch_size: int, policy: InputPolicy | None, max_attempts: int, batch_task=None) -> ModelRef:
    """:func:`run` for a model on log-mel segments: ``table`` is a mel store (``hitmusic mels``) or an audio
    manifest (segments computed per row)."""
    import ray

    from hitmodels import features
    from hitmodels.melstore import MelStore, is_store

    if is_store(table):
        store = MelStore(table)
        if store.config != model.mel_config:
            raise ValueError(f"{table} holds segments computed with other settings ({store.config}) than "
                             f"{ref.uri} was trained on ({model.mel_config})")
        tagged = features.tagger_columns(model.columns[1:])
        if tagged and not store.tags:
            raise ValueError(f"{ref.uri} takes the tagger's {len(tagged)} tag_* columns and the mel store {table} "
                             "has none: rebuild it with hitmusic mels --tags, or score the audio manifest (the tags "
                             "are then computed per track)")
        if not store.files:
            raise ValueError(f"the mel store {table} holds no segments yet")
        # only the segment the model takes (hl30 is null where it is mid30's): half a store's bytes for mid30
        columns = ["track_id", "error", "mid30"] + (["hl30"] if model.segment == "hl30" else []) + tagged
        # a store row's own key (a store from before row keys: its track_id), not a position: a store that
        # grew since (hitmusic mels resumed) still resumes
        key = ROW_KEY if all(ROW_KEY in pq.read_schema(f, filesystem=store.fs).names for f in store.files) \
            else "track_id"
        columns += [ROW_KEY] if key == ROW_KEY else []
        stale = outdir.stale_rows(store.fs, store.files) if key == ROW_KEY else pa.array([], pa.string())
        source, read = "store", ray.data.read_parquet(store.files, filesystem=store.fs, columns=columns,
                                                      include_paths=bool(len(stale)))
        if len(stale):  # rows a later attempt of hitmusic mels superseded: each key scored from its latest
            read = read.map_batches(outdir.drop_stale, fn_kwargs={"stale": stale}, batch_size=None,
                                    batch_format="pyarrow")
    elif "audio_uri" in have:
        if features.tagger_columns(model.columns[1:]):
            features.load_tagger()  # here, before the job: a missing wheel is one clear error, not one per task
        fs, path = filesystem(table)
        source = "audio"
        state = _done_and_same_version(out_dir, ref, max_attempts)
        read, rows = keyed_rows(fs, path, state.done, block_rows=64)
    else:
        raise ValueError(f"{ref.uri} is a {model.family} model on log-mel segments: score an audio manifest "
                         f"(audio_uri) or a mel store (hitmusic mels), not {table}")
    if source == "store":
        state = _done_and_same_version(out_dir, ref, max_attempts)
        if state.done:
            from ray.data.expressions import col

            read = read.filter(expr=~col(key).is_in(sorted(state.done)))
    schema = output_schema(model_outputs(model))
    task = batch_task or score_mel_batch
    kwargs = {"ref": ref, "tracking_uri": tracking_uri, "schema": schema, "source": source,
              "policy": policy or InputPolicy.for_manifest(table),
              "base": manifest_dir(table) if source == "audio" else None}
    ds = read.map_batches(task, batch_size=min(batch_size, 16 if source == "audio" else 256),
                          batch_format="pyarrow", num_cpus=1, max_retries=isolate.TASK_RETRIES, fn_kwargs=kwargs)
    if source == "audio":  # decoding is where a row can take its worker down
        write_isolated(ds, out_dir, state, rows, task, kwargs, ref, schema, max_attempts)
    else:
        outdir.write_dataset(ds, out_dir, attempts=state.retry)
    print(f"score: {table} scored by {ref.uri} into {out_dir}", file=sys.stderr)
    return ref


def read_scores(out_dir: str | Path) -> pd.DataFrame:
    """The scores in ``out_dir``, one row per input row: its latest attempt (:mod:`hitmodels.outdir`)."""
    fs, path = filesystem(str(out_dir))
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(path)) if i.path.endswith(".parquet")
             and i.type == pafs.FileType.File]
    return outdir.latest(outdir.read_parts(fs, sorted(files)))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", help="feature table or audio manifest: Parquet file/dir or CSV, local or s3://")
    p.add_argument("out_dir", help="output directory for the scored Parquet parts, local or s3://")
    p.add_argument("--model", default="hitmusicnet", help="registered model name (default hitmusicnet)")
    p.add_argument("--version", default=CHAMPION, help="version number or alias (default champion)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--batch-size", type=int, default=16384,
                   help="rows read and scored at a time per worker (default 16384; at most 64 for audio manifests; "
                        "a model on log-mel segments: 16 for audio manifests, 256 for a mel store)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="the model's arithmetic: fp32 (default, as trained and as Serve answers) or, for "
                        "HitMusicNet versions, bf16 (~3x faster network on CPUs with AVX512-BF16/AMX; scores move "
                        "by ~0.3 points on average, up to ~2)")
    outdir.add_resume_argument(p)
    add_policy_arguments(p)


def main_from_args(args: argparse.Namespace) -> int:
    ref = run(args.table, args.out_dir, args.model, args.version, args.tracking_uri, args.batch_size,
              args.precision, policy_from_args(args, args.table), args.max_attempts)
    print(f"scored with {ref.name} version {ref.version}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main(__doc__, "python -m pipelines.score", add_arguments, main_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
