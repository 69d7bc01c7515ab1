"""A small real Tune job against the real MLflow server: nested runs, registered version, resume; promotion
with champion/previous, --if-better refusing a worse model, rollback."""

from __future__ import annotations

import pytest

from hitmodels.config import TrainConfig
from tables import random_table

pytestmark = pytest.mark.integration
MODEL = "tune-test"


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tune") / "table.parquet"
    random_table(11, n=160).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def tuned(table_path, ray_local, mlflow_uri, tmp_path_factory):
    from pipelines import tune

    storage = tmp_path_factory.mktemp("ray_results")
    base = TrainConfig(model_name=MODEL, experiment=MODEL, patience=3)
    results, reg = tune.run(table_path, search="random", num_samples=3, epochs=4, name="t1", storage=storage,
                            base=base, tracking_uri=mlflow_uri, grace_period=2)
    return {"results": results, "reg": reg, "storage": storage, "base": base}


def _trial_runs(mlflow_uri, parent_run_id):
    import mlflow

    c = mlflow.MlflowClient(mlflow_uri)
    parent = c.get_run(parent_run_id)
    return c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")


def test_trials_are_nested_runs_with_curves_and_fingerprint(tuned, mlflow_uri):
    import mlflow

    reg = tuned["reg"]
    c = mlflow.MlflowClient(mlflow_uri)
    mv = c.get_model_version(MODEL, reg.version)
    parent_id = c.get_run(mv.run_id).data.tags["mlflow.parentRunId"]
    trials = [r for r in _trial_runs(mlflow_uri, parent_id) if "tune_trial" in r.data.tags]
    assert len(trials) == 3
    for r in trials:
        assert {"delta", "optimizer", "initialiser", "dropout"} <= set(r.data.params)
        # the run alone reproduces the trial: every training setting and the code's commit
        assert r.data.params["train.patience"] == "3" and "train.batch_size" in r.data.params
        assert r.data.tags["git_commit"]
        # ASHA's early stops are KILLED with a tag, never left RUNNING or marked FAILED
        assert r.info.status in ("FINISHED", "KILLED"), (r.info.status, r.data.tags)
        assert (r.info.status == "KILLED") == (r.data.tags.get("tune_stopped_early") == "true")
        if r.info.status == "KILLED":  # stopped before its epoch budget: fewer pop_val_loss steps than max_epochs
            steps = len(c.get_metric_history(r.info.run_id, "pop_val_loss"))
            assert steps < int(r.data.params["max_epochs"])
        assert r.data.tags["dataset_fingerprint"].startswith("v")
        assert "val_loss" in r.data.metrics
        assert "learning_curve.png" in [a.path for a in c.list_artifacts(r.info.run_id)]
        assert len(c.get_metric_history(r.info.run_id, "pop_val_loss")) >= 1
    assert mv.tags["dataset_fingerprint"].startswith("v") and mv.tags["git_commit"]
    assert mv.tags["train_workers"] == "1" and mv.tags["train_device"] == "cpu"
    assert "test_mae" in reg.metrics and 0 <= reg.metrics["test_mae"] <= 1


def test_resumed_tune_does_not_repeat_finished_trials(tuned, table_path, mlflow_uri):
    from pipelines import tune

    results, reg = tune.run(table_path, search="random", num_samples=3, epochs=4, name="t1",
                            storage=tuned["storage"], base=tuned["base"], tracking_uri=mlflow_uri, grace_period=2)
    import mlflow

    c = mlflow.MlflowClient(mlflow_uri)
    parent_id = c.get_run(c.get_model_version(MODEL, reg.version).run_id).data.tags["mlflow.parentRunId"]
    trials = [r for r in _trial_runs(mlflow_uri, parent_id) if "tune_trial" in r.data.tags]
    assert len(trials) == 3  # the same three, not three more
    assert len(results) == 3


def test_promote_if_better_refuses_worse_and_rollback(tuned, table_path, mlflow_uri):
    import pandas as pd

    from hitmodels.registry import CHAMPION, PREVIOUS, promote, promote_if_better, resolve, rollback
    from hitmodels.train import train

    table = pd.read_parquet(table_path)
    good = tuned["reg"].version
    promote(MODEL, good, tracking_uri=mlflow_uri)
    # a model trained on inverted targets learns the opposite of popularity: worse than any honest model
    inverted = table.copy()
    inverted["popularity"] = 100 - inverted["popularity"]
    bad = train(inverted, TrainConfig(model_name=MODEL, experiment=MODEL, ae_epochs=20, mlp_epochs=40),
                mlflow_uri).version
    promoted, reason = promote_if_better(MODEL, bad, table, mlflow_uri)
    assert not promoted and "refused" in reason and "worse" in reason
    assert resolve(MODEL, CHAMPION, mlflow_uri).version == good
    promote(MODEL, bad, tracking_uri=mlflow_uri)
    assert resolve(MODEL, PREVIOUS, mlflow_uri).version == good
    rollback(MODEL, mlflow_uri)
    assert resolve(MODEL, CHAMPION, mlflow_uri).version == good
    assert resolve(MODEL, PREVIOUS, mlflow_uri).version == bad
