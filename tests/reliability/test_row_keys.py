"""Rows in = rows out for duplicate and missing track ids (issue 16): each manifest row has its own key, its
own output row, and is found done on resume, however the parts of an interrupted run were lost."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from hitmodels.data import keyed_manifest, row_keys


def test_row_keys_name_duplicates_and_missing_ids():
    keys, errors = row_keys(["a", "b", "a", None, float("nan"), " ", "a"])
    assert keys == ["a", "b", "a#2", "#row4", "#row5", "#row6", "a#3"]
    assert errors[:2] == [None, None] and errors[2] == errors[6] == "duplicate_track_id: 'a' is also manifest row 1"
    assert errors[3] == "missing_track_id: manifest row 4 has no track_id"
    todo, failed = keyed_manifest(pd.DataFrame({"track_id": ["a", None, "a"], "audio_uri": ["x", "y", "z"]}))
    assert todo["row_key"].tolist() == ["a"] and todo["audio_uri"].tolist() == ["x"]
    assert failed["row_key"].tolist() == ["#row2", "a#2"] and failed["track_id"].tolist() == [None, "a"]
    assert failed["audio_uri"].tolist() == ["y", "z"]


def test_generated_row_keys_never_collide_with_real_ids():
    """Real ids that spell a generated key (``a#2``, ``#row2``) get their ``#`` doubled, so every key is
    unique; and a row's key does not change when rows are appended to the manifest."""
    ids = ["a", None, "a", "a#2", "#row2", "a#", "a##2", "a#", "a"]
    keys, errors = row_keys(ids)
    assert keys == ["a", "#row2", "a#2", "a##2", "##row2", "a##", "a####2", "a###2", "a#3"]
    assert len(set(keys)) == len(keys) and errors[3:7] == [None, None, None, None]
    for n in range(1, len(ids)):
        assert row_keys(ids[:n])[0] == keys[:n]
    _, failed = keyed_manifest(pd.DataFrame({"track_id": ["#row2", "#row2"], "audio_uri": ["x", "y"]}))
    assert failed["track_id"].tolist() == ["#row2"]  # a duplicated real id, not a missing one


@pytest.mark.integration
def test_extract_resumes_a_manifest_with_duplicates_without_losing_or_repeating_a_row(ray_local, tiny_catalogue,
                                                                                      tmp_path):
    from pipelines import extract

    good = pd.read_parquet(tiny_catalogue["manifest"]).head(3)
    rows = list(good.itertuples(index=False, name=None))
    a = rows[0]
    manifest = pd.DataFrame(rows + [a, (None, a[1], ""), a], columns=["track_id", "audio_uri", "lyrics"])
    manifest.to_parquet(tmp_path / "m.parquet")
    out = tmp_path / "out"
    first = extract.run(tmp_path / "m.parquet", out, batch_size=1, block_size=1)
    assert first == {"ok": 3, "duplicate_track_id": 2, "missing_track_id": 1}

    # an interrupted run: the part holding the good row of the duplicated id is lost; the rows that only
    # share its id (written by the driver, in another part) are still there
    holding = [p for p in out.glob("*.parquet")
               if pq.read_table(p, columns=["row_key"])["row_key"].to_pylist() == [a[0]]]
    assert len(holding) == 1
    holding[0].unlink()
    again = extract.run(tmp_path / "m.parquet", out, batch_size=1, block_size=1)
    raw = pd.concat([pq.read_table(p).to_pandas() for p in out.glob("*.parquet")], ignore_index=True)
    print(f"manifest rows {len(manifest)}, rows on disk after the resume {len(raw)}, counts {dict(again)}")
    assert again == first and len(raw) == len(manifest) and raw["row_key"].is_unique
    assert raw.loc[raw["row_key"] == a[0], "error"].isna().all()  # the redone row is the track's, not an error

    # the model table keeps one row per manifest row; training only learns from the good ones
    table = extract.read_features(out)
    assert len(table) == len(manifest) and (table["track_id"] == a[0]).sum() == 3


@pytest.mark.integration
def test_a_row_that_kills_its_worker_costs_that_row_only(ray_local, tiny_catalogue, tmp_path):
    """A poison row (here: one whose task exits its worker process, as an out-of-memory kill or a native
    crash would) is retried a bounded number of times, then becomes its own ``worker_died`` error; the
    healthy rows of its batch are written and the job ends."""
    from pipelines import extract

    good = pd.read_parquet(tiny_catalogue["manifest"]).head(6)
    good.to_parquet(tmp_path / "m.parquet")
    poison = good["track_id"].iloc[2]

    def crashing(batch, cfg, policy=None):
        import os

        from pipelines.extract import extract_batch

        if poison in set(batch["track_id"]):
            os._exit(1)  # the worker process dies, as under the OOM killer
        return extract_batch(batch, cfg, policy)

    counts = extract.run(tmp_path / "m.parquet", tmp_path / "out", batch_size=3, block_size=6, batch_task=crashing)
    raw = pd.concat([pq.read_table(p).to_pandas() for p in (tmp_path / "out").glob("*.parquet")], ignore_index=True)
    print(f"rows in 6, rows out {len(raw)}, counts {dict(counts)}")
    assert counts == {"ok": 5, "worker_died": 1} and len(raw) == 6 and raw["row_key"].is_unique
    assert raw.set_index("row_key").loc[poison, "error"].startswith("worker_died: the worker processing this row died")


@pytest.mark.integration
def test_rows_redone_one_by_one_each_come_back_whatever_the_others_do(ray_local):
    """Of three rows redone alone, one kills its worker every time and one raises: each still comes back
    (the healthy row's table, the others as their error), yielded as it finishes so the caller has written
    the healthy one before a failure elsewhere. A row whose storage fails raises instead."""
    import pyarrow as pa

    from hitmodels import isolate

    def task(frame):
        import os

        key = frame["row_key"].iloc[0]
        if key == "dies":
            os._exit(1)
        if key == "raises":
            raise RuntimeError("a defect")
        if key == "outage":
            raise OSError("AWS Error SLOW_DOWN during PutObject operation")
        return pa.table({"row_key": [key], "error": pa.array([None], pa.string())})

    rows = pd.DataFrame({"row_key": ["ok", "dies", "raises"]})
    got = {}
    for table in isolate.redo_one_by_one(rows, task, {}, lambda row, reason: pa.table(
            {"row_key": [row["row_key"].iloc[0]], "error": [reason]}), "test"):
        got.update(zip(table.column("row_key").to_pylist(), table.column("error").to_pylist()))
    print(f"rows redone 3, came back {len(got)}: {got}")
    assert got["ok"] is None and got["dies"].startswith("worker_died:")
    assert got["raises"] == "internal: RuntimeError: a defect"
    # storage failing is not the row's fault: the job fails (a re-run does the row) instead of an error row
    with pytest.raises(OSError, match="SLOW_DOWN"):
        list(isolate.redo_one_by_one(pd.DataFrame({"row_key": ["outage"]}), task, {},
                                     lambda row, reason: pytest.fail(f"an outage became a row error: {reason}"),
                                     "test"))
