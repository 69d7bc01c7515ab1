"""Output directories of the batch jobs (extract, mels, score): one run at a time, and whole parts only.

- **Lock.** A job holds ``OUT/_lock`` for its whole run: an advisory ``flock`` that the kernel releases when
  the driver exits, however it exits, so a killed run never leaves a stale lock behind. The file says who
  holds it (host, pid, job, start, a heartbeat every ``HEARTBEAT_S``), and a second run into the same OUT
  stops at once with an error naming the first instead of scoring the same rows and quarantining parts the
  first is still writing. An ``s3://`` OUT is not locked (S3 has no lock to take): one run per prefix is then
  the user's to keep.
- **Attempts.** A row that failed (its ``error`` set) is not done: a re-run tries it again, up to
  ``max_attempts`` times in all (:data:`MAX_ATTEMPTS`), so a transient failure (a fetch that timed out, a
  worker that died) heals on resume while a permanent one (a corrupt file) stops costing work. Each row
  written carries its ``attempt`` (1, 2, ...); earlier attempts stay in their parts as the row's history and
  every reader takes a row key's latest attempt (:func:`latest`).
- **Whole parts.** Each Ray task writes its part under ``OUT/_staging/`` and renames it into OUT when it is
  complete, so a reader, a resume or the quarantine pass never sees half a file. On S3 an object appears
  only whole, so parts are written in place.

Both names start with an underscore, which keeps them out of Arrow's dataset discovery.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .storage import filesystem, parquet_files, s3_read

QUARANTINE = "_quarantine"  # a leading underscore keeps it out of Arrow's dataset discovery

LOCK_FILE = "_lock"
STAGING = "_staging"
HEARTBEAT_S = 10.0
ROW_KEY = "row_key"  # hitmodels.data.ROW_KEY (not imported: data imports the feature stack)
ATTEMPT = "attempt"
# Attempts a failing row gets over all runs into one OUT; --max-attempts 1: a failed row is never retried.
MAX_ATTEMPTS = 3


class OutputLocked(RuntimeError):
    """Another run writes into the same output directory."""


def _owner(job: str) -> dict:
    from .fetch import redact

    # URIs without their user:password or query (presigned signatures): the lock file and the error that
    # quotes it are read by other users of the directory
    argv = " ".join(redact(a) if "://" in a else a for a in sys.argv)
    return {"job": job, "host": socket.gethostname(), "pid": os.getpid(), "argv": argv[:300],
            "started": time.time(), "heartbeat": time.time()}


def _describe(owner: dict) -> str:
    ago = time.time() - float(owner.get("heartbeat") or owner.get("started") or time.time())
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("started", 0))))
    return (f"the {owner.get('job', '?')} job (pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started "
            f"{started}, last heartbeat {ago:.0f} s ago; command: {owner.get('argv', '')})")


@contextlib.contextmanager
def exclusive(out: str, job: str) -> Iterator[None]:
    """Hold ``out``'s lock while the body runs (local directories; an ``s3://`` one is not locked). Raises
    :class:`OutputLocked`, naming the holder, when another live run holds it. Clears ``_staging/`` of parts
    a killed run left half-written: with the lock held, nobody else is writing them."""
    import fcntl

    fs, path = filesystem(out)
    if not isinstance(fs, pafs.LocalFileSystem):
        yield
        return
    os.makedirs(path, exist_ok=True)
    lock_path = os.path.join(path, LOCK_FILE)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = "another run (its lock file is being rewritten)"
            for _ in range(10):  # a heartbeat rewriting the file at this very moment: read it again
                try:
                    text = os.pread(fd, 65536, 0)
                    if text:
                        holder = _describe(json.loads(text))
                        break
                except ValueError:
                    pass
                time.sleep(0.05)
            raise OutputLocked(f"{out} is being written by {holder}: wait for it to finish, or write into another "
                               "directory (the lock is released the moment that run exits)") from None
        owner = _owner(job)
        stop = threading.Event()

        def write_owner() -> None:
            owner["heartbeat"] = time.time()
            data = json.dumps(owner).encode()
            # written over the old text, then cut to length: never an empty file for a reader to find
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                write_owner()

        write_owner()  # before the body runs: another run refused from now on can name this one

        beat_thread = threading.Thread(target=beat, daemon=True, name=f"{job}-lock-heartbeat")
        beat_thread.start()
        staging = os.path.join(path, STAGING)
        if os.path.isdir(staging):
            for name in os.listdir(staging):
                os.unlink(os.path.join(staging, name))
        try:
            yield
        finally:
            stop.set()
            beat_thread.join(timeout=5)
            data = json.dumps({**owner, "released": time.time()}).encode()
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
    finally:
        os.close(fd)  # releases the flock


def with_attempts(table: pa.Table, attempts: dict[str, int] | None) -> pa.Table:
    """``table`` with its :data:`ATTEMPT` column: ``attempts[row key]`` for the rows a run retries, 1 for the
    others (a table that has the column already is unchanged)."""
    if ATTEMPT in table.column_names:
        return table
    if attempts and ROW_KEY in table.column_names:
        values = [attempts.get(k, 1) for k in table.column(ROW_KEY).to_pylist()]
    else:
        values = [1] * table.num_rows
    return table.append_column(ATTEMPT, pa.array(values, pa.int32()))


def write_part(table: pa.Table, fs: pafs.FileSystem, path: str, attempts: dict[str, int] | None = None) -> pa.Table:
    """Ray Data task: ``table`` (with :func:`with_attempts`) as one new Parquet part of directory ``path`` on
    ``fs``, whole or not at all (see the module docstring); returns one row: the part's name (None for an empty
    table) and its rows."""
    name = f"part-{uuid.uuid4().hex}.parquet"
    table = with_attempts(table, attempts)
    if table.num_rows:
        if isinstance(fs, pafs.LocalFileSystem):
            staging = os.path.join(path, STAGING)
            os.makedirs(staging, exist_ok=True)
            pq.write_table(table, os.path.join(staging, name))
            os.replace(os.path.join(staging, name), os.path.join(path, name))  # atomic within one filesystem
        else:
            pq.write_table(table, f"{path}/{name}", filesystem=fs)
    return pa.table({"part": pa.array([name if table.num_rows else None], pa.string()), "rows": [table.num_rows]})


def write_dataset(ds, out: str, set_aside_failed: bool = False, attempts: dict[str, int] | None = None,
                  total: int | None = None, desc: str = "rows") -> int:
    """Write a Ray Dataset of Arrow blocks into ``out`` (local or ``s3://``) with :func:`write_part`, one part
    per block; returns the rows written. The path and filesystem are resolved here, on the driver (a worker's
    working directory is not the user's); the lock is the caller's (:func:`exclusive`). ``set_aside_failed``:
    a block whose task failed after its retries is left out instead of failing the job
    (:func:`hitmodels.isolate.set_errored_blocks_aside`). ``attempts``: the attempt of each retried row
    (:attr:`Resume.retry`). ``total``: the rows expected, for a progress line on stderr (``desc``: its label)
    with rows written, rate and ETA, updated as each part is written: jobs of 100,000 previews run for hours."""
    fs, path = filesystem(out)
    fs.create_dir(path, recursive=True)
    from .isolate import TASK_RETRIES, set_errored_blocks_aside

    # the jobs' tasks are retried TASK_RETRIES times: the writer with the same bound fuses with them into one
    # task per block, so a block's rows go from its features to its part without the object store
    written = ds.map_batches(write_part, fn_kwargs={"fs": fs, "path": path, "attempts": attempts}, batch_size=None,
                             batch_format="pyarrow", zero_copy_batch=True, max_retries=TASK_RETRIES)
    if set_aside_failed:
        written = set_errored_blocks_aside(written)
    from tqdm import tqdm

    rows = 0
    with tqdm(total=total, unit=" rows", desc=desc, file=sys.stderr, mininterval=10.0, smoothing=0.1,
              disable=total is None) as progress:
        for part in written.iter_rows():
            rows += int(part["rows"])
            progress.update(int(part["rows"]))
    return rows


def read_parts(fs: pafs.FileSystem, files: list[str], columns: list[str] | None = None) -> pd.DataFrame:
    """``columns`` (default all) of the parts ``files`` as one frame, over the union of their schemas: parts
    written before a column existed (``row_key``, ``attempt``) read it as null rather than hide it from the
    others. A part from before row keys gets its ``track_id`` as key (a track's first row's key)."""
    import pandas as pd  # here, not at the top: a worker that only writes parts imports neither
    import pyarrow.dataset as pads

    if not files:
        return pd.DataFrame(columns=columns or [ROW_KEY, ATTEMPT])
    schemas = []
    for f in files:
        with fs.open_input_file(f) as fh:
            schemas.append(pq.ParquetFile(fh).schema_arrow)
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    names = [c for c in (columns or schema.names) if c in schema.names]
    df = pads.dataset(files, schema=schema, filesystem=fs, format="parquet").to_table(columns=names).to_pandas()
    if columns:
        for c in columns:
            if c not in df:
                df[c] = None
    if ROW_KEY in df and "track_id" in df:
        from .data import id_key

        df[ROW_KEY] = df[ROW_KEY].astype(object).where(df[ROW_KEY].notna(),
                                                       df["track_id"].map(id_key, na_action="ignore"))
    return df


def _attempts(df: pd.DataFrame) -> pd.Series:
    import pandas as pd

    return pd.to_numeric(df[ATTEMPT], errors="coerce").fillna(1).astype(int) if ATTEMPT in df \
        else pd.Series(1, index=df.index)


def latest(df: pd.DataFrame, key: str = ROW_KEY) -> pd.DataFrame:
    """One row per ``key``: its latest attempt (the highest ``attempt``; a part without the column counts as
    attempt 1), in the order the kept rows appear in ``df``."""
    if key not in df:
        key = "track_id"
    if df.empty or key not in df:
        return df.reset_index(drop=True)
    order = _attempts(df).to_numpy().argsort(kind="stable")
    last = df.iloc[order].drop_duplicates(key, keep="last")
    return last.sort_index().reset_index(drop=True)


@dataclass
class Resume:
    """What a run into an existing OUT does with the rows already there (:func:`resume_state`)."""
    done: set[str] = field(default_factory=set)  # keys not to do again: fine, or failed max_attempts times
    retry: dict[str, int] = field(default_factory=dict)  # failed keys tried again: key -> this run's attempt
    given_up: int = 0  # failed keys at their last attempt, kept as they are
    latest_attempt: dict[str, int] = field(default_factory=dict)  # every key there -> its latest attempt

    def line(self) -> str:
        """How the rows there split, for the job's first line on stderr."""
        return (f"{len(self.done) - self.given_up} done, {len(self.retry)} failed retried"
                f"{f', {self.given_up} failed at their last attempt kept' if self.given_up else ''}")


def resume_from(rows: pd.DataFrame, max_attempts: int = MAX_ATTEMPTS) -> Resume:
    """:class:`Resume` of an OUT whose rows (``row_key``, ``error``, optional ``attempt``) are ``rows``."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    last = latest(rows)
    state = Resume()
    if last.empty:
        return state
    keys = last[ROW_KEY if ROW_KEY in last else "track_id"].astype(str).tolist()
    attempts = _attempts(last).tolist()
    failed = [isinstance(e, str) and e != "" for e in last["error"]] if "error" in last else [False] * len(last)
    for k, a, bad in zip(keys, attempts, failed):
        state.latest_attempt[k] = a
        if not bad:
            state.done.add(k)
        elif a >= max_attempts:
            state.done.add(k)
            state.given_up += 1
        else:
            state.retry[k] = a + 1
    return state


def resume_state(fs: pafs.FileSystem, files: list[str], max_attempts: int = MAX_ATTEMPTS) -> Resume:
    """:func:`resume_from` the parts ``files``."""
    return resume_from(read_parts(fs, files, ["track_id", ROW_KEY, "error", ATTEMPT]), max_attempts)


def not_written(todo: pd.DataFrame, state: Resume, after: Resume) -> pd.DataFrame:
    """The rows of ``todo`` that a run meant to write (with their attempt from ``state``) and that ``after``
    (the OUT once the run's tasks are done) does not hold at that attempt: their task failed every time."""
    want = [state.retry.get(k, 1) for k in todo[ROW_KEY]]
    have = [after.latest_attempt.get(k, 0) for k in todo[ROW_KEY]]
    return todo[[h < w for h, w in zip(have, want)]]


def stale_rows(fs: pafs.FileSystem, files: list[str]) -> pa.Array:
    """``"<part path>\x1f<row key>"`` of every row that a later attempt of its key (in another part: a run
    writes a key once) supersedes, for :func:`drop_stale`; empty when no row was ever retried."""
    import pandas as pd

    frames = []
    for f in files:
        df = read_parts(fs, [f], ["track_id", ROW_KEY, ATTEMPT])
        frames.append(df.assign(path=f, **{ATTEMPT: _attempts(df)})[["path", ROW_KEY, ATTEMPT]])
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["path", ROW_KEY, ATTEMPT])
    if df.empty:
        return pa.array([], pa.string())
    old = df[df[ATTEMPT] < df.groupby(ROW_KEY)[ATTEMPT].transform("max")]
    return pa.array(sorted(f"{p}\x1f{k}" for p, k in zip(old["path"], old[ROW_KEY])), pa.string())


def drop_stale(batch: pa.Table, stale: pa.Array) -> pa.Table:
    """Ray Data task: ``batch`` (read with its part's ``path``, ``include_paths=True``, and ``row_key``)
    without the superseded rows ``stale`` (:func:`stale_rows`) and without the ``path`` column, so a job
    reading a whole store takes each key's latest attempt only."""
    if len(stale):
        tagged = pc.binary_join_element_wise(batch.column("path"), batch.column(ROW_KEY).cast(pa.string()), "\x1f")
        batch = batch.filter(pc.invert(pc.fill_null(pc.is_in(tagged, value_set=stale), False)))
    return batch.drop_columns(["path"])


def add_resume_argument(p) -> None:
    """``--max-attempts`` of the batch jobs' CLIs."""
    p.add_argument("--max-attempts", type=int, default=MAX_ATTEMPTS, metavar="N",
                   help=f"attempts a failing row gets over the runs into one OUT (default {MAX_ATTEMPTS}): a re-run "
                        "retries the rows that failed, each row records its attempt, and readers take its latest; "
                        "1 never retries")


def _footer(fs: pafs.FileSystem, path: str) -> None:
    with fs.open_input_file(path) as f:
        pq.read_metadata(f)


def readable_parts(fs: pafs.FileSystem, root: str, quarantine: bool = False, job: str = "job") -> list[str]:
    """The readable Parquet parts directly in ``root``. An unreadable one (a run killed while writing it in
    versions that wrote in place, or a part still being written) is skipped with a warning; with
    ``quarantine`` (the writing job only, so that readers never race on moving files) it is moved to
    ``root/_quarantine/``, so its rows count as not done and are done again. On S3 a footer that S3 keeps
    failing to serve past the retries (:func:`hitmodels.storage.s3_read`) fails the run instead: the part may
    be whole."""
    good = []
    for f in parquet_files(fs, root):
        try:
            s3_read(fs, _footer, fs, f)
            good.append(f)
        except Exception as exc:  # truncated footer, zero bytes, not Parquet at all: all mean "redo"
            if not isinstance(fs, pafs.LocalFileSystem) and isinstance(exc, OSError):
                raise
            if quarantine:
                fs.create_dir(f"{root}/{QUARANTINE}", recursive=True)
                fs.move(f, f"{root}/{QUARANTINE}/{f.rsplit('/', 1)[-1]}")
            print(f"{job}: {f} is unreadable ({type(exc).__name__}); "
                  + (f"moved to {QUARANTINE}/, its rows will be done again" if quarantine else "skipped"),
                  file=sys.stderr)
    return good

