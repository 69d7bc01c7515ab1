"""Log-mel segments (Mid-30, HL-30) and the mel store: numbers against librosa, a planted chorus found, the
store's rows in = rows out on a real local Ray with bad input, resuming."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from hitmodels import mel, melstore
from hitmodels.config import MelConfig, SynthConfig
from hitmodels.synth import generate


def test_log_mel_matches_librosa_and_has_323_frames():
    import librosa

    rng = np.random.default_rng(0)
    y = (0.1 * rng.standard_normal(22050 * 30)).astype(np.float32)
    M = mel.log_mel(y, 22050)
    assert M.shape == (128, 323) == (MelConfig().n_mels, MelConfig().n_frames)
    ref = librosa.feature.melspectrogram(y=y, sr=22050, n_fft=4096, hop_length=2048, window="hamming", n_mels=128,
                                         fmin=0.0)
    # the same power within 1e-3 relative (the bound; measured ~1e-6)
    np.testing.assert_allclose(10 ** (M / 10), ref, rtol=1e-3, atol=1e-9)
    with pytest.raises(ValueError, match="22050 Hz"):
        mel.log_mel(y, 44100)


def test_windows_on_hand_made_power():
    M = np.full((4, 20), -100.0, dtype=np.float32)
    M[:, 11:15] = 0.0  # loud frames 11-14
    assert mel.highlight_start(M, 4) == 11
    assert mel.highlight_start(M, 30) == 0  # shorter than the window
    assert mel.mid_start(20, 4) == 8 and mel.mid_start(3, 4) == 0
    seg = mel.take(M, 18, 4)
    assert seg.shape == (4, 4) and (seg[:, 2:] == mel.FLOOR_DB).all() and (seg[:, :2] == -100).all()
    flat = np.zeros((2, 10), np.float32)
    assert mel.highlight_start(flat, 3) == 0  # ties: the earliest


def test_short_clip_both_segments_are_the_clip_padded():
    y = (0.1 * np.random.default_rng(1).standard_normal(22050 * 5)).astype(np.float32)
    row = melstore.segment_row(y, 22050)
    assert row["mid30_start_s"] == row["hl30_start_s"] == 0.0 and row["hl30"] is None
    seg = melstore.decode(row["mid30"])
    assert seg.shape == (128, 323) and seg.dtype == np.float16
    n = 1 + len(y) // 2048
    assert (seg[:, n:] == mel.FLOOR_DB).all() and (seg[:, :n] > mel.FLOOR_DB).any()
    with pytest.raises(ValueError, match="expected 128 x 323"):
        melstore.decode(row["mid30"][:-2])


def test_hl30_finds_the_planted_chorus(tmp_path):
    """Full-length generated tracks: HL-30 starts where one of the two planted choruses starts (within a
    frame and a half, 0.14 s), Mid-30 is the middle, and the two segments differ."""
    paths = generate(tmp_path, SynthConfig(n_tracks=5, full_length=True, seed=11))
    truth = pd.read_parquet(paths["truth"])
    manifest = pd.read_parquet(paths["manifest"])
    cfg = MelConfig()
    for (_, t), uri in zip(truth.iterrows(), manifest["audio_uri"]):
        y, sr = sf.read(uri, dtype="float32")
        assert 120 <= len(y) / sr <= 210
        seg = mel.segments(y, sr, cfg)
        hl_s, mid_s = seg["hl30"][1], seg["mid30"][1]
        planted = np.array([t["chorus_start_s"], t["chorus2_start_s"]])
        assert np.min(np.abs(planted - hl_s)) < 1.5 * cfg.hop_length / cfg.sr, (hl_s, planted)
        assert abs(mid_s + cfg.segment_s / 2 - len(y) / sr / 2) < cfg.hop_length / cfg.sr
        assert not np.array_equal(seg["hl30"][0], seg["mid30"][0])


@pytest.mark.integration
def test_mels_job_rows_in_rows_out_and_resumes(ray_local, tmp_path, tiny_catalogue):
    from pipelines import mels

    good = pd.read_parquet(tiny_catalogue["manifest"]).head(5)
    (tmp_path / "empty.wav").write_bytes(b"")
    bad = pd.DataFrame({"track_id": ["missing", "empty", "nouri"],
                        "audio_uri": [str(tmp_path / "nope.wav"), str(tmp_path / "empty.wav"), None]})
    manifest = tmp_path / "m.parquet"
    pd.concat([good[["track_id", "audio_uri"]], bad]).to_parquet(manifest)
    store_dir = tmp_path / "mels"
    counts = mels.run(manifest, store_dir, block_size=3)
    assert sum(counts.values()) == 8 and counts["ok"] == 5, counts
    store = melstore.MelStore(store_dir)
    idx = store.index().set_index("track_id")
    assert set(idx.index) == set(good["track_id"]) | {"missing", "empty", "nouri"}
    assert idx.loc["missing", "error"].startswith("missing") and idx.loc["empty", "error"]
    ids = [*good["track_id"], "missing", "never-seen"]
    arr, found = store.load(ids, "hl30")
    assert arr.shape == (7, 128, 323) and found.tolist() == [True] * 5 + [False, False]
    # the stored segment is the one computed directly, to float16's precision
    y, sr = sf.read(good["audio_uri"].iloc[0], dtype="float32")
    direct = mel.segments(y, sr)["mid30"][0]
    np.testing.assert_allclose(arr[0].astype(np.float32), direct, atol=0.07)
    # resuming with one attempt allowed: nothing to do, nothing written
    parts = sorted(store_dir.glob("*.parquet"))
    assert mels.run(manifest, store_dir, max_attempts=1) == counts and sorted(store_dir.glob("*.parquet")) == parts
    with pytest.raises(ValueError, match="other settings"):
        mels.run(manifest, store_dir, MelConfig(segment_s=10.0))
    # a part cut short by a killed run: readers skip it and leave it be; the job quarantines it and redoes its rows
    victim = parts[0]
    lost = len(pd.read_parquet(victim))
    victim.write_bytes(victim.read_bytes()[:100])
    assert len(melstore.MelStore(store_dir).index()) == 8 - lost and victim.exists()
    assert mels.run(manifest, store_dir, max_attempts=1) == counts and not victim.exists()
    assert (store_dir / "_quarantine" / victim.name).exists()
    # a default resume retries the 3 failed rows (their second attempt): the same outcomes, one row per key
    again = mels.run(manifest, store_dir)
    index = melstore.MelStore(store_dir).index()
    assert again == counts and len(index) == 8
    assert index.set_index("track_id").loc[["missing", "empty", "nouri"], "attempt"].tolist() == [2, 2, 2]


@pytest.mark.integration
def test_mel_store_on_s3(ray_local, s3_endpoint, tmp_path, tiny_catalogue):
    """The same job into an s3:// prefix of a real S3-compatible server; read back, resumed, attached."""
    import boto3

    from pipelines import mels

    boto3.client("s3").create_bucket(Bucket="mels")
    good = pd.read_parquet(tiny_catalogue["manifest"]).head(4)[["track_id", "audio_uri"]]
    manifest = tmp_path / "m.parquet"
    pd.concat([good, pd.DataFrame({"track_id": ["gone"], "audio_uri": [str(tmp_path / "gone.wav")]})]).to_parquet(manifest)
    counts = mels.run(manifest, "s3://mels/store", block_size=2)
    assert counts["ok"] == 4 and sum(counts.values()) == 5
    assert melstore.is_store("s3://mels/store") and not melstore.is_store("s3://mels/elsewhere")
    store = melstore.MelStore("s3://mels/store")
    arr, found = store.load(list(good["track_id"]) + ["gone"], "mid30")
    assert found.tolist() == [True] * 4 + [False] and arr.shape == (5, 128, 323)
    assert mels.run(manifest, "s3://mels/store") == counts  # resumed: nothing redone, nothing duplicated
    table = good.assign(popularity=50.0)
    joined = melstore.attach(table, "s3://mels/store", "hl30")
    assert len(joined) == 4 and melstore.decode(joined["mel"].iloc[0]).shape == (128, 323)
    with pytest.raises(ValueError, match="4 tracks' hl30 segments are 0.0 GB of float16, over the 1e-06 GB"):
        melstore.attach(table, "s3://mels/store", "hl30", max_gb=1e-6)
