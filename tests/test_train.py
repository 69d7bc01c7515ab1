"""The paper's model and procedure: named configurations, class schemes, splits without leakage, metrics
against hand-computed values, conformal intervals, cross-validation against the baselines, the registered
model's outputs, ``hitmusic evaluate`` and the SPD "Features Extracted/" loader. Tiny tables, few epochs."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from hitmodels.config import CLASS_THRESHOLDS, PAPER_CONFIGS, EvaluateConfig, TrainConfig, paper_config
from hitmodels.data import feature_columns
from hitmodels.evaluate import interval_metrics, label_metrics, ranking_metrics, regression_metrics, top_rows
from hitmodels.families.hitmusicnet.network import HitMusicNet, ae_sizes, popnet_sizes
from hitmodels.predict import Preprocessor, SplitConformal, class_thresholds, popularity_class
from hitmodels.crossval import cross_validate
from hitmodels.families.hitmusicnet.fit import KERAS_LR, fit_model, make_optimizer
from hitmodels.train import split_rows, stratified_split


def learnable_table(n: int = 600, d: int = 30, seed: int = 0) -> pd.DataFrame:
    """Features mix 6 latent factors plus noise; popularity (0-100, mean 40) is a non-linear function of
    four of them plus noise, so it can be learnt from the features but not perfectly."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 6))
    X = np.tanh(z @ rng.standard_normal((6, d)) / np.sqrt(6)) + 0.1 * rng.standard_normal((n, d))
    signal = z[:, 0] + 0.8 * np.sin(2 * z[:, 1]) + 0.6 * z[:, 2] * z[:, 3]
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(d)])
    df["popularity"] = np.clip(40 + 15 * signal / signal.std() + rng.normal(0, 5, n), 0, 100).round()
    df["track_id"] = [f"t{i}" for i in range(n)]
    df["artist_id"] = "a"
    df["error"] = None
    return df


QUICK = TrainConfig(ae_epochs=15, mlp_epochs=15, patience=5, threads=1)


# ------------------------------------------------------------------------------------------ the model


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_every_named_configuration_has_the_papers_sizes(name):
    cfg = paper_config(name)
    delta = {"1": 1 / 5, "2": 1 / 4, "3": 1 / 7}[name[0]]
    assert cfg.name == name and cfg.delta == pytest.approx(delta)
    assert (cfg.optimizer, cfg.initialiser) == {"A": ("adadelta", "glorot_uniform"), "B": ("adam", "glorot_uniform"),
                                                "C": ("adadelta", "he_normal"), "D": ("adam", "he_normal")}[name[-1]]
    assert cfg.batch_size == 256 and cfg.patience == 10 and cfg.ae_epochs == cfg.mlp_epochs == 100
    assert cfg.dropout == 0.25 and cfg.alphas == pytest.approx((1, 1 / 2, 1 / 3))
    d = 420
    c = round(delta * d)
    net = HitMusicNet(d, cfg.delta, cfg.dropout, cfg.alphas, classifier=True)
    linears = [m for m in net.ae.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == \
        [(420, 210), (210, 140), (140, c), (c, 140), (140, 210), (210, 420)]
    assert ae_sizes(d, cfg.delta) == (420, 210, 140, c)
    hidden = [m.out_features for m in net.pop.modules() if isinstance(m, torch.nn.Linear)]
    assert hidden == [*popnet_sizes(c), 1] == [c, round(c / 2), round(c / 3), 1]
    x = torch.rand(4, d)
    net.eval()
    pop, logits = net(x), net.class_logits(x)
    assert pop.shape == (4, 1) and ((pop > 0) & (pop < 1)).all() and logits.shape == (4, 3)
    opt = make_optimizer(cfg.optimizer, net.pop.parameters(), cfg.lr)
    assert opt.param_groups[0]["lr"] == KERAS_LR[cfg.optimizer]


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown configuration"):
        paper_config("4-A")
    with pytest.raises(ValueError, match="unknown optimiser"):
        make_optimizer("rmsprop", [torch.zeros(1, requires_grad=True)], None)
    with pytest.raises(ValueError, match="class scheme"):
        class_thresholds("deciles", np.arange(10))


def test_class_schemes():
    pop = np.arange(101, dtype=float)
    assert class_thresholds("fixed", pop) == CLASS_THRESHOLDS == (25.0, 65.0)
    assert class_thresholds("quartiles", pop) == (25.0, 75.0)
    assert class_thresholds("quartiles", np.array([10, 20, 30, 40, 50.0])) == (20.0, 40.0)
    classes = popularity_class(np.array([10, 20, 35, 40, 50.0]), (20.0, 40.0))
    assert list(classes) == ["low", "medium", "medium", "high", "high"]


# ------------------------------------------------------------------------------------------ metrics


def test_ranking_metrics_by_hand():
    truth = np.arange(20, dtype=float)[::-1] * 5  # 95, 90, ..., 0: the top 10 % are rows 0 and 1
    perfect = ranking_metrics(truth, truth)
    assert perfect == {"ndcg_top10": pytest.approx(1.0), "kendall_top10": pytest.approx(1.0),
                       "spearman_top10": pytest.approx(1.0)}
    pred = truth.copy()
    pred[1], pred[2] = truth[2], truth[1]  # relevant row 1 falls to rank 3, outside the top k = 2
    m = ranking_metrics(truth, pred)
    # graded relevance: row 0 (95) first, then a row outside the top set, of an ideal 95 + 90 / log2(3)
    assert m["ndcg_top10"] == pytest.approx(95 / (95 + 90 / math.log2(3)))
    # within the top two, 95 > 85 keeps the order of 95 > 90
    assert m["kendall_top10"] == pytest.approx(1.0)
    swapped = truth.copy()
    swapped[0], swapped[1] = truth[1], truth[0]
    m = ranking_metrics(truth, swapped)
    assert m["ndcg_top10"] == pytest.approx((90 + 95 / math.log2(3)) / (95 + 90 / math.log2(3)))
    assert m["kendall_top10"] == pytest.approx(-1.0)
    # ties at the boundary stay together: the top 10 % of 20 rows is 2, but three rows share the 2nd score
    tied = np.array([90, 80, 80, 80] + [10] * 16, dtype=float)
    assert list(top_rows(tied, 0.1)) == [0, 1, 2, 3]
    assert ranking_metrics(tied, tied)["ndcg_top10"] == pytest.approx(1.0)
    noisy = tied + np.linspace(0, 1, 20)[::-1] * 1e-3  # the same order, ties broken
    assert ranking_metrics(tied, noisy)["ndcg_top10"] == pytest.approx(1.0)
    late = tied.copy()
    late[3] = 5  # a tied top row ranked last: counted (k is the set's size, 4), so the score drops
    expected = (90 + 80 / math.log2(3) + 80 / 2) / (90 + 80 / math.log2(3) + 80 / 2 + 80 / math.log2(5))
    assert ranking_metrics(tied, late)["ndcg_top10"] == pytest.approx(expected)
    rng = np.random.default_rng(1)
    t, p = rng.uniform(0, 100, 300), rng.uniform(0, 100, 300)
    m = ranking_metrics(t, p, 0.2)
    top = np.argsort(-t)[:60]
    assert m["kendall_top20"] == pytest.approx(stats.kendalltau(t[top], p[top]).statistic)
    assert m["spearman_top20"] == pytest.approx(stats.spearmanr(t[top], p[top]).statistic)
    rel = np.where(np.isin(np.arange(300), top), t, 0.0)
    assert m["ndcg_top20"] == pytest.approx(skm.ndcg_score(rel[None], p[None], k=60))


def test_regression_label_and_interval_metrics_against_sklearn():
    rng = np.random.default_rng(0)
    t, p = rng.uniform(0, 100, 50), rng.uniform(0, 100, 50)
    m = regression_metrics(t, p)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(t / 100, p / 100))
    assert m["mse"] == pytest.approx(skm.mean_squared_error(t / 100, p / 100))
    assert m["r2"] == pytest.approx(skm.r2_score(t, p))
    lt, lp = popularity_class(t), popularity_class(p)
    c = label_metrics(lt, lp, ["low", "medium", "high"])
    assert c["f1_macro"] == pytest.approx(skm.f1_score(lt, lp, average="macro"))
    assert c["precision_macro"] == pytest.approx(skm.precision_score(lt, lp, average="macro", zero_division=0))
    i = interval_metrics(np.array([10.0, 50, 90, 30]), np.array([0.0, 40, 95, 30]), np.array([20.0, 45, 99, 40]))
    assert i == {"coverage": 0.5, "interval_width": pytest.approx((20 + 5 + 4 + 10) / 4)}


def test_split_conformal_quantile_by_hand():
    truth, pred = np.arange(1, 10, dtype=float), np.zeros(9)  # residuals 1..9
    c = SplitConformal.fit(truth, pred, 0.8)
    assert c.halfwidth == 8.0 and c.n_calib == 9  # ceil(10 * 0.8) = 8th smallest
    lo, hi = c.interval(np.array([5.0, 95.0]))
    assert list(lo) == [0.0, 87.0] and list(hi) == [13.0, 100.0]
    assert SplitConformal.fit(np.arange(1, 100.0), np.zeros(99), 0.55).halfwidth == 55.0  # not 56: 100 * 0.55
    assert SplitConformal.fit(truth[:3], pred[:3], 0.8).halfwidth == 100.0  # rank 4 of 3 rows: everything


# ------------------------------------------------------------------------------------------ procedure


def test_split_rows_are_disjoint_stratified_and_repeatable():
    table = learnable_table(400)
    cfg = TrainConfig()
    s = split_rows(table, cfg)
    parts = [set(x["track_id"]) for x in (s.fit, s.val, s.calib, s.test)]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 400
    assert len(s.test) == 80 and len(s.calib) == 48 and len(s.val) == 55
    assert split_rows(table, cfg).test["track_id"].tolist() == s.test["track_id"].tolist()
    for part in (s.fit, s.val, s.calib, s.test):
        assert abs(part["popularity"].median() - table["popularity"].median()) <= 5


def test_fit_never_sees_test_rows():
    """Everything fitted (scaler, weights, code scaling, conformal calibrator) is unchanged when the test
    rows' features are replaced by garbage, and the scaler is exactly the fit rows' scaler."""
    table = learnable_table(240)
    cfg = replace(QUICK, ae_epochs=3, mlp_epochs=3)
    cols = feature_columns(table)

    def fit(t):
        s = split_rows(t, cfg)
        return s, fit_model(s.fit, s.val, s.calib, cols, cfg)

    s, a = fit(table)
    assert a.model.pre == Preprocessor.fit(s.fit, cols)
    calib_pred = a.predict(s.calib)["popularity"].to_numpy()
    expected = SplitConformal.fit(s.calib["popularity"], calib_pred, cfg.coverage)
    assert a.model.meta.conformal["halfwidth"] == expected.halfwidth
    assert a.model.meta.conformal["n_calib"] == len(s.calib)
    poisoned = table.copy()
    test_rows = poisoned["track_id"].isin(s.test["track_id"])
    poisoned.loc[test_rows, cols] = 1e6
    s2, b = fit(poisoned)
    assert s2.test["track_id"].tolist() == s.test["track_id"].tolist()
    assert b.model.pre == a.model.pre and b.model.meta == a.model.meta
    for (k, va), vb in zip(a.model.net.state_dict().items(), b.model.net.state_dict().values()):
        assert torch.equal(va, vb), k


def test_cross_validation_keeps_test_rows_out_of_every_fit(monkeypatch):
    import hitmodels.families.hitmusicnet.fit as train_mod

    table = learnable_table(200)
    base = replace(QUICK, ae_epochs=2, mlp_epochs=2)
    ecfg = EvaluateConfig(configs=("1-B",), baselines=("mlr", "lda"), n_folds=3, tsne_points=20)
    seen: dict[str, set] = {"pre": set(), "fit": set(), "val": set(), "calib": set()}
    real_pre, real_fit = Preprocessor.fit.__func__, train_mod.fit_model

    def spy_pre(cls, df, columns):
        seen["pre"] |= set(df["track_id"])
        return real_pre(cls, df, columns)

    def spy_fit(fit_rows, val_rows, calib_rows, columns, cfg, **kw):
        for k, rows in (("fit", fit_rows), ("val", val_rows), ("calib", calib_rows)):
            seen[k] |= set(rows["track_id"])
        return real_fit(fit_rows, val_rows, calib_rows, columns, cfg, **kw)

    monkeypatch.setattr(Preprocessor, "fit", classmethod(spy_pre))
    monkeypatch.setattr(train_mod, "fit_model", spy_fit)
    result = cross_validate(table, base, ecfg)
    _, test = stratified_split(table, base.test_size, base.seed, base.strat_bins)
    test_ids = set(test["track_id"])
    assert len(test_ids) == result.n_test == 40
    assert all(not (ids & test_ids) for ids in seen.values())
    assert seen["val"] | seen["fit"] | seen["calib"] == set(table["track_id"]) - test_ids
    assert set(result.scores["fold"]) == {0, 1, 2}
    assert set(result.scores["model"]) == {"1-B", "MLR", "LDA (2 classes)"}


def test_hitmusicnet_beats_the_mean_and_is_compared_with_every_baseline():
    # MusicPopNet's widths are fractions of the code (δ·d): d = 100 keeps them from collapsing to 1-2 units.
    table = learnable_table(700, 100)
    base = TrainConfig(ae_epochs=40, mlp_epochs=40, threads=1)
    ecfg = EvaluateConfig(configs=("1-B",), n_folds=2, tsne_points=50)
    result = cross_validate(table, base, ecfg)
    means = result.means()
    assert set(means) == {"1-B", "Predict the mean", "MLR", "MLR + Lasso", "LDA (2 classes)", "MLP (2 classes)",
                          "HistGradientBoosting"}
    test = means["1-B"]["test"]
    _, held_out = stratified_split(table, base.test_size, base.seed, base.strat_bins)
    truth = held_out["popularity"].to_numpy(float)
    mean_mae = regression_metrics(truth, np.full_like(truth, table["popularity"].mean()))["mae"]
    # the report's own floor row: each fold's training mean, scored on the same held-out rows
    assert means["Predict the mean"]["test"]["mae"] == pytest.approx(mean_mae, rel=0.05)
    assert test["mae"] < 0.85 * means["Predict the mean"]["test"]["mae"] and test["spearman"] > 0.5
    for reg in ("MLR", "MLR + Lasso", "HistGradientBoosting"):
        assert 0 < means[reg]["test"]["mae"] < mean_mae
    for clf in ("LDA (2 classes)", "MLP (2 classes)"):
        assert means[clf]["test"]["bin_f1_macro"] > 0.55
    assert 0.5 < test["coverage"] <= 1.0 and test["interval_width"] > 0
    assert len(result.codes["1-B"][0]) == 50


# ------------------------------------------------------------------------------------------ registered model


def test_registered_model_answers_interval_and_class_probabilities(tmp_path):
    import mlflow

    from hitmodels.train import train

    table = learnable_table(300)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = replace(QUICK, model_name="train-test", experiment="train-test")
    result = train(table, cfg, uri)
    for k in ("test_mae", "test_mae_predict_mean", "test_coverage", "test_interval_width", "test_f1_macro",
              "test_ndcg_top10"):
        assert k in result.metrics
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/train-test/{result.version}")
    assert model.unwrap_python_model().model.columns == feature_columns(table)
    out = model.predict(table.head(7))
    assert list(out.columns) == ["popularity", "popularity_lower", "popularity_upper", "class",
                                 "popularity_class", "p_low", "p_medium", "p_high"]
    assert out["popularity"].between(0, 100).all()
    assert (out["popularity_lower"] <= out["popularity"]).all() and (out["popularity"] <= out["popularity_upper"]).all()
    assert out["popularity_lower"].ge(0).all() and out["popularity_upper"].le(100).all()
    proba = out[["p_low", "p_medium", "p_high"]].to_numpy()
    assert np.allclose(proba.sum(1), 1, atol=1e-5)
    assert list(out["class"]) == list(np.array(["low", "medium", "high"])[proba.argmax(1)])


# ------------------------------------------------------------------------------------------ hitmusic evaluate


def test_evaluate_writes_report_plots_and_json(tmp_path, capsys):
    import mlflow

    from pipelines import evaluate

    path = tmp_path / "table.parquet"
    learnable_table(160).to_parquet(path)
    out = tmp_path / "report"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = evaluate.main([str(path), "--out", str(out), "--configs", "1-B", "--baselines", "mlr,lda", "--folds", "2",
                        "--epochs", "3", "--class-scheme", "quartiles", "--tracking-uri", uri, "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    run = mlflow.MlflowClient(uri).get_run(report["mlflow_run_id"])
    assert run.data.metrics["1-B.test_mae"] == pytest.approx(report["models"]["1-B"]["test"]["mae"])
    assert {"report/report.md", "report/tsne.png"} <= {
        f.path for f in mlflow.MlflowClient(uri).list_artifacts(run.info.run_id, "report")}
    assert report["n_rows"] == 160 and report["folds"] == 2 and report["published"]["1-A"]["mae"] == 0.0855
    assert {"1-B", "MLR", "LDA (2 classes)"} == set(report["models"])
    assert "mae" in report["models"]["1-B"]["test"] and "bin_f1_macro" in report["models"]["LDA (2 classes)"]["val"]
    text = (out / "report.md").read_text()
    assert "| 1-B |" in text and "published MAE" in text and "0.0855" not in text.split("| 1-B |")[1].split("\n")[0]
    for png in ("popularity.png", "learning_curves.png", "tsne.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="unknown configuration"):
        evaluate.main([str(path), "--configs", "9-Z", "--no-mlflow"])


def test_spd_features_folder_gives_a_model_table(tmp_path):
    from hitmodels.config import SynthConfig
    from hitmodels.spd_features import has_spd_features, load_spd_model_table
    from hitmodels.synth import generate
    from pipelines.evaluate import load_source

    generate(tmp_path, SynthConfig(n_tracks=12, duration_s=0.1, sr=8000, seed=1))
    tracks = pd.read_csv(tmp_path / "Data Sources" / "spotify_tracks.csv", encoding="utf-8-sig", index_col=0)
    ids = tracks["id"].tolist()
    feats = tmp_path / "Features Extracted"
    feats.mkdir()
    rng = np.random.default_rng(0)
    audio_cols = [f"Chroma_{i}" for i in range(1, 13)] + [f"MEL_{i}" for i in range(1, 129)] + ["ZCR", "entropy_energy"]
    low = pd.DataFrame(rng.random((11, len(audio_cols))), columns=audio_cols)
    low["track_id"] = ids[:11]  # one track lacks audio features: the inner join drops it
    low.to_csv(feats / "low_level_audio_features.csv")  # SPD's unnamed index column included
    pd.DataFrame({"mean_syllables_word": 1.2, "mean_words_sentence": 5.0, "n_sentences": 10, "n_words": 50,
                  "sentence_similarity": 0.1, "track_id": ids, "vocabulary_wealth": 0.5}).to_csv(
        feats / "lyrics_features.csv")
    assert has_spd_features(tmp_path) and not has_spd_features(tmp_path / "Data Sources")
    table, rejects = load_spd_model_table(tmp_path)
    assert len(table) == 11 and rejects.empty
    assert table.set_index("track_id")["popularity"].to_dict() == \
        tracks.set_index("id")["popularity"].astype(float).loc[ids[:11]].to_dict()
    cols = feature_columns(table)
    for c in ("MEL_128", "Chroma_1", "n_words", "artist_popularity", "danceability", "loudness"):
        assert c in cols
    assert table["error"].isna().all() and not table[cols].isna().all().any()
    assert "danceability" not in feature_columns(load_spd_model_table(tmp_path, spotify_descriptors=False)[0])
    assert len(load_source(tmp_path)) == 11


# ------------------------------------------------------------------------------------------ artist split


def artist_table(n: int = 240, artists: int = 40) -> pd.DataFrame:
    table = learnable_table(n)
    table["artist_id"] = [f"a{i % artists}" for i in range(n)]
    return table


def test_artist_split_keeps_every_artist_on_one_side_of_every_cut():
    table = artist_table()
    cfg = replace(QUICK, split="artist")
    s = split_rows(table, cfg)
    sides = [set(part["artist_id"]) for part in (s.fit, s.val, s.calib, s.test)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not sides[i] & sides[j], (i, j)
    assert sum(map(len, (s.fit, s.val, s.calib, s.test))) == len(table)
    assert abs(len(s.test) - cfg.test_size * len(table)) <= len(table) / 40 * 2  # whole artists: about 20 %
    assert split_rows(table, cfg).test["track_id"].tolist() == s.test["track_id"].tolist()  # repeatable
    with pytest.raises(ValueError, match="two artists"):
        split_rows(learnable_table(100), cfg)  # one artist only


def test_artist_grouped_cross_validation_and_the_side_by_side_report(tmp_path, capsys):
    from pipelines import evaluate

    table = artist_table()
    base = replace(QUICK, ae_epochs=2, mlp_epochs=2, split="artist")
    ecfg = EvaluateConfig(configs=("1-B",), baselines=("mean",), n_folds=3, tsne_points=20)
    result = cross_validate(table, base, ecfg)
    assert result.n_test > 0 and set(result.scores["fold"]) == {0, 1, 2}
    path = tmp_path / "table.parquet"
    table.to_parquet(path)
    rc = evaluate.main([str(path), "--out", str(tmp_path / "report"), "--configs", "1-B", "--baselines", "mean,lasso",
                        "--folds", "3", "--epochs", "2", "--split", "both", "--no-mlflow", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["splits"]) == {"stratified", "artist"}
    assert {"1-B", "MLR + Lasso"} <= set(doc["splits"]["artist"])
    text = (tmp_path / "report" / "report.md").read_text()
    assert "artist-grouped" in text and "stratified test MAE" in text and "artist test MAE" in text
    assert (tmp_path / "report" / "artist" / "report.md").read_text().count("whole artists held out") == 1


def test_evaluate_learning_curve_by_data_size(tmp_path, capsys):
    from pipelines import evaluate

    path = tmp_path / "table.parquet"
    learnable_table(300).to_parquet(path)
    rc = evaluate.main([str(path), "--out", str(tmp_path / "report"), "--configs", "1-B", "--baselines", "mean,lasso",
                        "--folds", "3", "--epochs", "2", "--sizes", "100,200,5000", "--no-mlflow", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    # 5000 is more than the table has: skipped; training rows are what is left after the 20 % test rows
    assert sorted(map(int, doc["sizes"])) == [80, 160]
    assert set(doc["sizes"]["160"]) == {"1-B", "Predict the mean", "MLR + Lasso"}
    assert (tmp_path / "report" / "size_curve.png").stat().st_size > 1000
    assert json.loads((tmp_path / "report" / "size_curve.json").read_text()) == doc["sizes"]
