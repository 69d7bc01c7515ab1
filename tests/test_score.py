"""Batch scoring: bad rows kept with reasons, S3 in and out, audio manifests, resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from hitmodels.config import TrainConfig
from hitmodels.registry import ModelRef
from pipelines.score import feature_matrix, output_schema, score_table
from tables import random_table

MODEL = "score-test"


def fussy_predict(X: np.ndarray) -> dict[str, np.ndarray]:
    """Stands in for a model in unit tests: refuses negative inputs, like a real validation error."""
    x = X[:, 0].astype(np.float64)
    if (x < 0).any():
        raise ValueError("negative x")
    return {"popularity": x * 10.0, "class": np.array(["low"] * len(x), dtype=object),
            "popularity_lower": x * 10.0 - 5}


def test_score_table_keeps_every_row_with_a_reason():
    batch = pa.table({"track_id": ["a", "b", "c", "d", "e", "f"], "x": ["1", "-1", "3", None, "1e1", "loud"],
                      "error": [None, None, None, "missing: file not found", None, None]})
    schema = output_schema(["popularity", "class", "popularity_lower"])
    out = score_table(fussy_predict, ["x"], ModelRef("m", "7"), batch, schema).to_pandas()
    assert out["track_id"].tolist() == ["a", "b", "c", "d", "e", "f"]
    assert out["popularity"].tolist()[0] == 10.0 and out["popularity"].tolist()[2] == 30.0
    assert out["popularity"][4] == 100.0 and out["class"][4] == "low"
    assert out["popularity_lower"].tolist()[2] == 25.0
    assert np.isnan(out["popularity"][1]) and "negative x" in out["error"][1] and pd.isna(out["class"][1])
    assert np.isnan(out["popularity"][3]) and out["error"][3] == "features: missing: file not found"
    assert np.isnan(out["popularity"][5]) and out["error"][5] == "value: x is not a number: 'loud'"
    assert (out["model_version"] == "7").all() and out["error"][[0, 2, 4]].isna().all()


def test_feature_matrix_reads_numbers_nulls_and_integers_from_arrow():
    batch = pa.table({"a": pa.array([1, None, 3], pa.int64()), "b": [0.5, float("nan"), None],
                      "c": [True, False, None]})
    X, errors = feature_matrix(batch, ["b", "a", "c"])
    assert X.dtype == np.float32 and X.shape == (3, 3) and errors == [None] * 3
    np.testing.assert_array_equal(X[0], [0.5, 1.0, 1.0])
    assert np.isnan(X[1, :2]).all() and X[1, 2] == 0 and np.isnan(X[2, [0, 2]]).all() and X[2, 1] == 3


@pytest.fixture(scope="module")
def model(mlflow_uri, ray_local):
    from hitmodels.registry import promote
    from hitmodels.train import train

    cfg = TrainConfig(ae_epochs=5, mlp_epochs=5, model_name=MODEL, experiment=MODEL)
    result = train(random_table(4), cfg, mlflow_uri)
    promote(MODEL, result.version, tracking_uri=mlflow_uri)
    return result


@pytest.mark.integration
def test_score_from_s3_to_s3_and_resume(model, s3_endpoint, tmp_path):
    import boto3

    from pipelines import score

    boto3.client("s3").create_bucket(Bucket="catalogue")
    table = random_table(5, n=300)
    table.loc[3, "error"] = "undecodable: bad mp3"
    local = tmp_path / "table.parquet"
    table.to_parquet(local)
    boto3.client("s3").upload_file(str(local), "catalogue", "in/table.parquet")
    ref = score.run("s3://catalogue/in/table.parquet", "s3://catalogue/scores", MODEL, batch_size=64)
    assert ref.version == model.version
    out = score.read_scores("s3://catalogue/scores")
    assert sorted(out["track_id"]) == sorted(table["track_id"])
    assert out.set_index("track_id").loc["t5_3", "error"] == "features: undecodable: bad mp3"
    assert out["popularity"].drop(index=out.index[out["track_id"] == "t5_3"]).between(0, 100).all()

    # resume: a second run into the same output scores nothing new; new rows only get scored once
    more = pd.concat([table, random_table(6, n=20)])
    more.to_parquet(local)
    boto3.client("s3").upload_file(str(local), "catalogue", "in/table.parquet")
    score.run("s3://catalogue/in/table.parquet", "s3://catalogue/scores", MODEL)
    out2 = score.read_scores("s3://catalogue/scores")
    assert len(out2) == 320 and out2["track_id"].is_unique


@pytest.mark.integration
def test_score_resume_quarantines_a_part_cut_short(model, tmp_path, capsys):
    from pipelines import score

    table = random_table(8, n=120)
    path = tmp_path / "table.parquet"
    table.to_parquet(path, row_group_size=40)  # three row groups: three tasks, three part files
    out = tmp_path / "scores"
    score.run(path, out, MODEL, batch_size=40)  # a task per row group
    parts = sorted(out.glob("*.parquet"))
    assert len(parts) >= 2
    lost = set(pd.read_parquet(parts[0])["track_id"])
    parts[0].write_bytes(parts[0].read_bytes()[:100])  # as a crash mid-write would leave it
    score.run(path, out, MODEL, batch_size=40)
    assert "moved to" in capsys.readouterr().err
    assert (out / "_quarantine" / parts[0].name).exists()
    again = score.read_scores(out)
    assert sorted(again["track_id"]) == sorted(table["track_id"])  # rows in = rows out, none twice
    assert again.set_index("track_id").loc[sorted(lost), "popularity"].between(0, 100).all()


@pytest.mark.integration
def test_resume_refuses_to_mix_versions_and_keeps_duplicate_and_missing_ids(model, tmp_path):
    import pyarrow.parquet as pq

    from pipelines import score

    table = random_table(9, n=40)
    table["track_id"] = table["track_id"].astype(object)
    table.loc[5, "track_id"] = None  # keyed by its position: scored once, found done on resume
    table.loc[30, "track_id"] = table.loc[7, "track_id"]  # a duplicate, in another row group: its own row
    path = tmp_path / "table.parquet"
    table.to_parquet(path, row_group_size=10)
    out = tmp_path / "scores"
    score.run(path, out, MODEL)
    first = score.read_scores(out)
    assert len(first) == 40 and first["row_key"].is_unique
    assert set(first["row_key"]) == {*table["track_id"].drop([5, 30]), "#row6", f"{table.loc[7, 'track_id']}#2"}
    # an interrupted run: the part holding the duplicate's row is lost; resuming scores that row alone
    lost = [f for f in out.glob("*.parquet") if "#" in "".join(pq.read_table(f, columns=["row_key"])["row_key"]
                                                             .to_pylist() or [""]) and
            f"{table.loc[7, 'track_id']}#2" in pq.read_table(f, columns=["row_key"])["row_key"].to_pylist()]
    assert len(lost) == 1
    lost[0].unlink()
    score.run(path, out, MODEL)
    again = score.read_scores(out)
    print(f"input rows 40, scored rows after the resume {len(again)}")
    assert len(again) == 40 and again["row_key"].is_unique
    assert set(again["track_id"].dropna()) == set(table["track_id"].dropna())

    # an output begun by another version is not finished with this one
    other = tmp_path / "other"
    other.mkdir()
    pq.write_table(pa.table({"track_id": ["t9_0"], "row_key": ["t9_0"], "model_name": [MODEL],
                             "model_version": ["999"]}),
                   other / "part-0.parquet")
    with pytest.raises(ValueError, match=r"version\(s\) \['999'\].*--version 999"):
        score.run(path, other, MODEL)


@pytest.mark.integration
def test_a_table_with_its_own_row_keys_is_scored_by_them_and_by_each_keys_latest_attempt(model, tmp_path):
    """A resumed extract directory: its first part holds the duplicate's row (``x#2``) and a row that failed
    at attempt 1; its second holds ``x`` and that row's successful attempt 2. Scores follow the table's own
    keys (rebuilt from track_id in part order, ``x#2`` would become ``x`` and score the other row's features),
    and the superseded attempt is not scored at all."""
    import pyarrow.parquet as pq

    from pipelines import score

    base = random_table(11, n=4)
    base["track_id"] = ["x", "x", "y", "y"]
    base["row_key"] = ["x#2", "x", "y", "y"]
    base["attempt"] = np.array([1, 1, 1, 2], dtype=np.int32)
    base["error"] = [None, None, "fetch_failed: timed out", None]
    base["artist_popularity"] = [90.0, 5.0, 50.0, 50.0]  # x#2 scores high, x low: a swap shows
    feats = tmp_path / "features"
    feats.mkdir()
    pq.write_table(pa.Table.from_pandas(base.iloc[[0, 2]], preserve_index=False), feats / "part-a.parquet")
    pq.write_table(pa.Table.from_pandas(base.iloc[[1, 3]], preserve_index=False), feats / "part-b.parquet")
    out = tmp_path / "scores"
    score.run(feats, out, MODEL)
    got = score.read_scores(out).set_index("row_key")
    print(got[["track_id", "popularity", "error"]])
    assert sorted(got.index) == ["x", "x#2", "y"] and len(pd.read_parquet(out)) == 3  # the stale row never scored
    assert got["error"].isna().all()
    assert got.loc["x#2", "popularity"] > got.loc["x", "popularity"]


@pytest.mark.integration
def test_score_csv_with_missing_columns_fails_before_work(model, tmp_path):
    from pipelines import score

    csv = tmp_path / "t.csv"
    random_table(7, n=5)[["track_id", "MEL_1"]].to_csv(csv, index=False)
    with pytest.raises(ValueError, match="lacks feature column"):
        score.run(csv, tmp_path / "out", MODEL)


@pytest.mark.integration
def test_score_audio_manifest_extracts_first(model, tiny_catalogue, tmp_path):
    from pipelines import score

    manifest = pd.read_parquet(tiny_catalogue["manifest"]).head(6)
    manifest.loc[len(manifest)] = ["0000000000000000000bad", str(tmp_path / "gone.wav"), ""]
    manifest["artist_popularity"] = 50.0
    path = tmp_path / "manifest.csv"
    manifest.to_csv(path, index=False)
    score.run(path, tmp_path / "scores", MODEL)
    out = score.read_scores(tmp_path / "scores").set_index("track_id")
    assert len(out) == 7
    assert out.loc["0000000000000000000bad", "error"].startswith("features: missing")
    assert out.drop(index="0000000000000000000bad")["popularity"].between(0, 100).all()

    # the file arrives: a resume scores that row again (its second attempt) and nothing else
    import shutil

    shutil.copy(manifest["audio_uri"].iloc[0], tmp_path / "gone.wav")
    score.run(path, tmp_path / "scores", MODEL)
    again = score.read_scores(tmp_path / "scores").set_index("track_id")
    assert len(again) == 7 and len(list((tmp_path / "scores").glob("*.parquet"))) >= 2
    assert pd.isna(again.loc["0000000000000000000bad", "error"])
    assert again.loc["0000000000000000000bad", "attempt"] == 2
    assert (again.drop(index="0000000000000000000bad")["attempt"] == 1).all()


@pytest.mark.s3
@pytest.mark.integration
def test_a_registry_with_its_artifacts_on_s3_registers_serves_and_scores(ray_local, s3_endpoint, serve_port,
                                                                         tmp_path):
    """An MLflow server whose artifact root is an S3 bucket (moto on loopback): a version registered through
    it lands in the bucket, and batch scoring and a Serve replica load it from there (through the server,
    which proxies the artifacts: the clients need no S3 credentials)."""
    import boto3
    import httpx
    from ray import serve

    from hitmodels.config import ServeSettings
    from hitmodels.registry import promote
    from hitmodels.services import free_port, start_mlflow, stop_process
    from hitmodels.train import train
    from pipelines import score
    from serve.deploy import deploy

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="registry")
    port = free_port()
    proc = start_mlflow(tmp_path / "mlflow", "127.0.0.1", port, artifacts="s3://registry/mlflow")
    uri = f"http://127.0.0.1:{port}"
    app = "s3-registry"
    try:
        version = train(random_table(7), TrainConfig(family="lasso", model_name="s3-model", experiment="s3"),
                        uri).version
        promote("s3-model", version, tracking_uri=uri)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="registry", Prefix="mlflow/")["Contents"]]
        print(f"registered version {version}: {len(keys)} objects under s3://registry/mlflow/")
        assert any(k.endswith("bundle.json") for k in keys) and not (tmp_path / "mlflow" / "artifacts").exists()

        table = random_table(8, n=50)
        table.to_parquet(tmp_path / "table.parquet")
        ref = score.run(tmp_path / "table.parquet", tmp_path / "scores", "s3-model", tracking_uri=uri)
        scores = score.read_scores(tmp_path / "scores")
        assert ref.version == version and len(scores) == 50 and scores["error"].isna().all()

        url = deploy(ServeSettings(model_name="s3-model", tracking_uri=uri), port=serve_port, app_name=app,
                     route_prefix=f"/{app}", replicas=1)
        row = table.drop(columns=["track_id", "artist_id", "popularity", "error"]).iloc[0]
        r = httpx.post(f"{url}/predict", json={"rows": [{k: float(v) for k, v in row.items()}]}, timeout=60)
        assert r.status_code == 200, r.text
        served = r.json()["predictions"][0]["popularity"]
        assert abs(served - scores.set_index("track_id").loc[table["track_id"].iloc[0], "popularity"]) < 1e-6
    finally:
        serve.delete(app)
        stop_process(proc)
