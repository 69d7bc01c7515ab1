"""Poison rows in the batch jobs: a row whose worker dies (out of memory, a native crash in a decoder) costs
that row only.

Ray retries a task whose worker died, by default without end, so one such row would stall a job forever
and the healthy rows of its batch would never be written. Here a task is retried :data:`TASK_RETRIES` times;
a block whose task still fails is set aside instead of failing the job (Ray Data's ``max_errored_blocks``),
and after the job its rows, found by their row keys, are done again one per task: each row that passes is
written, and a row whose worker dies every time becomes its own error, ``worker_died: ...``. A task that
fails because a service is out (S3, MLflow) fails the job instead, so that an outage never turns healthy rows
into errors.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterator

import pandas as pd
import pyarrow as pa

# Retries of a task whose worker died, both for a batch and for a row on its own.
TASK_RETRIES = 2


def set_errored_blocks_aside(ds):
    """``ds``, whose blocks that failed after their retries Ray Data drops instead of failing the whole job
    (the caller redoes their rows with :func:`redo_one_by_one`). A Dataset runs with the settings it was made
    with, hence on the Dataset, not the process-wide context."""
    ds.context.max_errored_blocks = -1
    return ds


def redo_one_by_one(rows: pd.DataFrame, task: Callable[..., pa.Table], task_kwargs: dict,
                    error_table: Callable[[pd.DataFrame, str], pa.Table], job: str,
                    remote_args: dict | None = None) -> Iterator[pa.Table]:
    """``task(one_row_frame, **task_kwargs)`` for each row of ``rows`` in a Ray task of its own (1 CPU,
    :data:`TASK_RETRIES` retries), all at once; yields one table per row as each finishes, so the caller
    writes it at once and a later failure cannot lose it: the task's table, or ``error_table(row_frame,
    reason)`` for a row whose worker died every time (``worker_died: ...``) or whose task raised
    (``internal: ...``, a defect: the tasks keep a row's own errors in the row)."""
    import ray

    if rows.empty:
        return
    print(f"{job}: {len(rows)} row(s) of batches whose worker died {TASK_RETRIES + 1} times: each done again on "
          "its own", file=sys.stderr)
    fn = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, **(remote_args or {}))(task)
    frames = [rows.iloc[i:i + 1].reset_index(drop=True) for i in range(len(rows))]
    pending = {fn.remote(frame, **task_kwargs): frame for frame in frames}
    try:
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            frame = pending.pop(ref)
            try:
                yield ray.get(ref)
                continue
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError,
                    ray.exceptions.NodeDiedError, ray.exceptions.RaySystemError) as exc:
                reason = (f"worker_died: the worker processing this row died {TASK_RETRIES + 1} times "
                          f"({type(exc).__name__}: out of memory, or a native crash in a decoder)")
            except ray.exceptions.RayTaskError as exc:
                if is_outage(exc.cause):
                    raise  # not this row's fault: the job fails and a re-run does the rows not yet written
                reason = f"internal: {type(exc.cause).__name__}: {str(exc.cause)[:300]}"
            print(f"{job}: row {frame.iloc[0].get('row_key')}: {reason}", file=sys.stderr)
            yield error_table(frame, reason)
    finally:  # the caller stopped early (an outage, an interrupt): the rest is not wanted
        for ref in pending:
            ray.cancel(ref)


def is_outage(exc: BaseException) -> bool:
    """Whether a task's exception is a service's, not its row's: the tasks keep a row's own errors in the row,
    so an ``OSError`` that escapes one is its storage's (S3 past the retries, a full disk), and an MLflow
    server that does not answer is :func:`hitmodels.tracking.is_outage`."""
    from .tracking import is_outage as tracking_outage

    return isinstance(exc, OSError) or tracking_outage(exc)
