"""The tagger on the Siamese family's mel paths: ``hitmusic mels --tags`` stores the activations beside the
segments, and a Siamese model with a tag branch is scored from a tagged store, from an audio manifest and
online with the tags computed from the audio (never imputed), all three agreeing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from hitmodels import features, melstore
from hitmodels.config import MelConfig


@pytest.fixture(scope="module")
def tagged(ray_local, tiny_catalogue, tmp_path_factory):
    """A tagged mel store of the tiny catalogue (the real Ray Data job) and a model table with its tags."""
    from pipelines import mels

    store = tmp_path_factory.mktemp("tagged-mels") / "store"
    counts = mels.run(tiny_catalogue["manifest"], store, tags=True)
    parts = pads.dataset(melstore.MelStore(store).files, format="parquet").to_table().to_pandas()
    names = list(features.tag_names(features.TAGGED))
    truth = pd.read_parquet(tiny_catalogue["truth"])[["track_id", "artist_id", "popularity"]]
    table = truth.merge(parts[["track_id", *names]], on="track_id").assign(error=None)
    path = tmp_path_factory.mktemp("tagged-table") / "table.parquet"
    table.to_parquet(path)
    return store, path, counts, names


def test_tagged_store_holds_the_extractors_tags(tagged, tiny_catalogue, tmp_path):
    store, _, counts, names = tagged
    st = melstore.MelStore(store)
    assert st.tags and counts == {"ok": 48}
    parts = pads.dataset(st.files, format="parquet").to_table().to_pandas().set_index("track_id")
    assert set(names) <= set(parts.columns) and parts[names].notna().all().all()
    # the same decode and the same tagger as hitmusic extract --tags: the same activations
    manifest = pd.read_parquet(tiny_catalogue["manifest"]).head(3)
    rows = features.extract_rows(list(zip(manifest["track_id"], manifest["audio_uri"], [None] * 3)),
                                 features.TAGGED)
    for r in rows:
        np.testing.assert_allclose([r[n] for n in names], parts.loc[r["track_id"], names].to_numpy(float), atol=1e-6)
    # a store never mixes parts with and without tags
    with pytest.raises(ValueError, match="with the tag columns"):
        melstore.record_config(store, MelConfig(), tags=False)
    plain = tmp_path / "plain"
    melstore.record_config(plain, MelConfig())
    with pytest.raises(ValueError, match="without the tag columns"):
        melstore.record_config(plain, MelConfig(), tags=True)
    assert not melstore.MelStore(plain).tags


def test_mel_rows_keep_rows_in_equal_rows_out_with_tags(tiny_catalogue, tmp_path):
    manifest = pd.read_parquet(tiny_catalogue["manifest"]).head(2)
    items = list(zip(manifest["track_id"], manifest["audio_uri"])) + [("gone", str(tmp_path / "gone.wav"))]
    rows = melstore.mel_rows(items, tags=True)
    assert [r["track_id"] for r in rows] == [*manifest["track_id"], "gone"]
    assert rows[2]["error"].startswith("missing") and "tag_guitar" not in rows[2]
    assert all(r["error"] is None and 0 <= r["tag_guitar"] <= 1 and r["mid30"] for r in rows[:2])
    table = melstore.rows_to_table(rows, tags=True)
    assert table.num_rows == 3 and table.column("tag_guitar").null_count == 1


@pytest.mark.integration
def test_siamese_with_tag_branch_scored_from_store_audio_and_serve(tagged, tiny_catalogue, mlflow_uri, serve_port,
                                                                   tmp_path):
    import httpx

    from hitmodels.config import ServeSettings, TrainConfig
    from hitmodels.registry import ModelRef, load_model, promote
    from hitmodels.train import train
    from pipelines import score
    from serve.deploy import deploy

    store, path, _, names = tagged
    name = "siamese-tags"
    cfg = TrainConfig(family="siamese", name="siamese-tags", model_name=name, experiment=name,
                      params={"mels": str(store), "mu": 0.5, "epochs": 2, "sampling": "ab"})
    result = train(pd.read_parquet(path), cfg, mlflow_uri)
    model = load_model(ModelRef(name, result.version), mlflow_uri)
    assert model.columns == ["mel", *names]
    # the tag branch is used: the same segments with the training medians for tags score differently
    ids = pd.read_parquet(path)["track_id"].head(8).tolist()
    segs, found = melstore.MelStore(store).load(ids, model.segment)
    rows = pd.read_parquet(path).set_index("track_id").loc[ids, names].reset_index(drop=True)
    rows.insert(0, "mel", [melstore.encode(s) for s in segs])
    with_tags = model.predict(None, rows)["popularity"].to_numpy()
    imputed = model.predict(None, rows.assign(**{n: np.nan for n in names}))["popularity"].to_numpy()
    assert found.all() and np.abs(with_tags - imputed).max() > 1e-6

    # a store without tags is refused before any work, naming the fix
    untagged = tmp_path / "untagged"
    melstore.record_config(untagged, MelConfig())
    head = pd.read_parquet(tiny_catalogue["manifest"]).head(2)
    pq.write_table(melstore.rows_to_table(melstore.mel_rows(list(zip(head["track_id"], head["audio_uri"])))),
                   untagged / "part-0.parquet")
    with pytest.raises(ValueError, match="mels --tags"):
        score.run(tmp_path / "untagged", tmp_path / "untagged-scores", name, result.version, mlflow_uri)
    score.run(store, tmp_path / "from-store", name, result.version, mlflow_uri)
    from_store = score.read_scores(tmp_path / "from-store").set_index("track_id")
    manifest = pd.read_parquet(tiny_catalogue["manifest"])
    score.run(tiny_catalogue["manifest"], tmp_path / "from-audio", name, result.version, mlflow_uri)
    from_audio = score.read_scores(tmp_path / "from-audio").set_index("track_id")
    assert len(from_store) == len(from_audio) == len(manifest) and from_audio["error"].isna().all()
    np.testing.assert_allclose(from_audio.loc[from_store.index, "popularity"], from_store["popularity"], atol=1e-4)
    np.testing.assert_allclose(from_store.loc[ids, "popularity"], with_tags, atol=1e-4)

    promote(name, result.version, tracking_uri=mlflow_uri)
    url = deploy(ServeSettings(model_name=name, tracking_uri=mlflow_uri, poll_interval_s=60.0), port=serve_port,
                 app_name="siamese-tags", route_prefix="/siamese-tags")
    try:
        for tid, uri in list(zip(manifest["track_id"], manifest["audio_uri"]))[:2]:
            with open(uri, "rb") as f:
                r = httpx.post(f"{url}/predict/audio", files={"file": ("clip.wav", f.read())}, data={"track_id": tid},
                               timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["predictions"][0]["popularity"] == pytest.approx(from_audio.loc[tid, "popularity"],
                                                                             abs=1e-4)
        with open(manifest["audio_uri"][0], "rb") as f:
            r = httpx.post(f"{url}/predict/audio", files={"file": ("clip.wav", f.read())},
                           data={"metadata": '{"tag_guitar": 0.9}'}, timeout=60)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "metadata", "tag_guitar"]
        assert "tagger" in r.json()["detail"][0]["msg"]
    finally:  # each replica holds half a CPU of the 2-CPU test cluster
        from ray import serve

        serve.delete("siamese-tags")


def test_serve_feature_row_of_an_upload_carries_the_batch_tags(tiny_catalogue):
    """/predict/audio of a row model trained on tagged rows: the replica's row equals the extraction's."""
    from serve.app import audio_feature_row

    uri = pd.read_parquet(tiny_catalogue["manifest"])["audio_uri"][0]
    with open(uri, "rb") as f:
        online = audio_feature_row(f.read(), "clip.wav", "", cfg=features.TAGGED)
    batch = features.extract_rows([("t", uri, "")], features.TAGGED)[0]
    names = features.feature_names(features.TAGGED)
    assert set(names) <= set(online) and batch["error"] is None
    np.testing.assert_allclose([online[n] for n in names], [batch[n] for n in names], rtol=1e-6, atol=1e-9)
