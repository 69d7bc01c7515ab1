"""Talking to the MLflow tracking server when it goes away: telling an outage from other errors, a message
that says what to do, per-epoch metrics that survive a short outage, and runs that end FAILED.

The client's waits themselves are bounded in :class:`hitmodels.config.TrackingClientConfig` (applied by
:func:`hitmodels.config.tracking_uri`, which every client calls first).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Callable, Iterator

log = logging.getLogger(__name__)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) says the server could not be reached or answered 5xx:
    MLflow's client wraps a refused or dropped connection, a timeout and exhausted retries as
    ``MlflowException("API request to ... failed with exception ...")``."""
    import requests
    from mlflow.exceptions import MlflowException

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return True
        if isinstance(exc, MlflowException):
            text = exc.message
            if "failed with exception" in text or "Max retries exceeded" in text \
                    or exc.error_code in ("TEMPORARILY_UNAVAILABLE", "SERVICE_UNAVAILABLE"):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def outage_message(uri: str | None = None) -> str:
    """What a command says when the server at ``uri`` did not answer, with the retry bound it gave up after."""
    from .config import tracking_uri
    from .fetch import redact

    uri = redact(uri or tracking_uri())  # a URI's user:password never reaches the terminal or a log
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
    return (f"the MLflow server at {uri} did not answer (gave up after {retries} retries): start it (hitmusic up) "
            "or point MLFLOW_TRACKING_URI / --tracking-uri at yours. MLFLOW_HTTP_REQUEST_MAX_RETRIES and "
            "MLFLOW_HTTP_REQUEST_TIMEOUT set how long a command waits for it")


class EpochMetrics:
    """Per-epoch metrics of the active run, logged as they come while the server answers and kept while it
    does not: a training is not lost to a server restart. After a failed call it waits ``retry_after_s``
    before trying again (each try waits out the client's retries, ~15 s), and :meth:`flush` sends what is
    kept in one batch (the training calls it before registering, which needs the server anyway)."""

    def __init__(self, retry_after_s: float = 30.0, log_batch: Callable | None = None):
        self.pending: list[tuple[dict[str, float], int]] = []
        self.retry_after_s = retry_after_s
        self._down_since: float | None = None
        self._log_batch = log_batch

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.pending.append((dict(metrics), step))
        if self._down_since is not None and time.monotonic() - self._down_since < self.retry_after_s:
            return
        try:
            self.flush()
        except Exception as exc:
            if not is_outage(exc):
                raise
            if self._down_since is None:
                print(f"train: {outage_message()}; per-epoch metrics are kept and sent when it answers again",
                      file=sys.stderr)
            self._down_since = time.monotonic()

    def close(self) -> None:
        """At the end of a fit: send what is kept if the server answers; if not, say what is dropped (the
        training goes on to register, which fails clearly if the server is still away)."""
        try:
            self.flush()
        except Exception as exc:
            if not is_outage(exc):
                raise
            print(f"train: {len(self.pending)} epoch(s) of metrics could not be sent: the MLflow server is "
                  "still away", file=sys.stderr)
            self.pending.clear()

    def flush(self) -> None:
        """Send every kept metric (one request); raises as the client does when the server does not answer."""
        if not self.pending:
            return
        if self._log_batch is not None:
            self._log_batch(self.pending)
        else:
            import mlflow
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            run = mlflow.active_run()
            if run is None:
                self.pending.clear()
                return
            metrics = [Metric(k, float(v), now, step) for m, step in self.pending for k, v in m.items()]
            # log_batch takes at most 1,000 metrics a request
            for i in range(0, len(metrics), 1000):
                mlflow.MlflowClient().log_batch(run.info.run_id, metrics=metrics[i:i + 1000])
        if self._down_since is not None:
            print(f"train: the MLflow server answers again; {len(self.pending)} kept epoch(s) of metrics sent",
                  file=sys.stderr)
        self.pending.clear()
        self._down_since = None


@contextlib.contextmanager
def ended_run(start: Callable[[], object], wait_s: float | None = None) -> Iterator:
    """``start()`` (an ``mlflow.start_run(...)``), yielded as the active run and ended FINISHED, or FAILED
    when the body raises. When the server is unreachable then, this keeps asking for up to ``wait_s``
    (:attr:`TrackingClientConfig.end_run_wait_s`) so that a server that comes back finds the run FAILED
    instead of RUNNING forever; the body's error is raised either way, and says which run it was."""
    import mlflow

    from .config import TrackingClientConfig

    run = start()
    try:
        yield run
    except BaseException as exc:
        _end_failed(run.info.run_id, exc, TrackingClientConfig().end_run_wait_s if wait_s is None else wait_s)
        raise
    mlflow.end_run("FINISHED")


def _end_failed(run_id: str, exc: BaseException, wait_s: float) -> None:
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        try:  # pops the run off MLflow's stack, then asks the server; the stack is clean even if it fails
            mlflow.end_run("FAILED")
            return
        except Exception as end_exc:
            if not is_outage(end_exc):
                raise
    outage = is_outage(exc)
    print(f"train: run {run_id} failed ({'the MLflow server went away' if outage else type(exc).__name__}); "
          f"waiting up to {wait_s:.0f} s for the server to record it as FAILED "
          "(HITMUSIC_MLFLOW_END_RUN_WAIT_S)", file=sys.stderr)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            mlflow.MlflowClient().set_terminated(run_id, "FAILED")
            print(f"train: run {run_id} recorded as FAILED", file=sys.stderr)
            return
        except Exception as end_exc:
            if not is_outage(end_exc) or time.monotonic() > deadline:
                print(f"train: run {run_id} could not be recorded as FAILED ({type(end_exc).__name__}); the "
                      "MLflow UI shows it RUNNING until someone ends it", file=sys.stderr)
                return
        time.sleep(2.0)
