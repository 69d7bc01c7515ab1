"""Data-parallel retraining: the shards every worker trains on, and the best configuration retrained on two
Ray Train workers with DDP (real local Ray, real MLflow), each on its own rows, ending with the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hitmodels.config import TrainConfig
from hitmodels.families.hitmusicnet.fit import shard_rows
from tables import random_table


def learnable_table():
    """``random_table`` with popularity mixed into the 128 mel bands: in ``random_table`` it only shows in
    artist_popularity, one column of 400-odd, which a few epochs of the autoencoder do not pick up."""
    table = random_table(21, n=200)
    mel = [c for c in table.columns if c.startswith("MEL_")]
    table[mel] += table["popularity"].to_numpy()[:, None] / 50
    return table


@pytest.mark.parametrize("n,world", [(122, 2), (123, 2), (100, 3), (7, 7)])
def test_shards_are_equal_disjoint_and_cover_all_but_the_remainder(n, world):
    shards = [shard_rows(n, rank, world, seed=5) for rank in range(world)]
    assert [len(s) for s in shards] == [n // world] * world
    every = np.concatenate(shards)
    assert len(set(every.tolist())) == len(every) == n - n % world  # disjoint, only the remainder left out
    assert set(every.tolist()) <= set(range(n))
    assert all((s == shard_rows(n, rank, world, seed=5)).all() for rank, s in enumerate(shards))
    if n >= 100:  # a shuffle, not blocks of consecutive rows
        assert not (shard_rows(n, 0, world, seed=5) == shard_rows(n, 0, world, seed=6)).all()
        assert shards[0].max() > n // world


def test_one_worker_keeps_every_row_in_order_and_too_few_rows_are_refused():
    assert (shard_rows(10, 0, 1, seed=5) == np.arange(10)).all()
    with pytest.raises(ValueError, match="3 rows"):
        shard_rows(3, 0, 4, seed=5)


@pytest.mark.integration
def test_retraining_on_two_workers_is_data_parallel(ray_local, mlflow_uri, tmp_path):
    from hitmodels.data import training_rows
    from hitmodels.families.hitmusicnet import tune
    from hitmodels.families.hitmusicnet.model import load_bundle
    from hitmodels.train import register_bundle, retrain_rows, split_rows

    table = learnable_table()
    path = tmp_path / "table.parquet"
    table.to_parquet(path)
    cfg = TrainConfig(model_name="ddp-test", experiment="ddp-test", ae_epochs=8, mlp_epochs=8, patience=3)
    result = tune.retrain(str(path), cfg, tmp_path / "ray_results", workers=2, name="ddp")
    m = result.metrics
    assert m["world_size"] == 2 and m["device"] == "cpu"
    assert [r["rank"] for r in m["ranks"]] == [0, 1]

    # each rank trained on exactly its own shard of the fit rows, and the shards are disjoint halves
    fit, _, _ = retrain_rows(training_rows(table), cfg)
    own = [fit["track_id"].iloc[shard_rows(len(fit), rank, 2, cfg.seed)] for rank in (0, 1)]
    assert set(own[0]).isdisjoint(own[1])
    for reported, ids in zip(m["ranks"], own):
        assert reported["shard_rows"] == len(fit) // 2 == len(ids)
        assert reported["shard_digest"] == tune.rows_digest(ids)
    # gradients were averaged: both ranks end with the same weights, and that is the checkpoint's model
    assert m["ranks"][0]["weights_checksum"] == m["ranks"][1]["weights_checksum"]
    with result.checkpoint.as_directory() as bundle:
        net, pre, meta = load_bundle(Path(bundle))
        assert tune.weights_checksum(net) == m["ranks"][0]["weights_checksum"]
        reg = register_bundle(Path(bundle), table, cfg, mlflow_uri, tags={"train_workers": "2"})

    # the registered model learnt popularity: held-out test rows, far better than predicting the mean
    assert 0 < reg.metrics["test_mae"] < 0.5 * reg.metrics["test_mae_predict_mean"]
    assert reg.metrics["test_spearman"] > 0.8
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/ddp-test/{reg.version}")
    pop = model.predict(split_rows(training_rows(table), cfg).test)["popularity"].to_numpy()
    assert np.isfinite(pop).all() and ((pop >= 0) & (pop <= 100)).all()
