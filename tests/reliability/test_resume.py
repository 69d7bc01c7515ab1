"""A resumed extraction retries the tracks that failed (a transient fetch_failed must not be final) and
readers see one row per track: its error-free attempt if any, else its last failure (issue 16)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest


@pytest.mark.integration
def test_failed_tracks_are_retried_on_resume_and_read_once(ray_local, tiny_catalogue, tmp_path, capsys):
    from pipelines import extract

    manifest = pd.read_parquet(tiny_catalogue["manifest"]).head(5)
    late, gone = tmp_path / "late.wav", tmp_path / "gone.wav"
    rows = pd.concat([manifest, pd.DataFrame({"track_id": ["late", "gone"], "audio_uri": [str(late), str(gone)],
                                              "lyrics": ["", ""]})], ignore_index=True)
    rows.to_parquet(tmp_path / "m.parquet")
    from hitmodels.config import InputPolicy

    policy = InputPolicy.for_manifest(tmp_path / "m.parquet", roots=(str(tiny_catalogue["root"]),))
    first = extract.run(tmp_path / "m.parquet", tmp_path / "out", policy=policy)
    shutil.copy(manifest["audio_uri"][0], late)  # the file arrives (a transient failure ends)
    second = extract.run(tmp_path / "m.parquet", tmp_path / "out", policy=policy)
    err = capsys.readouterr().err
    attempts = extract.outcomes(tmp_path / "out")
    table = extract.read_features(tmp_path / "out").set_index("track_id")
    print(f"7 tracks, 2 missing at first: run 1 {dict(first)}, run 2 {dict(second)}; {len(attempts)} attempts "
          f"written, {len(table)} rows read")
    assert first == {"ok": 5, "missing": 2} and second == {"ok": 6, "missing": 1}
    assert "2 of them failed before and are tried again" in err and "tracks per number of attempts: 1=5, 2=2" in err
    assert len(attempts) == 9 and len(table) == 7  # every attempt kept; one row per track read
    assert pd.isna(table.loc["late", "error"]) and table.loc["gone", "error"].startswith("missing")
    assert extract.done_track_ids(tmp_path / "out") == set(rows["track_id"]) - {"gone"}


def test_latest_takes_the_error_free_attempt_and_keeps_rows_without_an_id():
    from hitmodels.attempts import done_ids, latest

    rows = pd.DataFrame({"track_id": ["a", "b", None, "a", "c", None, "c", "b"],
                         "error": ["fetch_failed: x", None, "missing: y", None, "missing: 1", None, "missing: 2",
                                   "fetch_failed: later"],
                         "value": range(8)})
    out = latest(rows)
    print(f"8 attempts of 3 tracks and 2 rows without an id -> {len(out)} rows")
    assert out["value"].tolist() == [1, 2, 3, 5, 6]  # b's success beats its later failure; c's last failure
    assert out["attempts"].tolist() == [2, 1, 2, 1, 2]
    assert done_ids(rows) == {"a", "b"}
