"""Failed rows are retried on resume (issue 16): only error-free rows are done, a failed row is tried again
until it has failed ``max_attempts`` times, each row written records its attempt, and every reader takes a
key's latest attempt (rows in = rows out)."""

from __future__ import annotations

import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from hitmodels import outdir


def test_resume_skips_good_rows_retries_failed_ones_and_gives_up_at_the_bound():
    rows = pd.DataFrame({
        "row_key": ["a", "b", "c", "c", "d", "d", "d", "e", "e"],
        "error": [None, "fetch_failed: timeout", "decode: x", "decode: x", "x", "x", "x", "fetch_failed: t", None],
        "attempt": [1, 1, 1, 2, 1, 2, 3, 1, 2]})
    state = outdir.resume_from(rows, max_attempts=3)
    assert state.done == {"a", "d", "e"} and state.given_up == 1
    assert state.retry == {"b": 2, "c": 3}
    assert state.latest_attempt == {"a": 1, "b": 1, "c": 2, "d": 3, "e": 2}
    assert "2 done, 2 failed retried, 1 failed at their last attempt kept" in state.line()
    assert outdir.resume_from(rows, max_attempts=1).retry == {}  # 1: never retried
    with pytest.raises(ValueError, match="at least 1"):
        outdir.resume_from(rows, max_attempts=0)
    # parts from before attempts were recorded: each row is its key's first attempt
    old = outdir.resume_from(pd.DataFrame({"row_key": ["a", "b"], "error": [None, "x"]}))
    assert old.done == {"a"} and old.retry == {"b": 2}

    last = outdir.latest(rows)
    assert last["row_key"].tolist() == ["a", "b", "c", "d", "e"]
    assert last["attempt"].tolist() == [1, 1, 2, 3, 2] and pd.isna(last.loc[4, "error"])


def test_parts_record_attempts_and_mixed_schemas_read_together(tmp_path):
    fs = pafs.LocalFileSystem()
    # a part from before attempts (and before row keys), then a run retrying one of its rows
    pq.write_table(pa.table({"track_id": ["a", "b"], "error": [None, "fetch_failed: t"]}), tmp_path / "part-old.parquet")
    outdir.write_part(pa.table({"track_id": ["b", "c"], "row_key": ["b", "c"], "error": [None, None]}), fs,
                      str(tmp_path), attempts={"b": 2})
    files = sorted(str(f) for f in tmp_path.glob("*.parquet"))
    raw = outdir.read_parts(fs, files)
    assert len(raw) == 4 and set(raw.columns) >= {"track_id", "row_key", "error", "attempt"}
    assert raw["row_key"].tolist().count("b") == 2  # the old part's key: its track_id
    last = outdir.latest(raw).set_index("row_key")
    assert sorted(last.index) == ["a", "b", "c"] and pd.isna(last.loc["b", "error"])
    assert last.loc["b", "attempt"] == 2 and last.loc["c", "attempt"] == 1
    stale = outdir.stale_rows(fs, files)
    assert stale.to_pylist() == [f"{tmp_path / 'part-old.parquet'}\x1fb"]


@pytest.mark.integration
def test_a_store_read_whole_drops_superseded_attempts(ray_local, tmp_path):
    """What score does with a mel store: Ray reads every part with its path, and each key's stale attempts
    are dropped (the path Ray reports must be the path the driver listed)."""
    import ray

    fs = pafs.LocalFileSystem()
    outdir.write_part(pa.table({"track_id": ["a", "b"], "row_key": ["a", "b"], "error": [None, "x"]}), fs,
                      str(tmp_path))
    outdir.write_part(pa.table({"track_id": ["b"], "row_key": ["b"], "error": [None]}), fs, str(tmp_path),
                      attempts={"b": 2})
    files = sorted(str(f) for f in tmp_path.glob("*.parquet"))
    stale = outdir.stale_rows(fs, files)
    assert len(stale) == 1
    read = ray.data.read_parquet(files, filesystem=fs, columns=["track_id", "row_key", "error"], include_paths=True)
    rows = read.map_batches(outdir.drop_stale, fn_kwargs={"stale": stale}, batch_size=None,
                            batch_format="pyarrow").to_pandas()
    assert sorted(rows["row_key"]) == ["a", "b"] and rows["error"].isna().all() and "path" not in rows


@pytest.mark.integration
def test_extract_retries_failed_rows_on_resume_until_the_bound(ray_local, tiny_catalogue, tmp_path):
    from pipelines import extract

    good = pd.read_parquet(tiny_catalogue["manifest"]).head(3).reset_index(drop=True)
    late, corrupt = tmp_path / "late.wav", tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wave file" * 40)
    manifest = good.copy()
    manifest.loc[1, "audio_uri"] = str(late)  # not there yet: fails, then arrives
    manifest.loc[2, "audio_uri"] = str(corrupt)  # fails every time
    manifest.to_parquet(tmp_path / "m.parquet")
    out = tmp_path / "out"

    def raw():
        return pd.concat([pq.read_table(p).to_pandas() for p in out.glob("*.parquet")], ignore_index=True)

    first = extract.run(tmp_path / "m.parquet", out, batch_size=1, block_size=1, max_attempts=2)
    assert first["ok"] == 1 and sum(first.values()) == 3
    shutil.copy(good.loc[1, "audio_uri"], late)
    second = extract.run(tmp_path / "m.parquet", out, batch_size=1, block_size=1, max_attempts=2)
    assert second["ok"] == 2 and sum(second.values()) == 3
    after_two = raw()
    third = extract.run(tmp_path / "m.parquet", out, batch_size=1, block_size=1, max_attempts=2)
    print(f"manifest rows 3; outcomes {dict(first)} -> {dict(second)} -> {dict(third)}; rows on disk "
          f"{len(after_two)} after the second run, {len(raw())} after the third")
    assert third == second and len(raw()) == len(after_two) == 5  # the corrupt row's 2 attempts, the late one's 2
    history = after_two.groupby("row_key")["attempt"].apply(sorted).to_dict()
    keys = good["track_id"].tolist()
    assert history == {keys[0]: [1], keys[1]: [1, 2], keys[2]: [1, 2]}
    table = extract.read_features(out).set_index("row_key")
    assert len(table) == 3 and pd.isna(table.loc[keys[1], "error"]) and table.loc[keys[1], "attempt"] == 2
    assert isinstance(table.loc[keys[2], "error"], str)
