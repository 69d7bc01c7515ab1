"""The Siamese family: its loss and samplers on hand-made examples, a short fit that learns, pairs drawn only
from fit rows, the bundle round trip, and a version trained from a real mel store and registered in a real
MLflow server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hitmodels import melstore, ranking
from hitmodels.config import MelConfig, TrainConfig
from hitmodels.families import get


def test_siamese_loss_on_hand_made_pairs():
    s_i, s_j = torch.tensor([0.5, 0.5, 0.3]), torch.tensor([0.4, 0.4, 0.3])
    y_i, y_j = torch.tensor([0.6, 0.2, 0.5]), torch.tensor([0.3, 0.4, 0.5])
    # pair 0 ranked right by 0.1 (hinge 0 at margin 0.05), pair 1 wrong by 0.1 (hinge 0.15), pair 2 tied truth
    mse = 0.5 * ((s_i - y_i) ** 2 + (s_j - y_j) ** 2).mean()
    assert ranking.siamese_loss(s_i, s_j, y_i, y_j, 0.0, 0.05) == pytest.approx(float(mse))
    assert ranking.siamese_loss(s_i, s_j, y_i, y_j, 1.0, 0.05) == pytest.approx((0.0 + 0.15) / 2)
    assert ranking.siamese_loss(s_i, s_j, y_i, y_j, 1.0, 0.2) == pytest.approx((0.1 + 0.3) / 2)
    w = 0.3
    assert ranking.siamese_loss(s_i, s_j, y_i, y_j, w, 0.05) == pytest.approx((1 - w) * float(mse) + w * 0.075)
    # the fixed objective over all pairs agrees with a brute force
    rng = np.random.default_rng(0)
    s, y = rng.uniform(size=30), np.round(rng.uniform(size=30), 1)
    pairs = [(a, b) for a in range(30) for b in range(30) if y[a] != y[b]]
    hinge = np.mean([max(0.0, 0.05 - np.sign(y[a] - y[b]) * (s[a] - s[b])) for a, b in pairs])
    assert ranking.objective(s, y, 0.4, 0.05) == pytest.approx(0.6 * np.mean((s - y) ** 2) + 0.4 * hinge)


def test_samplers_on_hand_made_rows():
    rng = np.random.default_rng(1)
    y = np.array([0.9, 0.1, 0.2, 0.3, 0.8, 0.15, 0.05, 0.25, 0.7])
    for _ in range(20):
        naive = ranking.naive_pairs(len(y), rng)
        assert naive.shape == (4, 2) and len(set(naive.ravel())) == 8  # without replacement
        ab = ranking.ab_pairs(y, rng)
        above = y > y.mean()
        assert len(ab) and all(above[a] or above[b] for a, b in ab)  # never two below-mean tracks
        assert set(np.flatnonzero(~above)) <= set(ab.ravel())  # every below-mean track is used
        assert all(a != b for a, b in ab)
    artists = np.array(["x", "x", "x", "y", "y", "z", "w", "w", "w"])
    for _ in range(20):
        pairs = ranking.artist_pairs(artists, rng)
        assert len(pairs) and all(artists[a] == artists[b] and a != b for a, b in pairs)
        assert 5 not in pairs.ravel()  # z has one track: no pair
        assert set(pairs.ravel()) == set(range(9)) - {5}
    assert ranking.ab_pairs(np.zeros(4), rng).shape == (0, 2)
    with pytest.raises(ValueError, match="unknown pair sampling"):
        ranking.sample_pairs("random", y, artists, rng)


def synthetic_rows(n: int, seed: int, cfg: MelConfig = MelConfig(segment_s=5.0)) -> pd.DataFrame:
    """Rows whose popularity is carried by the level of the low mel bands: a CNN can learn it quickly."""
    rng = np.random.default_rng(seed)
    pop = rng.uniform(5, 95, n)
    mels = rng.normal(-40, 4, (n, cfg.n_mels, cfg.n_frames)).astype(np.float32)
    mels[:, :16, :] += (pop[:, None, None] - 50) / 2.5
    rows = pd.DataFrame({"track_id": [f"t{seed}-{i}" for i in range(n)], "artist_id": [f"a{i % max(1, n // 3)}" for i in range(n)],
                         "popularity": pop, "genre_pop": rng.integers(0, 2, n).astype(float),
                         melstore.MEL_COLUMN: [melstore.encode(m) for m in mels]})
    rows.attrs["mel_config"] = {**MelConfig().__dict__, "segment_s": cfg.segment_s}
    return rows


@pytest.mark.parametrize("sampling", ["none", "ab", "ab+artist"])
def test_short_fit_lowers_the_loss_and_round_trips(tmp_path, sampling):
    fam = get("siamese")
    cfg = TrainConfig(family="siamese", params={"sampling": sampling, "epochs": 12, "patience": 12, "lr": 3e-3,
                                                "mu": 0.3})
    fam.check(cfg)
    fit, val, calib, test = (synthetic_rows(n, s) for n, s in ((96, 0), (24, 1), (24, 2), (30, 3)))
    fitted = fam.fit(fit, val, calib, ["genre_pop"], cfg)
    for stage in fitted.history.values():
        assert stage[-1]["loss"] < stage[0]["loss"]  # it learns
    model = fitted.model
    assert len(model.nets) == (2 if sampling == "ab+artist" else 1) and sum(model.meta.fusion) == pytest.approx(1)
    out = fitted.predict(test)
    assert list(out.columns) == model.outputs and "percentile" in out
    assert out["percentile"].between(0, 100).all() and out["popularity"].between(0, 100).all()
    rho = np.corrcoef(out["popularity"], test["popularity"])[0, 1]
    assert rho > 0.5, rho
    from hitmodels.bundle import load_bundle, write_bundle

    write_bundle(tmp_path / "b", model)
    again = load_bundle(tmp_path / "b")
    pd.testing.assert_frame_equal(again.predict(None, test), out)
    assert again.columns == ["mel", "genre_pop"]
    with pytest.raises(ValueError, match="missing input column 'mel'"):
        again.predict(None, test.drop(columns=["mel"]))
    with pytest.raises(ValueError, match="not feature rows"):
        again.predict_array(np.zeros((1, 1)))


def test_pairs_come_only_from_fit_rows(monkeypatch):
    from hitmodels import pair_training
    from hitmodels.train import split_rows

    table = pd.concat([synthetic_rows(60, 0), synthetic_rows(40, 9)], ignore_index=True)
    table.attrs = synthetic_rows(2, 0).attrs
    cfg = TrainConfig(family="siamese", params={"sampling": "artist", "epochs": 2})
    s = split_rows(table, cfg)
    seen: list[np.ndarray] = []
    real = pair_training.sample_pairs

    def recording(kind, y, artists, rng, mean=None):
        pairs = real(kind, y, artists, rng, mean)
        seen.append(np.asarray(artists, dtype=object)[pairs])
        assert pairs.max() < len(s.fit)
        return pairs

    monkeypatch.setattr(pair_training, "sample_pairs", recording)
    get("siamese").fit(s.fit, s.val, s.calib, [], cfg)
    assert seen
    fit_artists = set(s.fit["artist_id"])
    for labels in seen:
        assert (labels[:, 0] == labels[:, 1]).all() and set(labels.ravel()) <= fit_artists


def test_settings_are_checked():
    fam = get("siamese")
    for bad, match in (({"sampling": "random"}, "unknown sampling"), ({"segment": "intro"}, "unknown segment"),
                       ({"w": 1.5}, "out of range"), ({"depth": 3}, "no setting")):
        with pytest.raises(ValueError, match=match):
            fam.check(TrainConfig(family="siamese", params=bad))
    with pytest.raises(ValueError, match="needs a mel store"):
        fam.prepare(pd.DataFrame({"track_id": ["a"]}), TrainConfig(family="siamese"))


@pytest.fixture(scope="module")
def siamese_table(ray_local, tiny_catalogue, tmp_path_factory):
    """The tiny catalogue's truth as a model table and its mel store (made by the real Ray Data job)."""
    from pipelines import mels

    store = tmp_path_factory.mktemp("mels") / "store"
    mels.run(tiny_catalogue["manifest"], store)
    truth = pd.read_parquet(tiny_catalogue["truth"])
    table = truth[["track_id", "artist_id", "popularity"]].assign(error=None, genre_pop=0.0)
    path = tmp_path_factory.mktemp("table") / "table.parquet"
    table.to_parquet(path)
    return path, store


@pytest.fixture(scope="module")
def siamese_version(siamese_table, mlflow_uri):
    """A Siamese version trained through ``hitmusic train``'s own argument handling."""
    import argparse

    from hitmodels.train import train
    from pipelines.train import add_arguments, config_from_args

    path, store = siamese_table
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([str(path), "--family", "siamese", "--mels", str(store), "--param", "epochs=3",
                         "--param", "sampling=ab"])
    cfg = config_from_args(args)
    assert cfg.model_name == "siamese-cnn" and cfg.params["mels"] == str(store.resolve())
    return cfg, train(pd.read_parquet(path), cfg, mlflow_uri)


@pytest.mark.integration
def test_a_siamese_version_is_registered_and_loads_as_data(siamese_table, siamese_version, mlflow_uri):
    import mlflow

    from hitmodels.registry import ModelRef, load_model
    from hitmodels.train import SPLIT_ARTIFACT

    path, store = siamese_table
    cfg, result = siamese_version
    assert result.model_name == "siamese-cnn" and result.family == "siamese"
    assert {"test_mae", "test_kendall_top10", "test_ndcg_top10"} <= set(result.metrics)
    model = load_model(ModelRef("siamese-cnn", result.version), mlflow_uri)
    assert model.family == "siamese" and model.columns == ["mel"]
    client = mlflow.MlflowClient(mlflow_uri)
    mv = client.get_model_version("siamese-cnn", result.version)
    assert mv.tags["input_kind"] == "mel" and mv.tags["model_family"] == "siamese"
    assert "Siamese CNN" in mv.description and "ab pairs" in mv.description
    split = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/{SPLIT_ARTIFACT}")
    table = get("siamese").prepare(pd.read_parquet(path), cfg)
    test = table[table["track_id"].isin(split["test_track_ids"])]
    assert len(test) == len(split["test_track_ids"]) > 0
    # the registered version answers what the metrics were computed from
    from hitmodels.evaluate import regression_metrics

    out = model.predict(None, test)
    assert regression_metrics(test["popularity"], out["popularity"])["mae"] == pytest.approx(result.metrics["test_mae"])


@pytest.mark.integration
def test_siamese_and_rows_champions_served_side_by_side_and_batch_scored(siamese_table, siamese_version, mlflow_uri,
                                                                         serve_port, shared_dir, tmp_path):
    import httpx

    from hitmodels.config import ServeSettings
    from hitmodels.registry import promote
    from hitmodels.train import train
    from pipelines import score
    from serve.deploy import deploy, placement
    from tables import random_table

    _, store = siamese_table
    _, result = siamese_version
    promote("siamese-cnn", result.version, tracking_uri=mlflow_uri)
    rows_model = "side-by-side-rows"
    rows_version = train(random_table(4), TrainConfig(family="lasso", name="lasso", model_name=rows_model,
                                                      experiment=rows_model), mlflow_uri).version
    promote(rows_model, rows_version, tracking_uri=mlflow_uri)
    app, prefix = placement("siamese-cnn")
    assert (app, prefix) == ("hitmusic-siamese-cnn", "/siamese-cnn") and placement("hitmusicnet") == ("hitmusic", "/")
    settings = dict(tracking_uri=mlflow_uri, poll_interval_s=60.0)
    mel_url = deploy(ServeSettings(model_name="siamese-cnn", **settings), port=serve_port, app_name=app,
                     route_prefix=prefix)
    rows_url = deploy(ServeSettings(model_name=rows_model, **settings), port=serve_port, app_name="sbs-rows",
                      route_prefix="/sbs-rows")
    audio_files = sorted((shared_dir / "data" / "audio").glob("*.mp3"))
    try:
        info = httpx.get(f"{mel_url}/model", timeout=30).json()
        assert info["family"] == "siamese" and info["input"] == "mel" and "percentile" in info["outputs"]
        assert httpx.get(f"{mel_url}/features", timeout=30).json() == {"input": "mel", "columns": []}
        online = {}
        for f in audio_files:
            r = httpx.post(f"{mel_url}/predict/audio", files={"file": (f.name, f.read_bytes(), "audio/mpeg")},
                           data={"track_id": f.stem}, timeout=120)
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["model_name"] == "siamese-cnn" and doc["model_version"] == result.version
            online[f.stem] = doc["predictions"][0]
            assert 0 <= online[f.stem]["popularity"] <= 100 and 0 <= online[f.stem]["percentile"] <= 100
        # the rows champion answers beside it, on its own route
        r = httpx.post(f"{rows_url}/predict/audio", files={"file": ("rock.mp3", audio_files[0].read_bytes())},
                       timeout=120)
        assert r.status_code == 200 and r.json()["model_name"] == rows_model, r.text
        # feature rows to the audio model: 422 saying where to send audio
        r = httpx.post(f"{mel_url}/predict", json={"rows": [{"x": 1.0}]}, timeout=30)
        assert r.status_code == 422 and "/predict/audio" in r.text
        r = httpx.post(f"{mel_url}/predict/audio", files={"file": ("junk.mp3", b"not audio at all" * 10)}, timeout=30)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "file"]
        r = httpx.post(f"{mel_url}/predict/audio", files={"file": ("a.mp3", audio_files[0].read_bytes())},
                       data={"metadata": '{"artist_popularity": 50}'}, timeout=30)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "metadata", "artist_popularity"]
    finally:  # each replica holds half a CPU of the 2-CPU test cluster: later tests need them
        from ray import serve

        serve.delete(app)
        serve.delete("sbs-rows")
    # batch: an audio manifest (one missing file) and the mel store; online == batch for the same tracks
    manifest = tmp_path / "audio.parquet"
    pd.DataFrame({"track_id": [f.stem for f in audio_files] + ["gone"],
                  "audio_uri": [str(f) for f in audio_files] + [str(tmp_path / "gone.mp3")]}).to_parquet(manifest)
    ref = score.run(manifest, tmp_path / "scores", "siamese-cnn", result.version, mlflow_uri)
    batch = score.read_scores(tmp_path / "scores").set_index("track_id")
    assert ref.version == result.version and len(batch) == len(audio_files) + 1  # rows in = rows out
    assert batch.loc["gone", "error"].startswith("audio: missing") and pd.isna(batch.loc["gone", "popularity"])
    # the network runs in float32, one clip online and a batch here: oneDNN's kernels may round the two
    # differently by an ulp on some CPUs (seen: 49.404132 vs 49.404135 on an AMD EPYC), never by more
    for tid, p in online.items():
        assert batch.loc[tid, "popularity"] == pytest.approx(p["popularity"], abs=1e-4)
        assert batch.loc[tid, "percentile"] == pytest.approx(p["percentile"], abs=1e-3)
        assert pd.isna(batch.loc[tid, "error"])
    score.run(store, tmp_path / "scores-store", "siamese-cnn", result.version, mlflow_uri)
    from_store = score.read_scores(tmp_path / "scores-store")
    assert len(from_store) == len(melstore.MelStore(store).index()) and from_store["error"].isna().all()
    with pytest.raises(ValueError, match="log-mel segments"):
        score.run(siamese_table[0], tmp_path / "scores-table", "siamese-cnn", result.version, mlflow_uri)


@pytest.mark.integration
def test_tune_siamese_reports_every_epoch_and_registers_the_best(siamese_table, ray_local, mlflow_uri, tmp_path):
    import mlflow

    from pipelines import tune

    path, store = siamese_table
    base = TrainConfig(model_name="siamese-tune-test", experiment="siamese-tune-test", family="siamese",
                       params={"mels": str(store), "channels": 8})
    results, reg = tune.run(path, family="siamese", search="random", num_samples=2, epochs=3, name="s1",
                            storage=tmp_path, base=base, tracking_uri=mlflow_uri, grace_period=2)
    assert len(results) == 2 and not any(r.error for r in results)
    for r in results:
        assert "val_spearman" in r.metrics and r.config["sampling"] in ("none", "naive", "ab", "artist")
    c = mlflow.MlflowClient(mlflow_uri)
    mv = c.get_model_version("siamese-tune-test", reg.version)
    assert mv.tags["model_family"] == "siamese" and mv.tags["input_kind"] == "mel"
    parent = c.get_run(mv.run_id).data.tags["mlflow.parentRunId"]
    assert "best_val_spearman" in c.get_run(parent).data.metrics


@pytest.mark.parametrize("sampling", ["ab", "ab+artist"])
def test_siamese_hitmusicnet_learns_on_feature_rows_and_round_trips(tmp_path, sampling):
    from hitmodels import families
    from hitmodels.bundle import load_bundle, write_bundle
    from hitmodels.data import feature_columns
    from hitmodels.train import split_rows

    assert "siamese-hitmusicnet" in families.names()
    fam = get("siamese-hitmusicnet")
    rng = np.random.default_rng(2)
    n = 240
    table = pd.DataFrame(rng.uniform(0, 1, (n, 12)), columns=[f"f{i}" for i in range(12)])
    table["popularity"] = np.clip(80 * table["f0"] + 30 * np.sin(3 * table["f1"]) + rng.normal(0, 4, n), 0, 100)
    table["track_id"], table["artist_id"], table["error"] = [f"t{i}" for i in range(n)], [f"a{i % 60}" for i in range(n)], None
    cfg = TrainConfig(family="siamese-hitmusicnet", params={"sampling": sampling, "epochs": 60, "lr": 3e-3})
    fam.check(cfg)
    s = split_rows(table, cfg)
    fitted = fam.fit(s.fit, s.val, s.calib, feature_columns(table), cfg)
    out = fitted.predict(s.test)
    assert list(out.columns) == fitted.model.outputs and out["percentile"].between(0, 100).all()
    rho = np.corrcoef(out["popularity"], s.test["popularity"])[0, 1]
    assert rho > 0.8, rho  # popularity follows two of the twelve columns
    write_bundle(tmp_path / "b", fitted.model)
    again = load_bundle(tmp_path / "b")
    pd.testing.assert_frame_equal(again.predict(None, s.test), out)
    X = s.test[again.columns].to_numpy(float)
    np.testing.assert_allclose(again.predict_array(X)["popularity"], out["popularity"])
    with pytest.raises(ValueError, match="no tag branch"):
        fam.variants(tags=True)


def test_early_stopping_keeps_the_best_epoch_and_epochs_follow_the_configuration():
    """train_pairs returns the weights of the epoch with the best validation objective, not the last; the
    family's epoch budget and patience are train's --epochs / --patience unless --param sets them."""
    from torch import nn

    from hitmodels.pair_training import train_pairs

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 1), nn.Sigmoid(), nn.Flatten(0))
    X = torch.rand(40, 1)
    y = np.random.default_rng(0).uniform(size=40)
    snapshots = []
    # validation scores scripted per epoch: best (closest to the truth) at epoch 2
    script = iter([0.9, 0.5, 0.0, 0.6, 0.8, 0.9, 0.9])
    val_y = np.zeros(5)

    def val_scores(n):
        snapshots.append({k: v.clone() for k, v in n.state_dict().items()})
        return np.full(5, next(script))

    p = {"seed": 0, "lr": 0.1, "weight_decay": 0.0, "w": 0.5, "margin": 0.05, "batch_pairs": 4, "epochs": 7,
         "patience": 3}
    out, history = train_pairs(net, lambda idx: (X[torch.from_numpy(idx)],), val_scores, y, np.arange(40), val_y, p,
                               "naive", "cpu")
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4, 5]  # stopped 3 epochs after the best
    assert min(range(6), key=lambda e: history[e]["val_objective"]) == 2
    for k, v in out.state_dict().items():
        assert torch.equal(v, snapshots[2][k]), k  # the weights scored at epoch 2, not the last epoch's
    from dataclasses import replace

    fam = get("siamese")
    rows = synthetic_rows(40, 0), synthetic_rows(12, 1)
    cfg = TrainConfig(family="siamese", params={"sampling": "naive", "channels": 4}, mlp_epochs=2, patience=50)
    assert len(fam.fit(rows[0], rows[1], rows[1].iloc[:0], [], cfg).history["siamese-naive"]) == 2
    cfg = replace(cfg, params={**cfg.params, "epochs": 3})
    assert len(fam.fit(rows[0], rows[1], rows[1].iloc[:0], [], cfg).history["siamese-naive"]) == 3


@pytest.mark.integration
def test_if_better_compares_siamese_versions_on_their_own_input(siamese_table, siamese_version, mlflow_uri):
    from dataclasses import replace

    from hitmodels.registry import compare_on_test, promote, promote_if_better
    from hitmodels.train import train

    path, _ = siamese_table
    cfg, first = siamese_version
    second = train(pd.read_parquet(path), replace(cfg, params={**cfg.params, "sampling": "none", "segment": "mid30"}),
                   mlflow_uri)
    promote("siamese-cnn", first.version, tracking_uri=mlflow_uri)
    cand, inc, metric, n = compare_on_test("siamese-cnn", second.version, first.version, pd.read_parquet(path),
                                           mlflow_uri)
    assert metric == "mae" and n > 0
    # each version is scored on its own store and segment: the figures it registered on those test rows
    assert inc == pytest.approx(first.metrics["test_mae"]) and cand == pytest.approx(second.metrics["test_mae"])
    promoted, reason = promote_if_better("siamese-cnn", second.version, pd.read_parquet(path), mlflow_uri)
    assert promoted == (cand <= inc) and "mae" in reason.lower()


@pytest.mark.integration
def test_siamese_retraining_on_two_workers_is_data_parallel(siamese_table, ray_local, mlflow_uri, tmp_path):
    """Ray Train with two workers: each samples its pairs from its own shard of the fit rows, DDP averages the
    gradients, both end with the same weights, and that network is the bundle that gets registered."""
    from hitmodels import ray_retrain
    from hitmodels.bundle import load_bundle
    from hitmodels.data import training_rows
    from hitmodels.devices import shard_rows
    from hitmodels.train import register_bundle, retrain_rows

    path, store = siamese_table
    cfg = TrainConfig(family="siamese", model_name="siamese-ddp-test", experiment="siamese-ddp-test", mlp_epochs=3,
                      params={"mels": str(store), "channels": 8, "sampling": "naive"})
    result = ray_retrain.retrain(str(path), cfg, tmp_path / "ray_results", workers=2, name="siamese-ddp")
    m = result.metrics
    assert m["world_size"] == 2 and [r["rank"] for r in m["ranks"]] == [0, 1]
    table = get("siamese").prepare(training_rows(pd.read_parquet(path)), cfg)
    fit, _, _ = retrain_rows(table, cfg)
    own = [fit["track_id"].iloc[shard_rows(len(fit), rank, 2, cfg.seed)] for rank in (0, 1)]
    assert set(own[0]).isdisjoint(own[1])
    for reported, ids in zip(m["ranks"], own):
        assert reported["shard_rows"] == len(fit) // 2 and reported["shard_digest"] == ray_retrain.rows_digest(ids)
    assert m["ranks"][0]["weights_checksum"] == m["ranks"][1]["weights_checksum"]
    with result.checkpoint.as_directory() as bundle:
        model = load_bundle(Path(bundle))
        assert ray_retrain.weights_checksum(model.nets) == m["ranks"][0]["weights_checksum"]
        reg = register_bundle(Path(bundle), pd.read_parquet(path), cfg, mlflow_uri, tags={"train_workers": "2"})
    assert reg.family == "siamese" and np.isfinite(reg.metrics["test_mae"])


def test_evaluate_family_variants_over_folds_of_8_1_1(tmp_path, capsys):
    """hitmusic evaluate --family: every variant on the same k folds, each row a test row exactly once, the
    report and --json shaped as documented (models.<variant>.test.<metric>)."""
    import json

    from hitmodels.config import TrainConfig as TC
    from hitmodels.variants import fold_parts
    from pipelines import evaluate

    rng = np.random.default_rng(4)
    n = 90
    table = pd.DataFrame(rng.uniform(0, 1, (n, 6)), columns=[f"f{i}" for i in range(6)])
    table["popularity"] = np.clip(90 * table["f0"] + rng.normal(0, 3, n), 0, 100)
    table["track_id"], table["artist_id"], table["error"] = [f"t{i}" for i in range(n)], [f"a{i % 30}" for i in range(n)], None
    path = tmp_path / "t.parquet"
    table.to_parquet(path)
    parts = fold_parts(table, 3, TC())
    assert sorted(np.bincount(parts)) == [30, 30, 30]  # every row in exactly one part
    assert evaluate.main([str(path), "--family", "siamese-hitmusicnet", "--folds", "3", "--variants", "rating-only,ab",
                          "--epochs", "5", "--json", "--no-mlflow", "--out", str(tmp_path / "report")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["family"] == "siamese-hitmusicnet" and doc["folds"] == 3 and doc["n_rows"] == n
    assert set(doc["models"]) == {"rating-only", "ab"}
    for m in doc["models"].values():
        assert {"ndcg_top10", "kendall_top10", "spearman_top10", "mae", "spearman"} <= set(m["test"])
        assert 0 < m["test"]["mae"] < 0.5
    folds = json.loads((tmp_path / "report" / "variants.json").read_text())
    assert [len(v) for v in folds.values()] == [3, 3]
    assert "| rating-only |" in (tmp_path / "report" / "report.md").read_text()
    with pytest.raises(ValueError, match="go with --family"):
        evaluate.main([str(path), "--tags"])
