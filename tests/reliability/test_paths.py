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
