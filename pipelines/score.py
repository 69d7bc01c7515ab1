"""Ray job: score a whole catalogue with a registered model into Parquet.

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
their ``row_key`` (as ``hitmusic extract`` keys its rows: a track's first row by its id (a ``#`` in it doubled), a later row with
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
from dataclasses import dataclass
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

from pipelines.score_rows import ScoredBy, feature_matrix, read_row_group, score_table

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


@dataclass(frozen=True)
class FromRegistry:
    """A task's scorer that loads the model in the worker (:func:`cached_model`): for a family without a
    NumPy kernel, and for ``--precision bf16`` (torch's arithmetic)."""

    ref: ModelRef
    tracking_uri: str | None

    def predictor(self, precision: str):
        model = cached_model(self.ref, self.tracking_uri)
        return model.columns, array_predictor(model, model.columns, precision)


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

    columns = [s3_read(fs, read_row_group, fs, piece["path"], piece["row_group"], ["track_id"])
               .column("track_id").cast(pa.string()) for piece in pieces]
    every = pa.chunked_array([c for col in columns for c in col.chunks], pa.string())
    if not len(every) or (every.null_count == 0 and pc.count_distinct(every).as_py() == len(every)
                          and not pc.any(pc.match_substring(every, "#")).as_py()
                          and pc.min(pc.utf8_length(pc.utf8_trim_whitespace(every))).as_py() > 0):
        return ["{}"] * len(pieces)  # unique, present ids without a '#': every key is its id (the usual table)
    ids = [col.to_pylist() for col in columns]
    keys = iter(row_keys([t for group in ids for t in group])[0])
    return [json.dumps({i: k for i, (t, k) in enumerate(zip(group, keys)) if k != t}) for group in ids]


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
    if outdir.write_dataset(ds, out_dir, set_aside_failed=True, attempts=state.retry, total=rows.num_rows,
                            desc="score") >= rows.num_rows:
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


QUARANTINE = outdir.QUARANTINE


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
    # an unreadable part is moved aside (on S3, one S3 keeps failing to serve fails the run instead)
    parts = outdir.readable_parts(fs, path, quarantine=True, job="score")
    frames = [s3_read(fs, _progress_columns, fs, part, out_dir) for part in parts]
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
        # the model as arrays where its family exports them: a fresh worker then imports neither torch nor
        # mlflow and downloads nothing (pipelines/score_rows.py)
        kernel = None
        if precision == "fp32" and hasattr(model, "kernel"):
            try:
                kernel = model.kernel()
            except ValueError as exc:  # a layer the kernels have no step for: the model scores in the workers
                print(f"score: {ref.uri} has no NumPy kernel ({exc}); its workers load it", file=sys.stderr)
        score_row_groups(pieces, out_dir, state.retry, scorer=kernel or FromRegistry(ref, tracking_uri),
                         by=ScoredBy(ref.name, ref.version), schema=schema, fs=fs, read_columns=wanted,
                         batch_size=batch_size, done=pa.array(sorted(done), pa.string()) if done else None,
                         precision=precision)
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


def score_row_groups(pieces: list[dict], out_dir: str, attempts: dict[str, int], **kwargs) -> int:
    """The feature-table job: Ray tasks of :func:`pipelines.score_rows.score_into` over consecutive row groups
    of at least ``batch_size`` rows each (``kwargs`` are :func:`~pipelines.score_rows.score_pieces`'s),
    each writing its part; a progress line with rate and ETA; returns the rows written. Plain tasks rather
    than Ray Data: its worker imports and per-task scheduling cost a feature-row job a third of its time here
    (benchmarks/README.md), and these tasks need neither its streaming nor its operators. A task whose
    worker died is retried (:data:`hitmodels.isolate.TASK_RETRIES`); one that raises fails the job, and the
    others are cancelled (their parts, written whole or not at all, are picked up by a resume)."""
    import ray
    from tqdm import tqdm

    from pipelines.score_rows import score_into

    out_fs, out_path = filesystem(out_dir)
    out_fs.create_dir(out_path, recursive=True)
    groups, size = [[]], 0
    for piece in pieces:
        if size >= kwargs["batch_size"]:
            groups.append([])
            size = 0
        groups[-1].append(piece)
        size += piece["rows"]
    # put once, not pickled into every task: the model's arrays, and the keys done and retried (millions of
    # them after a bad run)
    shared = {k: ray.put(v) if k in ("scorer", "done") else v for k, v in kwargs.items()}
    attempts_ref = ray.put(attempts)
    fn = ray.remote(num_cpus=1, max_retries=isolate.TASK_RETRIES)(score_into)
    pending = {fn.remote(group, out_fs, out_path, attempts_ref, **shared): sum(p["rows"] for p in group)
               for group in groups if group}
    written = 0
    with tqdm(total=sum(pending.values()), unit=" rows", unit_scale=True, desc="score", file=sys.stderr,
              mininterval=5.0, smoothing=0.1) as progress:
        try:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                progress.update(pending.pop(ref))
                written += ray.get(ref)
        finally:
            for ref in pending:
                ray.cancel(ref)
    return written


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
                        "a model on log-mel segments: 16 for audio manifests, 256 for a mel store); a Parquet "
                        "feature table's row groups are also grouped into tasks of at least this many rows")
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
