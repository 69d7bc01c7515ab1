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
    # a finished job run again registers nothing new and names the version it registered
    assert reg.version == tuned["reg"].version and reg.metrics == tuned["reg"].metrics
    assert len(c.search_model_versions(f"name='{MODEL}'")) == int(tuned["reg"].version)
    # a job that stopped after registering but before recording it finds its version instead of a second one
    import json

    state_file = tuned["storage"] / "t1" / "hitmusic_tune.json"
    state = json.loads(state_file.read_text())
    state.pop("registered")
    state_file.write_text(json.dumps(state))
    _, again = tune.run(table_path, search="random", num_samples=3, epochs=4, name="t1", storage=tuned["storage"],
                        base=tuned["base"], tracking_uri=mlflow_uri, grace_period=2)
    print(f"versions before {tuned['reg'].version}, after the resume {len(c.search_model_versions(f'name={MODEL!r}'))}")
    assert again.version == tuned["reg"].version and again.metrics == tuned["reg"].metrics
    assert len(c.search_model_versions(f"name='{MODEL}'")) == int(tuned["reg"].version)
    assert "registered" in json.loads(state_file.read_text())

    # a resume with other settings, or of another table, is refused before any work
    with pytest.raises(ValueError, match=r"tuning job 't1' was started with other settings.*'epochs': \(4, 5\)"):
        tune.run(table_path, search="random", num_samples=3, epochs=5, name="t1", storage=tuned["storage"],
                 base=tuned["base"], tracking_uri=mlflow_uri, grace_period=2)
    other = table_path.parent / "other.parquet"
    random_table(12, n=160).to_parquet(other)
    with pytest.raises(ValueError, match=r"'table_sha256': '\(changed\)'"):
        tune.run(other, search="random", num_samples=3, epochs=4, name="t1", storage=tuned["storage"],
                 base=tuned["base"], tracking_uri=mlflow_uri, grace_period=2)


def test_promote_if_better_refuses_worse_and_rollback(tuned, table_path, mlflow_uri):
    import pandas as pd

    from hitmodels.registry import CHAMPION, PREVIOUS, promote, promote_if_better, resolve, rollback
    from hitmodels.train import train

    table = pd.read_parquet(table_path)
    # popularity here is linear in one column: the Lasso all but finds it, and is the champion
    good = train(table, TrainConfig(model_name=MODEL, experiment=MODEL, family="lasso", name="lasso"),
                 mlflow_uri).version
    promote(MODEL, good, tracking_uri=mlflow_uri)
    # one boosting step at a tiny learning rate answers about the training mean: worse than any honest model
    bad = train(table, TrainConfig(model_name=MODEL, experiment=MODEL, family="hgb", name="hgb-1-step",
                                   params={"max_iter": 1, "learning_rate": 0.01}), mlflow_uri).version
    promoted, reason = promote_if_better(MODEL, bad, table, mlflow_uri)
    assert not promoted and "refused" in reason and "worse" in reason
    assert resolve(MODEL, CHAMPION, mlflow_uri).version == good
    promote(MODEL, bad, tracking_uri=mlflow_uri)
    assert resolve(MODEL, PREVIOUS, mlflow_uri).version == good
    rollback(MODEL, mlflow_uri)
    assert resolve(MODEL, CHAMPION, mlflow_uri).version == good
    assert resolve(MODEL, PREVIOUS, mlflow_uri).version == bad
    # a version trained on other data (inverted targets) cannot be compared on the champion's test rows
    inverted = table.copy()
    inverted["popularity"] = 100 - inverted["popularity"]
    other = train(inverted, TrainConfig(model_name=MODEL, experiment=MODEL, family="lasso", name="lasso"),
                  mlflow_uri).version
    with pytest.raises(ValueError, match="not comparable"):
        promote_if_better(MODEL, other, table, mlflow_uri)
    assert resolve(MODEL, CHAMPION, mlflow_uri).version == good


def test_a_classical_family_is_tuned_and_retrained_through_the_same_job(table_path, ray_local, mlflow_uri,
                                                                        tmp_path):
    import mlflow

    from pipelines import tune

    base = TrainConfig(model_name=MODEL, experiment=MODEL)
    results, reg = tune.run(table_path, family="hgb", search="random", num_samples=2, epochs=1, name="hgb",
                            storage=tmp_path, base=base, tracking_uri=mlflow_uri)
    assert len(results) == 2 and reg.family == "hgb"
    mv = mlflow.MlflowClient(mlflow_uri).get_model_version(MODEL, reg.version)
    assert mv.tags["model_family"] == "hgb" and mv.tags["train_device"] == "cpu"
    best = results.get_best_result(metric="val_loss", mode="min").config
    assert mv.tags["config"] == "-".join(f"{k}{best[k]}" for k in sorted(best) if k != "context")
    with pytest.raises(ValueError, match="nothing to tune"):
        tune.run(table_path, family="lasso", num_samples=1, epochs=1, name="lasso", storage=tmp_path, base=base,
                 tracking_uri=mlflow_uri)


@pytest.mark.s3
def test_a_tuning_job_with_its_table_and_storage_on_s3_resumes_from_there(table_path, ray_local, mlflow_uri,
                                                                        s3_endpoint):
    """Table and Tune storage on an S3-compatible server (moto on loopback): trials, their state and the
    Ray Train retraining's checkpoint go to the bucket; a job stopped after registering, before recording it,
    resumes from the bucket and finds its version instead of registering a second one."""
    import json

    import boto3
    import mlflow

    from pipelines import tune

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="tune-bucket")
    s3.upload_file(str(table_path), "tune-bucket", "tables/model_table.parquet")
    table, storage = "s3://tune-bucket/tables/model_table.parquet", "s3://tune-bucket/ray_results"
    base = TrainConfig(model_name=MODEL, experiment=MODEL, patience=3)
    kwargs = dict(search="random", num_samples=2, epochs=2, name="on-s3", storage=storage, base=base,
                  tracking_uri=mlflow_uri, grace_period=1)
    results, reg = tune.run(table, **kwargs)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="tune-bucket", Prefix="ray_results/")["Contents"]]
    print(f"tuned {len(results)} trials into S3: {len(keys)} objects; registered version {reg.version}")
    assert len(results) == 2 and "ray_results/on-s3/hitmusic_tune.json" in keys
    # Tune's own state is in the bucket (what Tuner.restore reads), not just a directory marker
    assert "ray_results/on-s3/tuner.pkl" in keys
    assert [k for k in keys if k.startswith("ray_results/on-s3/experiment_state-") and k.endswith(".json")]
    assert any(k.startswith("ray_results/retrain-") for k in keys)  # Ray Train's checkpoint went there too
    state = json.loads(s3.get_object(Bucket="tune-bucket", Key="ray_results/on-s3/hitmusic_tune.json")["Body"].read())
    assert state["registered"]["version"] == reg.version
    c = mlflow.MlflowClient(mlflow_uri)
    count = len(c.search_model_versions(f"name='{MODEL}'"))
    experiment = c.get_experiment_by_name(f"{MODEL}-tune").experiment_id
    runs = len(c.search_runs([experiment], max_results=1000))
    state.pop("registered")  # as if the job had stopped between registering and recording it
    s3.put_object(Bucket="tune-bucket", Key="ray_results/on-s3/hitmusic_tune.json", Body=json.dumps(state).encode())
    results, again = tune.run(table, **kwargs)
    assert again.version == reg.version and len(results) == 2
    assert len(c.search_model_versions(f"name='{MODEL}'")) == count
    # restored from the bucket, not started afresh: no trial ran again
    assert len(c.search_runs([experiment], max_results=1000)) == runs
