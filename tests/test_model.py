"""Model shapes, preprocessing without leakage, metrics, request validation, registry aliases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from fastapi import HTTPException

from hitmodels.config import TrainConfig
from hitmodels.evaluate import class_metrics, regression_metrics
from hitmodels.families.hitmusicnet.network import HitMusicNet, MusicAENet, MusicPopNet, ae_sizes, initialise, popnet_sizes
from hitmodels.predict import Preprocessor, popularity_class
from hitmodels.families.hitmusicnet.fit import effective_batch_size
from hitmodels.train import split
from serve.app import validate_rows


@pytest.mark.parametrize("d, delta, expected", [(420, 1 / 5, (420, 210, 140, 84)), (420, 1 / 4, (420, 210, 140, 105)),
                                                (420, 1 / 7, (420, 210, 140, 60))])
def test_autoencoder_sizes_follow_the_paper(d, delta, expected):
    assert ae_sizes(d, delta) == expected
    ae = MusicAENet(d, delta)
    x = torch.randn(5, d)
    assert ae(x).shape == (5, d) and ae.encode(x).shape == (5, expected[-1])


def test_popnet_sizes_and_outputs():
    assert popnet_sizes(84) == (84, 42, 28)
    reg, cls = MusicPopNet(84, 0.5), MusicPopNet(84, 0.5, n_out=3)
    code = torch.randn(7, 84)
    out = reg.eval()(code)
    assert out.shape == (7, 1) and ((out > 0) & (out < 1)).all()
    assert cls(code).shape == (7, 3)
    net = HitMusicNet(50)
    initialise(net, "he_normal")
    assert net(torch.randn(3, 50)).shape == (3, 1)
    with pytest.raises(ValueError, match="unknown initialiser"):
        initialise(net, "zeros")


def test_preprocessor_fits_on_training_rows_only():
    train = pd.DataFrame({"a": [0.0, 10.0, np.nan], "b": [1.0, 1.0, 1.0]})
    test = pd.DataFrame({"a": [1000.0, np.nan], "b": [5.0, np.inf]})
    pre = Preprocessor.fit(train, ["a", "b"])
    assert pre.mins == [0.0, 1.0] and pre.maxs == [10.0, 1.0] and pre.medians == [5.0, 1.0]
    X = pre.transform(test)
    # a test value far outside the training range is not clipped and never changes the scaler
    assert X[0, 0] == pytest.approx(100.0) and X[1, 0] == pytest.approx(0.5)
    assert X[0, 1] == pytest.approx(4.0) and X[1, 1] == 0.0  # constant column: shift only; inf -> median
    assert Preprocessor.from_json(pre.to_json()) == pre
    with pytest.raises(ValueError, match="missing feature column.*b"):
        pre.transform(pd.DataFrame({"a": [1.0]}))


def test_split_is_disjoint_stratified_and_repeatable():
    table = pd.DataFrame({"track_id": [f"t{i}" for i in range(200)],
                          "popularity": np.random.default_rng(0).integers(0, 100, 200)})
    tr, va, te = split(table, 0.2, 0.2, seed=1)
    ids = [set(x["track_id"]) for x in (tr, va, te)]
    assert len(te) == 40 and len(va) == 32 and len(tr) == 128
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert split(table, 0.2, 0.2, seed=1)[2]["track_id"].tolist() == te["track_id"].tolist()
    assert abs(te["popularity"].mean() - table["popularity"].mean()) < 8


def test_effective_batch_size():
    assert effective_batch_size(256, 100_000) == 256
    assert effective_batch_size(256, 128) == 12
    assert effective_batch_size(256, 30) == 8


def test_metrics_against_hand_computed_values():
    m = regression_metrics(np.array([10, 20, 30, 40]), np.array([20, 20, 30, 60]))
    assert m["mae"] == pytest.approx((0.1 + 0 + 0 + 0.2) / 4)
    assert m["mse"] == pytest.approx((0.01 + 0.04) / 4)
    assert m["spearman"] == pytest.approx(0.9486832980505138)
    assert list(popularity_class(np.array([0, 24.9, 25, 64.9, 65, 100]))) == \
        ["low", "low", "medium", "medium", "high", "high"]
    c = class_metrics(np.array([10, 50, 80, 80]), np.array([10, 50, 50, 80]))
    assert c["accuracy"] == 0.75
    # per class F1: low 1, medium 2/3, high 2/3
    assert c["f1_macro"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_validate_rows_names_row_and_field():
    cols = ["a", "b"]
    rows = validate_rows([{"b": 2.5, "a": 1, "track_id": "x"}, {"a": 3.0, "b": 4}], cols)
    assert rows.X.tolist() == [[1.0, 2.5], [3.0, 4.0]] and rows.X.dtype == np.float64
    assert rows.track_ids == ["x", None]
    with pytest.raises(HTTPException) as e:
        validate_rows([{"a": 1, "b": 2}, {"a": float("nan"), "b": True, "c": 1}, {"a": "1"}], cols)
    detail = {tuple(d["loc"]): d["msg"] for d in e.value.detail}
    assert e.value.status_code == 422
    assert "finite" in detail[("body", "rows", 1, "a")]
    assert "number" in detail[("body", "rows", 1, "b")]
    assert detail[("body", "rows", 1, "c")] == "unknown field"
    assert detail[("body", "rows", 2, "b")] == "field required"
    assert not any(loc[2] == 0 for loc in detail if len(loc) > 2)
    with pytest.raises(HTTPException) as e:  # one column, a bool, and an unknown field beside track_id
        validate_rows([{"a": 1}, {"a": True}, {"a": 2, "track_id": "t", "zz": 1}], ["a"])
    assert [(d["loc"][2], d["loc"][3]) for d in e.value.detail] == [(1, "a"), (2, "zz")]
    assert validate_rows([{"a": 7}], ["a"]).X.tolist() == [[7.0]]
    with pytest.raises(HTTPException, match="at most 2"):
        validate_rows([{"a": 1, "b": 1}] * 3, cols, max_rows=2)
    with pytest.raises(HTTPException):
        validate_rows([], cols)


def test_serve_config_file_is_a_valid_serve_deploy_config():
    from pathlib import Path

    from ray.serve.schema import ServeDeploySchema

    cfg = yaml.safe_load((Path(__file__).parents[1] / "serve/config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(cfg) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(cfg)
    app = schema.applications[0]
    assert app.import_path == "serve.app:build_app" and app.args["alias"] == "champion"


@pytest.mark.integration
def test_promote_moves_champion_and_previous(mlflow_uri):
    import mlflow

    from hitmodels.registry import CHAMPION, PREVIOUS, promote, resolve

    client = mlflow.MlflowClient(mlflow_uri)
    name = "promote-test"
    client.create_registered_model(name)
    mlflow.set_experiment("promote-test")
    run = client.create_run(mlflow.get_experiment_by_name("promote-test").experiment_id)
    for _ in range(2):
        client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    promote(name, "1", tracking_uri=mlflow_uri)
    assert resolve(name, CHAMPION, mlflow_uri).version == "1"
    promote(name, "2", tracking_uri=mlflow_uri)
    assert resolve(name, CHAMPION, mlflow_uri).version == "2"
    assert resolve(name, PREVIOUS, mlflow_uri).version == "1"
    with pytest.raises(LookupError, match="no alias"):
        resolve(name, "nonexistent", mlflow_uri)


def test_train_config_defaults_are_the_papers():
    cfg = TrainConfig()
    assert cfg.delta == pytest.approx(0.2) and cfg.batch_size == 256 and cfg.patience == 10


def test_class_loss_weights():
    from hitmodels.families.hitmusicnet.fit import class_loss_weights

    labels = np.array([0, 1, 1, 1, 1, 1])  # no "high" row
    assert class_loss_weights(labels, "none").tolist() == [1.0, 1.0, 1.0]
    # n / (classes present * count): 6 / (2 * 1) and 6 / (2 * 5); the absent class keeps 1
    np.testing.assert_allclose(class_loss_weights(labels, "balanced"), [3.0, 0.6, 1.0])
    with pytest.raises(ValueError, match="balanced"):
        class_loss_weights(labels, "inverse")


def test_resolve_device():
    import torch

    from hitmodels.families.hitmusicnet.fit import resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no GPU"):
            resolve_device("cuda")


def test_predict_array_bf16_is_close_to_fp32_and_precision_is_checked():
    import torch

    from hitmodels.families.hitmusicnet.network import HitMusicNet
    from hitmodels.families.hitmusicnet.model import HitMusicPyfunc, ModelMeta
    from hitmodels.predict import Preprocessor

    torch.manual_seed(0)
    d = 40
    net = HitMusicNet(d, 1 / 4, 0.25, classifier=True).eval()
    pre = Preprocessor([f"f{i}" for i in range(d)], [0.5] * d, [0.0] * d, [1.0] * d)
    meta = ModelMeta(d=d, delta=1 / 4, dropout=0.25, alphas=[1, 1 / 2, 1 / 3], classifier=True,
                     class_scheme="fixed", thresholds=[25.0, 65.0])
    model = HitMusicPyfunc(net, pre, meta)
    X = np.random.default_rng(0).random((300, d))
    exact, fast = model.predict_array(X), model.predict_array(X, precision="bf16", chunk_rows=64)
    shift = np.abs(exact["popularity"] - fast["popularity"])
    assert 0 < shift.max() < 1.0  # points of 0-100; 0 would mean bf16 was never used
    np.testing.assert_allclose(fast["p_low"] + fast["p_medium"] + fast["p_high"], 1.0, atol=1e-5)
    # chunking alone changes only the last float32 bits (BLAS sums in another order for other shapes)
    np.testing.assert_allclose(model.predict_array(X, chunk_rows=7)["popularity"], exact["popularity"], atol=1e-4)
    with pytest.raises(ValueError, match="precision"):
        model.predict_array(X, precision="fp8")
