"""Relative paths mean the user's directory, not a Ray worker's (issue 16: ``hitmusic extract m.csv relout``
from another directory wrote into the Ray daemon's working directory and reported an empty summary)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from hitmodels.config import InputPolicy


@pytest.mark.integration
def test_extract_with_relative_manifest_uris_and_out_from_another_directory(ray_local, tiny_catalogue, tmp_path,
                                                                            monkeypatch):
    from pipelines import extract

    job = tmp_path / "job"
    job.mkdir()
    manifest = pd.read_parquet(tiny_catalogue["manifest"]).head(6)
    # audio URIs relative to the manifest's own directory, as a user writes them next to the files
    manifest["audio_uri"] = [os.path.relpath(u, job) for u in manifest["audio_uri"]]
    manifest.to_csv(job / "m.csv", index=False)
    monkeypatch.chdir(tmp_path)  # the driver's directory; the workers were started elsewhere
    policy = InputPolicy.for_manifest(job / "m.csv", roots=(str(tiny_catalogue["root"]),))
    counts = extract.run(Path("job/m.csv"), "relout", policy=policy)
    again = extract.run(Path("job/m.csv"), "relout", policy=policy)
    written = extract.read_features(tmp_path / "relout")
    print(f"6 tracks, relative URIs and OUT, driver in {tmp_path}: {dict(counts)}; re-run {dict(again)}; "
          f"{len(written)} rows in {tmp_path / 'relout'}")
    assert counts == again == {"ok": 6} and len(written) == 6
    assert sorted(written["track_id"]) == sorted(manifest["track_id"])


@pytest.mark.integration
def test_score_of_a_manifest_with_relative_audio_uris_from_another_directory(ray_local, mlflow_uri, tiny_catalogue,
                                                                              tmp_path, monkeypatch):
    from tables import random_table

    from hitmodels.config import TrainConfig
    from hitmodels.train import train
    from pipelines import score

    name = "relative-paths"
    version = train(random_table(4), TrainConfig(family="lasso", name="lasso", model_name=name, experiment=name),
                    mlflow_uri).version
    job = tmp_path / "job"
    job.mkdir()
    manifest = pd.read_parquet(tiny_catalogue["manifest"]).head(4)
    manifest["audio_uri"] = [os.path.relpath(u, job) for u in manifest["audio_uri"]]
    manifest.to_csv(job / "m.csv", index=False)
    monkeypatch.chdir(tmp_path)
    policy = InputPolicy.for_manifest(job / "m.csv", roots=(str(tiny_catalogue["root"]),))
    score.run("job/m.csv", "scores", name, version, mlflow_uri, policy=policy)
    out = score.read_scores(tmp_path / "scores")
    print(f"4 tracks, relative audio_uri, driver in {tmp_path}: {len(out)} rows, errors {out['error'].tolist()}")
    assert len(out) == 4 and out["error"].isna().all() and out["popularity"].between(0, 100).all()
