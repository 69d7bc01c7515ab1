"""Kill a Ray worker process in the middle of a batch job (issue 16): the task it ran is retried
(:data:`hitmodels.isolate.TASK_RETRIES`), its part is written whole once, and every input row appears in the
output exactly once."""

from __future__ import annotations

import os
import signal
import threading
import time

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest

from hitmodels.config import TrainConfig
from tests.tables import random_table

pytestmark = pytest.mark.integration
MODEL = "worker-kill-test"


class Killer:
    """SIGKILLs the first Ray worker seen running a task of the job (its process title: ``ray::MapBatches...``
    for a Ray Data task, ``ray::score_into`` for the feature-table scoring job's) once the job has run
    ``after_s``; records what it killed."""

    def __init__(self, after_s: float = 0.5, title: str = "ray::MapBatches"):
        self.after_s, self.title, self.killed, self.stop = after_s, title, [], threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set() and not self.killed:
            if time.monotonic() - t0 >= self.after_s:
                for p in psutil.process_iter(["pid", "cmdline"]):
                    title = " ".join(p.info["cmdline"] or [])
                    if title.startswith(self.title) and p.info["pid"] != os.getpid():
                        os.kill(p.info["pid"], signal.SIGKILL)
                        self.killed.append((round(time.monotonic() - t0, 2), title[:80]))
                        return
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


def _raw(out) -> pd.DataFrame:
    return pd.concat([pq.read_table(p).to_pandas() for p in out.glob("*.parquet")], ignore_index=True)


def test_extract_survives_a_killed_worker(ray_local, tiny_catalogue, tmp_path):
    from pipelines import extract

    manifest = pd.read_parquet(tiny_catalogue["manifest"]).head(12)
    manifest.to_parquet(tmp_path / "m.parquet")

    def slow(batch, cfg, policy=None):  # long enough a task for the killer to find it running
        time.sleep(0.5)
        return extract.extract_batch(batch, cfg, policy)

    with Killer(after_s=1.0) as killer:
        counts = extract.run(tmp_path / "m.parquet", tmp_path / "out", batch_size=2, block_size=4, batch_task=slow)
    raw = _raw(tmp_path / "out")
    print(f"extract: killed {killer.killed}; rows in 12, rows out {len(raw)}, outcomes {dict(counts)}")
    assert killer.killed, "no running extraction task was found to kill"
    assert counts == {"ok": 12} and len(raw) == 12 and sorted(raw["row_key"]) == sorted(manifest["track_id"])


@pytest.fixture(scope="module")
def scoring_model(ray_local, mlflow_uri):
    from hitmodels.registry import promote
    from hitmodels.train import train

    cfg = TrainConfig(family="lasso", model_name=MODEL, experiment=MODEL)
    promote(MODEL, train(random_table(6), cfg, mlflow_uri).version, tracking_uri=mlflow_uri)
    return MODEL


def test_score_survives_a_killed_worker(scoring_model, tiny_catalogue, tmp_path):
    from pipelines import score

    manifest = pd.read_parquet(tiny_catalogue["manifest"]).head(12)
    manifest.to_parquet(tmp_path / "m.parquet")
    with Killer(after_s=1.0) as killer:  # each task extracts its rows' features first: about a second
        score.run(tmp_path / "m.parquet", tmp_path / "scores", MODEL, batch_size=2)
    raw = _raw(tmp_path / "scores")
    print(f"score: killed {killer.killed}; rows in 12, rows out {len(raw)}, errors {raw['error'].notna().sum()}")
    assert killer.killed, "no running scoring task was found to kill"
    assert len(raw) == 12 and sorted(raw["row_key"]) == sorted(manifest["track_id"])
    assert raw["error"].isna().all() and raw["popularity"].between(0, 100).all()


def test_scoring_a_feature_table_survives_a_killed_worker(scoring_model, tmp_path):
    """The feature-table job's own tasks (one per row group, each writing its part): a killed one is retried,
    and every row is written once."""
    from pipelines import score

    table = random_table(7, n=20_000)
    table.to_parquet(tmp_path / "t.parquet", row_group_size=500)  # 40 tasks
    with Killer(after_s=0.2, title="ray::score_into") as killer:
        score.run(tmp_path / "t.parquet", tmp_path / "scores", MODEL, batch_size=500)
    raw = _raw(tmp_path / "scores")
    print(f"score (feature table): killed {killer.killed}; rows in {len(table)}, rows out {len(raw)}")
    assert killer.killed, "no running scoring task was found to kill"
    assert len(raw) == len(table) and raw["row_key"].is_unique and raw["error"].isna().all()


def test_a_row_that_kills_its_scoring_worker_costs_that_row_only(scoring_model, tiny_catalogue, tmp_path):
    """Scoring an audio manifest, a row whose task exits its worker every time (as an out-of-memory kill
    or a native crash in a decoder would) becomes its own ``worker_died`` error after the bounded retries; the
    other rows of its batch are scored and the job ends."""
    from pipelines import score

    manifest = pd.read_parquet(tiny_catalogue["manifest"]).head(6)
    manifest.to_parquet(tmp_path / "m.parquet")
    poison = manifest["track_id"].iloc[2]

    def crashing(batch, **kwargs):
        from pipelines.score import score_batch

        if poison in set(batch.column("track_id").to_pylist()):
            os._exit(1)
        return score_batch(batch, **kwargs)

    score.run(tmp_path / "m.parquet", tmp_path / "scores", MODEL, batch_size=3, batch_task=crashing)
    raw = _raw(tmp_path / "scores")
    print(f"score: rows in 6, rows out {len(raw)}, errors {raw['error'].dropna().str[:40].tolist()}")
    assert len(raw) == 6 and sorted(raw["row_key"]) == sorted(manifest["track_id"])
    by_key = raw.set_index("row_key")
    assert by_key.loc[poison, "error"].startswith("worker_died: the worker processing this row died")
    healthy = by_key.drop(index=poison)
    assert healthy["error"].isna().all() and healthy["popularity"].between(0, 100).all()
