"""Output directories of the batch jobs (extract, mels, score): one run at a time, and whole parts only.

- **Lock.** A job holds ``OUT/_lock`` for its whole run: an advisory ``flock`` that the kernel releases when
  the driver exits, however it exits, so a killed run never leaves a stale lock behind. The file says who
  holds it (host, pid, job, start, a heartbeat every ``HEARTBEAT_S``), and a second run into the same OUT
  stops at once with an error naming the first instead of scoring the same rows and quarantining parts the
  first is still writing. An ``s3://`` OUT is not locked (S3 has no lock to take): one run per prefix is then
  the user's to keep.
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
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .storage import filesystem

LOCK_FILE = "_lock"
STAGING = "_staging"
HEARTBEAT_S = 10.0


class OutputLocked(RuntimeError):
    """Another run writes into the same output directory."""


def _owner(job: str) -> dict:
    return {"job": job, "host": socket.gethostname(), "pid": os.getpid(), "argv": " ".join(sys.argv)[:300],
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
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = _describe(json.loads(os.pread(fd, 65536, 0) or b"{}"))
            except ValueError:
                holder = "another run (its lock file is being rewritten)"
            raise OutputLocked(f"{out} is being written by {holder}: wait for it to finish, or write into another "
                               "directory (the lock is released the moment that run exits)") from None
        owner = _owner(job)
        stop = threading.Event()

        def beat() -> None:
            while True:
                owner["heartbeat"] = time.time()
                data = json.dumps(owner).encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
                if stop.wait(HEARTBEAT_S):
                    return

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
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({**owner, "released": time.time()}).encode(), 0)
    finally:
        os.close(fd)  # releases the flock


def write_part(table: pa.Table, fs: pafs.FileSystem, path: str) -> pa.Table:
    """Ray Data task: ``table`` as one new Parquet part of directory ``path`` on ``fs``, whole or not at all
    (see the module docstring); returns one row: the part's name (None for an empty table) and its rows."""
    name = f"part-{uuid.uuid4().hex}.parquet"
    if table.num_rows:
        if isinstance(fs, pafs.LocalFileSystem):
            staging = os.path.join(path, STAGING)
            os.makedirs(staging, exist_ok=True)
            pq.write_table(table, os.path.join(staging, name))
            os.replace(os.path.join(staging, name), os.path.join(path, name))  # atomic within one filesystem
        else:
            pq.write_table(table, f"{path}/{name}", filesystem=fs)
    return pa.table({"part": pa.array([name if table.num_rows else None], pa.string()), "rows": [table.num_rows]})


def write_dataset(ds, out: str, set_aside_failed: bool = False) -> int:
    """Write a Ray Dataset of Arrow blocks into ``out`` (local or ``s3://``) with :func:`write_part`, one part
    per block; returns the rows written. The path and filesystem are resolved here, on the driver (a worker's
    working directory is not the user's); the lock is the caller's (:func:`exclusive`). ``set_aside_failed``:
    a block whose task failed after its retries is left out instead of failing the job
    (:func:`hitmodels.isolate.set_errored_blocks_aside`)."""
    fs, path = filesystem(out)
    fs.create_dir(path, recursive=True)
    from .isolate import TASK_RETRIES, set_errored_blocks_aside

    # the jobs' tasks are retried TASK_RETRIES times: the writer with the same bound fuses with them into one
    # task per block, so a block's rows go from its features to its part without the object store
    written = ds.map_batches(write_part, fn_kwargs={"fs": fs, "path": path}, batch_size=None,
                             batch_format="pyarrow", zero_copy_batch=True, max_retries=TASK_RETRIES)
    if set_aside_failed:
        written = set_errored_blocks_aside(written)
    return sum(int(r["rows"]) for r in written.take_all())


def done_keys(fs: pafs.FileSystem, files: list[str]) -> set[str]:
    """The row keys (:func:`hitmodels.data.row_keys`) in the parts ``files``; a part from before row keys
    counts by its ``track_id``, which is the key of a track's first row, so such a directory resumes too."""
    done: set[str] = set()
    for f in files:
        with fs.open_input_file(f) as fh:
            pf = pq.ParquetFile(fh)
            name = "row_key" if "row_key" in pf.schema_arrow.names else "track_id"
            done.update(k for k in pf.read(columns=[name])[name].to_pylist() if k is not None)
    return done
