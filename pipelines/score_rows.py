"""The scoring job's work on feature rows, as its Ray tasks run it: read a Parquet row group, build the
feature matrix, score it, lay the scores out as the output's rows.

A module of its own so that a task's worker imports NumPy, pyarrow and :mod:`hitmodels.kernels` only: the
job hands its tasks the model as a :class:`hitmodels.kernels.RowKernel`, so a fresh worker neither imports
torch or mlflow nor downloads the model (``pipelines/score.py``; ``benchmarks/bench_batch.py`` measures the
difference). Importable and runnable in any process; :mod:`pipelines.score` is the job around it.
"""

from __future__ import annotations

import functools
import json
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hitmodels.kernels import RowKernel
from hitmodels.outdir import ROW_KEY
from hitmodels.storage import s3_read


class ScoredBy(NamedTuple):
    """The registered model a job's rows are scored by, as every output row names it."""

    name: str
    version: str


def predictor(scorer, precision: str = "fp32"):
    """``(columns, X -> {output: array})`` of a :class:`~hitmodels.kernels.RowKernel` or of any object with
    a ``predictor(precision)`` method."""
    if isinstance(scorer, RowKernel):
        return scorer.columns, functools.partial(scorer.predict_array, precision=precision)
    return scorer.predictor(precision)


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
        import pandas as pd  # text columns only: a worker scoring numbers need not import it

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


def score_table(predict, columns: list[str], by, batch: pa.Table, schema: pa.Schema,
                inputs: tuple[np.ndarray, list[str | None]] | None = None) -> pa.Table:
    """Score one Arrow batch into ``schema``; a row carrying an extraction error, a non-numeric value or a
    value the model rejects keeps its place with null scores and the reason in ``error``. ``by``: the model's
    ``name`` and ``version`` (a :class:`ScoredBy` or a ``ModelRef``), written on every row. ``inputs``: the
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
            arrays.append(pa.array(np.full(n, by.name if f.name == "model_name" else by.version, dtype=object),
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


def read_row_group(fs: pafs.FileSystem, path: str, row_group: int, columns: list[str] | None) -> pa.Table:
    """One row group's ``columns``. On S3 its column chunks are fetched in a few coalesced range GETs
    (``pre_buffer``) instead of one GET per column: hundreds fewer requests, each of which could fail. A
    local file is memory-mapped: its uncompressed pages decode without a copy through a read buffer
    (0.15 against 0.25 s for 50,000 rows x 438 columns on one thread here)."""
    if isinstance(fs, pafs.LocalFileSystem):
        with pa.memory_map(path) as f:
            return pq.ParquetFile(f).read_row_group(row_group, columns=columns)
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f, pre_buffer=True).read_row_group(row_group, columns=columns)


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


def score_pieces(pieces: list[dict], scorer, by: ScoredBy, schema: pa.Schema, fs: pafs.FileSystem,
                 read_columns: list[str], batch_size: int, done: pa.Array | None, precision: str = "fp32") -> pa.Table:
    """Score Parquet row groups (``pieces``: ``path``, ``row_group``, ``other_keys``, ``stale``): read only the
    columns the model needs, skip rows already scored (by row key) and rows a later attempt superseded (a
    piece's ``stale`` keys), score, and return the scores alone. Reading here, in the task, keeps the
    hundreds of feature columns out of the object store. ``scorer``: a :class:`hitmodels.kernels.RowKernel`
    (NumPy only) or an object whose ``predictor(precision)`` gives ``(columns, X -> outputs)`` (a model
    loaded from the registry in the worker)."""
    columns, predict = predictor(scorer, precision)
    outs = []
    for piece in pieces:
        path, row_group, other, stale = (piece[c] for c in ("path", "row_group", "other_keys", "stale"))
        other_keys = None if other is None else {int(i): k for i, k in json.loads(other).items()}
        for batch in row_group_batches(fs, path, row_group, read_columns, batch_size, other_keys):
            if stale:
                batch = batch.filter(pc.invert(pc.is_in(batch.column(ROW_KEY),
                                                        value_set=pa.array(stale, pa.string()))))
            if done is not None:
                batch = batch.filter(pc.invert(pc.is_in(batch.column(ROW_KEY), value_set=done)))
            if batch.num_rows:
                outs.append(score_table(predict, columns, by, batch, schema))
    return pa.concat_tables(outs) if outs else schema.empty_table()


def score_into(pieces: list[dict], out_fs: pafs.FileSystem, out_path: str, attempts: dict[str, int] | None,
               **kwargs) -> int:
    """Ray task of the scoring job: :func:`score_pieces` (``kwargs``), then the scores as one new part of the
    output directory ``out_path``, whole or not at all (:func:`hitmodels.outdir.write_part`); returns the rows
    written."""
    from hitmodels.outdir import write_part

    table = score_pieces(pieces, **kwargs)
    return int(write_part(table, out_fs, out_path, attempts).column("rows")[0].as_py())
