"""Model families as plug-ins: the classical challengers fitted, saved as data, loaded back and scored exactly
as scikit-learn would; registered, promoted, served over real HTTP and batch-scored; the leaderboard and
promotion on stored test rows."""

from __future__ import annotations

import ast
import json
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

from hitmodels import families
from hitmodels.bundle import load_bundle, parse_manifest, write_bundle
from hitmodels.config import TrainConfig
from hitmodels.data import feature_columns
from hitmodels.train import split_rows
from tables import random_table

ROOT = Path(__file__).parents[1]
CLASSICAL = ("lasso", "hgb")


def learnable(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Feature rows whose popularity is a non-linear function of a few columns, with some NaNs."""
    df = random_table(seed, n)
    rng = np.random.default_rng(seed)
    df["popularity"] = np.clip(0.6 * df["artist_popularity"] + 20 * np.sin(df["MEL_1"] * 3)
                               + rng.normal(0, 4, n), 0, 100)
    cols = feature_columns(df)
    df.loc[rng.choice(n, 20, replace=False), cols[3]] = np.nan
    return df


def fit(name: str, table: pd.DataFrame, cfg: TrainConfig = TrainConfig()):
    s = split_rows(table, cfg)
    return s, families.get(name).fit(s.fit, s.val, s.calib, feature_columns(table), replace(cfg, family=name))


def test_every_family_is_found_and_unknown_ones_are_named():
    assert {"hitmusicnet", "lasso", "hgb"} <= set(families.names())
    with pytest.raises(ValueError, match="unknown model family 'nope'; known: .*hgb.*hitmusicnet.*lasso"):
        families.get("nope")
    with pytest.raises(ValueError, match="no setting.*'depth'.*learning_rate"):
        families.get("hgb").check(TrainConfig(family="hgb", params={"depth": 3}))
    with pytest.raises(ValueError, match="unknown optimiser 'adamw'"):
        families.get("hitmusicnet").check(TrainConfig(optimizer="adamw"))


@pytest.mark.parametrize("name", CLASSICAL)
def test_classical_family_round_trips_as_data_and_answers_every_output(name, tmp_path):
    table = learnable()
    s, fitted = fit(name, table)
    model = fitted.model
    assert model.family == name and model.columns == feature_columns(table)
    files = write_bundle(tmp_path, model)
    assert set(files) == {"bundle.json", *families.get(name).files}
    # data only: JSON and (for the trees) an .npz that loads without pickle
    for f in files:
        if f.endswith(".json"):
            json.loads((tmp_path / f).read_text())
        else:
            np.load(tmp_path / f, allow_pickle=False).close()
    manifest = json.loads((tmp_path / "bundle.json").read_text())
    assert manifest["family"] == name and manifest["input"] == {"kind": "rows", "columns": model.columns}
    assert manifest["outputs"] == model.outputs and manifest["feature_config"]["n_mels"] > 0
    loaded = load_bundle(tmp_path)
    a, b = model.predict(None, s.test), loaded.predict(None, s.test)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == ["popularity", "popularity_lower", "popularity_upper", "class",
                               "popularity_class", "p_low", "p_medium", "p_high"]
    assert a["popularity"].between(0, 100).all()
    assert np.allclose(a[["p_low", "p_medium", "p_high"]].sum(1), 1)
    # it learnt: far better than predicting the training mean on held-out rows
    truth = s.test["popularity"].to_numpy()
    mae = np.abs(a["popularity"] - truth).mean()
    assert mae < 0.6 * np.abs(s.fit["popularity"].mean() - truth).mean(), mae
    # the interval was calibrated on the calibration rows only
    assert model.conformal["n_calib"] == len(s.calib)


def test_hgb_arrays_predict_what_scikit_learn_predicts():
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    from hitmodels.families.hgb.trees import export_trees, raw_predict

    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 6))
    X[rng.random(X.shape) < 0.05] = np.nan  # NaN takes the learnt missing-value branch
    y = np.nan_to_num(X[:, 0]) * 2 + np.sin(np.nan_to_num(X[:, 1])) + rng.normal(0, 0.1, 500)
    reg = HistGradientBoostingRegressor(max_iter=40, random_state=0).fit(X, y)
    Xt = rng.normal(size=(300, 6))
    Xt[rng.random(Xt.shape) < 0.1] = np.nan
    np.testing.assert_allclose(raw_predict(export_trees(reg), Xt)[:, 0], reg.predict(Xt), rtol=0, atol=1e-10)
    labels = np.digitize(y, np.quantile(y, [0.3, 0.7]))
    cls = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(X, labels)
    raw = raw_predict(export_trees(cls), Xt)
    proba = np.exp(raw - raw.max(1, keepdims=True))
    np.testing.assert_allclose(proba / proba.sum(1, keepdims=True), cls.predict_proba(Xt), atol=1e-10)
    binary = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X, labels > 0)
    p1 = 1 / (1 + np.exp(-raw_predict(export_trees(binary), Xt)[:, 0]))
    np.testing.assert_allclose(p1, binary.predict_proba(Xt)[:, 1], atol=1e-10)


def test_lasso_predicts_what_scikit_learn_predicts():
    from sklearn.linear_model import LassoCV

    table = learnable()
    s, fitted = fit("lasso", table)
    model = fitted.model
    X = model.pre.transform(s.fit).astype(np.float64)
    ref = LassoCV(alphas=20, cv=3, max_iter=5000, random_state=TrainConfig().seed).fit(
        X, s.fit["popularity"].to_numpy() / 100)
    Xt = model.pre.transform(s.test)
    ours = model.predict_array(Xt, scaled=True)["popularity"]
    np.testing.assert_allclose(ours, np.clip(ref.predict(Xt.astype(np.float64)) * 100, 0, 100), atol=1e-9)


def test_bundles_that_are_not_what_their_family_writes_are_refused(tmp_path):
    table = learnable(200)
    _, fitted = fit("hgb", table)
    write_bundle(tmp_path, fitted.model)
    # a manifest naming a file its family does not read
    with pytest.raises(ValueError, match="reads exactly"):
        parse_manifest(json.dumps({"family": "hgb", "files": ["model.json", "python_model.pkl"]}))
    with pytest.raises(ValueError, match="unknown model family"):
        parse_manifest(json.dumps({"family": "evil", "files": ["x"]}))
    # a tree pointing outside its nodes
    with np.load(tmp_path / "trees.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["reg.left"] = arrays["reg.left"] + 10**6
    np.savez(tmp_path / "trees.npz", **arrays)
    with pytest.raises(ValueError, match="points outside"):
        load_bundle(tmp_path)


def test_stages_import_no_family_by_name():
    """Registry, promotion, Serve, batch scoring, training, tuning and the leaderboard dispatch on the bundle's
    or the command line's family: none of them imports a family's module."""
    stages = ["serve/app.py", "serve/deploy.py", "pipelines/score.py", "pipelines/tune.py", "pipelines/train.py",
              "pipelines/leaderboard.py", "hitmodels/registry.py", "hitmodels/train.py", "hitmodels/bundle.py",
              "hitmodels/evaluate.py", "hitmodels/report.py", "pipelines/mels.py", "pipelines/evaluate.py",
              "hitmodels/variants.py", "hitmodels/melstore.py", "hitmodels/pair_training.py", "hitmodels/ranking.py"]
    for rel in stages:
        tree = ast.parse((ROOT / rel).read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                assert not n.startswith("hitmodels.families."), f"{rel} imports {n}"
                assert n not in ("hitmodels.models", "hitmodels.families.hitmusicnet"), f"{rel} imports {n}"


# ----------------------------------------------------------------------------- registry, Serve, batch


MODEL = "families-test"


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("families") / "table.parquet"
    learnable(300, seed=5).to_parquet(path)
    return path


@pytest.mark.integration
def test_classical_versions_are_registered_promoted_served_and_batch_scored(table_path, mlflow_uri, serve_port,
                                                                           tmp_path):
    import mlflow

    from hitmodels.registry import ModelRef, load_model, promote
    from hitmodels.train import train
    from hitmodels.config import ServeSettings
    from pipelines import score
    from serve.deploy import deploy

    table = pd.read_parquet(table_path)
    cfg = TrainConfig(model_name=MODEL, experiment=MODEL)
    versions = {name: train(table, replace(cfg, family=name, name=name), mlflow_uri) for name in CLASSICAL}
    c = mlflow.MlflowClient(mlflow_uri)
    for name, result in versions.items():
        mv = c.get_model_version(MODEL, result.version)
        assert mv.tags["model_family"] == name and mv.tags["selection_metric"] == "mae"
        assert name in mv.description.lower() or families.get(name).label in mv.description
        assert "MAE" in mv.description and mv.tags["dataset_fingerprint"] in mv.description
        assert load_model(ModelRef(MODEL, result.version), mlflow_uri).family == name

    promote(MODEL, versions["lasso"].version, tracking_uri=mlflow_uri)
    url = deploy(ServeSettings(model_name=MODEL, tracking_uri=mlflow_uri, poll_interval_s=1.0),
                 port=serve_port, app_name="families-test", route_prefix="/families-test")
    try:
        rows = table.head(5)
        cols = httpx.get(f"{url}/features", timeout=30).json()["columns"]
        body = {"rows": [{"track_id": r["track_id"], **{k: (None if pd.isna(r[k]) else float(r[k])) for k in cols}}
                         for _, r in rows.iterrows() if not r[cols].isna().any()]}
        online = {}
        for name in CLASSICAL:
            if name == "hgb":  # the alias moves: the replica hot-swaps to the tree model
                promote(MODEL, versions["hgb"].version, tracking_uri=mlflow_uri)
                deadline = time.monotonic() + 60
                while httpx.get(f"{url}/healthz", timeout=30).json()["model_version"] != versions["hgb"].version:
                    assert time.monotonic() < deadline, "the replica did not swap to the hgb version"
                    time.sleep(0.5)
            r = httpx.post(f"{url}/predict", json=body, timeout=60)
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["model_version"] == versions[name].version
            assert httpx.get(f"{url}/model", timeout=30).json()["family"] == name
            online[name] = {p["track_id"]: p for p in doc["predictions"]}
            assert {"popularity", "popularity_lower", "popularity_upper", "class", "p_low"} <= set(
                next(iter(online[name].values())))

            out = tmp_path / f"scores-{name}"
            ref = score.run(table_path, out, MODEL, versions[name].version, mlflow_uri)
            batch = score.read_scores(out).set_index("track_id")
            assert ref.version == versions[name].version and len(batch) == len(table)  # rows in = rows out
            assert batch["error"].isna().all()
            for tid, p in online[name].items():
                assert batch.loc[tid, "popularity"] == pytest.approx(p["popularity"], abs=1e-9)
                assert batch.loc[tid, "class"] == p["class"]
        assert online["lasso"] != online["hgb"]
    finally:  # a replica holds half a CPU of the 2-CPU test cluster: later tests need it
        from ray import serve

        serve.delete("families-test")


# ----------------------------------------------------------------------------- leaderboard, promotion


@pytest.mark.integration
def test_leaderboard_registers_every_family_and_its_champion_is_the_best_row(table_path, mlflow_uri, capsys):
    import mlflow

    from pipelines import leaderboard

    name = "leaderboard-test"
    rc = leaderboard.main([str(table_path), "--families", "hitmusicnet,lasso,hgb", "--model-name", name,
                           "--experiment", name, "--epochs", "10", "--tracking-uri", mlflow_uri, "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["rows"]
    assert [r["family"] for r in rows] != [] and {r["family"] for r in rows} == {"hitmusicnet", "lasso", "hgb"}
    maes = [r["test_mae"] for r in rows]
    assert maes == sorted(maes)  # best first
    best = min(rows, key=lambda r: r["test_mae"])
    assert doc["champion"] == {"family": best["family"], "version": best["version"]}, doc["reason"]
    for r in rows:
        assert {"version", "test_mae", "spearman", "r2", "kendall_top10", "coverage", "fit_seconds"} <= set(r)
    c = mlflow.MlflowClient(mlflow_uri)
    assert c.get_model_version_by_alias(name, "champion").version == best["version"]
    run = c.get_run(doc["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["best_family"] == best["family"]
    arts = {a.path for a in c.list_artifacts(doc["mlflow_run_id"])}
    assert {"leaderboard.md", "leaderboard.json"} <= arts
    # each family's run is nested under the leaderboard's, and each version stores its test rows
    for r in rows:
        assert c.get_run(r["run_id"]).data.tags["mlflow.parentRunId"] == doc["mlflow_run_id"]


@pytest.mark.integration
def test_if_better_compares_on_stored_test_rows_and_refuses_other_data(table_path, mlflow_uri, tmp_path):
    from hitmodels.registry import CHAMPION, compare_on_test, promote, promote_if_better, resolve
    from hitmodels.train import train

    name = "ifbetter-test"
    table = pd.read_parquet(table_path)
    cfg = TrainConfig(model_name=name, experiment=name, ae_epochs=5, mlp_epochs=5)
    hgb = train(table, replace(cfg, family="hgb", name="hgb"), mlflow_uri)
    lasso = train(table, replace(cfg, family="lasso", name="lasso"), mlflow_uri)
    test_ids = set(split_rows(table, cfg).test["track_id"])

    # a reordered table: the same data, the same rows compared (found by id, not by position)
    shuffled = table.sample(frac=1.0, random_state=7).reset_index(drop=True)
    a = compare_on_test(name, lasso.version, hgb.version, table, mlflow_uri)
    b = compare_on_test(name, lasso.version, hgb.version, shuffled, mlflow_uri)
    assert a[2:] == b[2:] == ("mae", len(test_ids)) and a[:2] == pytest.approx(b[:2], abs=1e-12)
    assert a[0] == pytest.approx(lasso.metrics["test_mae"]) and a[1] == pytest.approx(hgb.metrics["test_mae"])
    # a split by row position would put other rows in the test set of the reordered table
    assert set(split_rows(shuffled, cfg).test["track_id"]) != test_ids

    promote(name, hgb.version, tracking_uri=mlflow_uri)
    promoted, reason = promote_if_better(name, lasso.version, shuffled, mlflow_uri)
    assert promoted == (lasso.metrics["test_mae"] <= hgb.metrics["test_mae"]), reason
    assert str(len(test_ids)) in reason

    # a version trained on other data: no fair comparison, refused with the reason, champion unchanged
    champion = resolve(name, CHAMPION, mlflow_uri).version
    other = table.copy()
    other.loc[0, "popularity"] = (other.loc[0, "popularity"] + 7) % 100
    changed = train(other, replace(cfg, family="lasso", name="lasso"), mlflow_uri)
    with pytest.raises(ValueError, match="trained on dataset .* their test rows are not comparable"):
        promote_if_better(name, changed.version, other, mlflow_uri)
    # and a table that is not the data both versions were trained on
    with pytest.raises(ValueError, match="not the data"):
        compare_on_test(name, lasso.version, hgb.version, other, mlflow_uri)
    assert resolve(name, CHAMPION, mlflow_uri).version == champion


@pytest.mark.parametrize("name", CLASSICAL)
def test_classical_family_with_two_or_one_classes_in_its_rows(name, tmp_path):
    """A catalogue whose training rows never reach 'high' has a two-class head (p_high 0); one whose rows are
    all 'low' has none, and its class is that of the predicted popularity."""
    table = learnable(300)
    two = table.assign(popularity=table["popularity"] * 0.6)  # below 65: low and medium only
    _, fitted = fit(name, two)
    out = fitted.model.predict(None, two.head(50))
    assert (out["p_high"] == 0).all() and np.allclose(out[["p_low", "p_medium"]].sum(1), 1)
    assert set(out["class"]) <= {"low", "medium"}
    write_bundle(tmp_path / "two", fitted.model)
    pd.testing.assert_frame_equal(load_bundle(tmp_path / "two").predict(None, two.head(50)), out)
    one = table.assign(popularity=table["popularity"] * 0.2)  # below 25: low only
    _, fitted = fit(name, one)
    out = fitted.model.predict(None, one.head(50))
    assert "p_low" not in out and set(out["class"]) == {"low"}
    write_bundle(tmp_path / "one", fitted.model)
    pd.testing.assert_frame_equal(load_bundle(tmp_path / "one").predict(None, one.head(50)), out)


def test_versions_registered_before_families_still_load(tmp_path):
    """A HitMusicNet version from before bundle manifests (weights.pt, arch.json, preprocess.json, and a code
    file importing ``hitmodels.predict.HitMusicPyfunc``) loads both ways: as data through the registry, and
    through MLflow's own ``load_model``."""
    import mlflow

    from hitmodels.registry import ModelRef, load_model

    table = learnable(200)
    _, fitted = fit("hitmusicnet", table, TrainConfig(ae_epochs=2, mlp_epochs=2))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    files = families.get("hitmusicnet").save(fitted.model, bundle)
    assert not (bundle / "bundle.json").exists()
    code = tmp_path / "old_pyfunc_code.py"
    code.write_text("import mlflow\nfrom hitmodels.predict import HitMusicPyfunc\n"
                    "mlflow.models.set_model(HitMusicPyfunc())\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("legacy")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=str(code), registered_model_name="legacy",
                                       artifacts={Path(f).stem: str(bundle / f) for f in files})
    rows = table.head(5)
    expected = fitted.model.predict(None, rows)
    pd.testing.assert_frame_equal(load_model(ModelRef("legacy", str(info.registered_model_version)), uri)
                                  .predict(None, rows), expected)
    pd.testing.assert_frame_equal(mlflow.pyfunc.load_model(f"models:/legacy/{info.registered_model_version}")
                                  .predict(rows), expected)


def test_answers_name_both_classes_and_the_class_of_popularity_is_exact():
    from hitmodels.predict import popularity_class

    table = learnable(300)
    for name in CLASSICAL:
        s, fitted = fit(name, table)
        out = fitted.model.predict(None, s.test)
        assert list(out["popularity_class"]) == list(popularity_class(out["popularity"].to_numpy(),
                                                                      tuple(fitted.model.thresholds)))
        _, plain = fit(name, table, TrainConfig(classifier=False))  # no class head: one answer
        out = plain.model.predict(None, s.test)
        assert list(out["class"]) == list(out["popularity_class"]) and "p_low" not in out


def test_the_feature_settings_of_the_training_table_travel_in_the_bundle(tmp_path):
    from dataclasses import asdict

    from hitmodels.config import FeatureConfig
    from hitmodels.registry import ModelRef, load_model
    from hitmodels.train import train
    from pipelines.extract import read_features, record_feature_config

    cfg = FeatureConfig(sr=22050, n_mfcc=20)
    features = tmp_path / "features"
    record_feature_config(features, cfg)
    record_feature_config(features, cfg)  # resuming with the same settings is fine
    with pytest.raises(ValueError, match="other settings .*n_mfcc"):
        record_feature_config(features, FeatureConfig(sr=22050))
    learnable(40).to_parquet(features / "part-0.parquet")
    assert read_features(features).attrs["feature_config"] == asdict(cfg)
    old = tmp_path / "old-features"  # parts written before settings were recorded: their rate is unknown
    old.mkdir()
    learnable(40).to_parquet(old / "part-0.parquet")
    with pytest.raises(ValueError, match="before their settings were recorded"):
        record_feature_config(old, cfg)
    table = learnable(200)
    table.attrs["feature_config"] = asdict(cfg)
    table.to_parquet(tmp_path / "table.parquet")  # as hitmusic build writes it: the settings in the file
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = train(pd.read_parquet(tmp_path / "table.parquet"),
                   TrainConfig(family="lasso", name="lasso", model_name="fc-test", experiment="fc-test"), uri)
    assert load_model(ModelRef("fc-test", result.version), uri).feature_config == cfg
    # a table from before the settings were recorded: this version's defaults
    result = train(learnable(200), TrainConfig(family="lasso", model_name="fc-test", experiment="fc-test"), uri)
    assert load_model(ModelRef("fc-test", result.version), uri).feature_config == FeatureConfig()


def test_hitmusicnet_small_table_variant_learns_where_the_paper_configurations_answer_the_mean(tmp_path):
    from hitmodels.config import small_table_config

    table = learnable(300)
    base = TrainConfig()
    s, paper = fit("hitmusicnet", table, base)
    _, small = fit("hitmusicnet", table, small_table_config(base))
    _, lasso = fit("lasso", table)
    truth = s.test["popularity"].to_numpy()

    def mae(fitted):
        return float(np.abs(fitted.predict(s.test)["popularity"].to_numpy() - truth).mean())

    print(f"test MAE (popularity points): 1-B {mae(paper):.2f}, 1-S {mae(small):.2f}, lasso {mae(lasso):.2f}")
    assert mae(small) < 0.8 * mae(paper) and mae(small) < 1.05 * mae(lasso)
    net = small.model.net
    widths = [m.out_features for m in net.pop.net if isinstance(m, torch.nn.Linear)][:-1]
    assert net.skip is not None and net.standardised and min(widths) >= 16
    write_bundle(tmp_path, small.model)
    pd.testing.assert_frame_equal(load_bundle(tmp_path).predict(None, s.test), small.predict(s.test))
    with pytest.raises(ValueError, match="skip_linear needs end_to_end"):
        families.get("hitmusicnet").check(TrainConfig(skip_linear=True))


def test_a_bundle_file_past_its_bound_is_refused_before_download(tmp_path, monkeypatch):
    from hitmodels import registry
    from hitmodels.registry import ModelRef, load_model
    from hitmodels.train import train

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = train(learnable(200), TrainConfig(family="lasso", name="lasso", model_name="big", experiment="big"),
                   uri)
    assert load_model(ModelRef("big", result.version), uri).family == "lasso"
    monkeypatch.setattr(registry, "MAX_BUNDLE_FILE_BYTES", 1000)  # model.json holds ~400 coefficients
    with pytest.raises(LookupError, match=r"model\.json .* larger than 1000 bytes"):
        load_model(ModelRef("big", result.version), uri)
