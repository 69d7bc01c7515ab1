"""The batched torch extractor (hitmodels.audio_torch) against the NumPy path and the naive librosa reference,
and the extraction job's torch path against its CPU path. Torch runs on the CPU here, as in CI."""

from __future__ import annotations

import re

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from hitmodels import audio, audio_torch, features
from hitmodels.config import FeatureConfig
from pipelines import extract

from test_features import PREVIEWS, _music

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as the benchmark and the CPU actor run it: the suite's 2 cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _worst(ours: dict, ref: dict, n: int = 5) -> list:
    dev = audio.summary_deviations(ours, ref)
    return [(k, dev[k], ours[k], ref[k]) for k in sorted(dev, key=dev.get, reverse=True)[:n]]


@pytest.fixture(scope="module")
def real_batch(shared_dir) -> tuple[list[np.ndarray], list[dict]]:
    """The four real previews (lengths differ by a sample) as one torch batch, computed once."""
    cfg = FeatureConfig()
    clips = []
    for name in PREVIEWS:
        y, sr = audio.load(str(shared_dir / "data/audio" / name), FeatureConfig(sr=None))  # Spotify's own rate
        assert sr == 44100
        clips.append(y)
    return clips, audio_torch.audio_features_batch(clips, 44100, cfg, CPU)


@pytest.mark.parametrize("i", range(len(PREVIEWS)), ids=PREVIEWS)
def test_torch_batch_matches_numpy_and_librosa_on_real_audio(real_batch, i):
    """Every summary statistic of each clip of the batch: against the naive librosa reference within the
    issue's 1e-3 (measured as tests/test_features.py does), and against the NumPy path much closer."""
    cfg = FeatureConfig()
    clips, batch = real_batch
    ours = batch[i]
    assert list(ours) == audio.audio_feature_names(cfg)
    worst = _worst(ours, audio.reference_audio_features(clips[i], 44100, cfg))
    assert worst[0][1] <= 1e-3, worst
    worst = _worst(ours, audio.audio_features(clips[i], 44100, cfg))
    assert worst[0][1] <= 1e-4, worst


def _clips(sr: int) -> list[np.ndarray]:
    """Generated clips of four lengths (one just at the 1 s minimum, one odd) and four tunings; one opens
    with digital silence (all-zero frames)."""
    specs = [(1.0, 0.0), (2.3, -0.4), (3.7, 0.45), (2.0001, 0.2)]
    clips = [_music(sr, seconds=s, seed=i, detune=d).astype(np.float32) for i, (s, d) in enumerate(specs)]
    clips[1][:3000] = 0.0
    return clips


def test_batch_of_different_lengths_matches_each_clip_alone():
    """Padded to the longest and masked: each clip's frames are those of the NumPy path for that clip alone,
    NaN after its own last frame; roll-off is the same bins exactly (the same float32 running sum)."""
    sr, cfg = 22050, FeatureConfig()
    clips = _clips(sr)
    y = torch.zeros(len(clips), max(map(len, clips)))
    for i, c in enumerate(clips):
        y[i, : len(c)] = torch.from_numpy(c)
    frames = audio_torch.frame_features_batch(y, sr, cfg, lengths=[len(c) for c in clips])
    assert list(frames) == [name for name, _ in audio._feature_dims(cfg)]
    for i, c in enumerate(clips):
        refs = audio.frame_features(c, sr, cfg)
        for name, ref in refs.items():
            got = frames[name][i].numpy()
            n = ref.shape[1]
            assert got.shape[0] == ref.shape[0] and np.isnan(got[:, n:]).all(), (i, name)
            assert np.abs(got[:, :n] - ref).max() <= 1e-4 * np.abs(ref).max(), (i, name)
        rolloff = refs["spectral_rollOff"]
        np.testing.assert_array_equal(frames["spectral_rollOff"][i, :, : rolloff.shape[1]].numpy(), rolloff)


def test_batch_statistics_match_numpy_and_librosa_on_generated_clips():
    sr, cfg = 22050, FeatureConfig()
    clips = _clips(sr)
    batch = audio_torch.audio_features_batch(clips, sr, cfg, CPU)
    for c, ours in zip(clips, batch):
        assert list(ours) == audio.audio_feature_names(cfg)
        worst = _worst(ours, audio.audio_features(c, sr, cfg))
        assert worst[0][1] <= 1e-4, worst
    worst = _worst(batch[2], audio.reference_audio_features(clips[2], sr, cfg))  # one is enough: slow
    assert worst[0][1] <= 1e-3, worst


def test_a_clip_gives_the_same_statistics_alone_and_in_a_batch(monkeypatch):
    """Padding must not leak into a clip's statistics; and clips whose CQT plans differ (split here by
    force) are computed in groups and merged back in order."""
    sr, cfg = 22050, FeatureConfig()
    clips = _clips(sr)[:3]
    alone = [audio_torch.audio_features_batch([c], sr, cfg, CPU)[0] for c in clips]
    monkeypatch.setattr(audio_torch, "_cqt_groups", lambda plans: {i: [i] for i in range(len(plans))})
    grouped = audio_torch.audio_features_batch(clips, sr, cfg, CPU)
    for a, b in zip(alone, grouped):
        assert list(a) == list(b)
        np.testing.assert_allclose([b[k] for k in a], [a[k] for k in a], rtol=1e-5, atol=1e-6)


def test_other_configs_follow_the_numpy_path():
    sr, cfg = 16000, FeatureConfig(n_mfcc=20, n_mels=64, n_fft=1024, hop_length=256, window="hann")
    clip = _music(sr, seconds=1.5).astype(np.float32)
    ours = audio_torch.audio_features_batch([clip], sr, cfg, CPU)[0]
    assert list(ours) == audio.audio_feature_names(cfg)
    worst = _worst(ours, audio.audio_features(clip, sr, cfg))
    assert worst[0][1] <= 1e-4, worst


def test_full_float32_restores_the_callers_settings():
    torch.set_float32_matmul_precision("high")
    try:
        with audio_torch.full_float32():
            assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision("highest")


# ---- the extraction job's torch path -------------------------------------------------------------------------


def _bad_and_good(tmp_path) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "garbage.mp3").write_bytes(b"ID3 but not really an mp3 " * 64)
    sf.write(tmp_path / "short.wav", (0.1 * rng.standard_normal(6000)).astype(np.float32), 22050)  # 0.27 s
    sf.write(tmp_path / "silent.wav", np.zeros(2 * 22050, dtype=np.float32), 22050)
    for i, (seconds, sr) in enumerate([(2.0, 22050), (1.3, 22050), (1.5, 16000)]):  # two rates: two batches
        sf.write(tmp_path / f"good{i}.wav", _music(sr, seconds=seconds, seed=i), sr)
    rows = [("t-missing", str(tmp_path / "nope.wav"), "la la"), ("t-no-uri", None, "la"),
            ("t-empty", str(tmp_path / "empty.wav"), None), ("t-undecodable", str(tmp_path / "garbage.mp3"), ""),
            ("t-good0", str(tmp_path / "good0.wav"), "la la la\nsing along"),
            ("t-too-short", str(tmp_path / "short.wav"), "x"), ("t-silent", str(tmp_path / "silent.wav"), "y"),
            ("t-good1", str(tmp_path / "good1.wav"), None), ("t-good2", str(tmp_path / "good2.wav"), "te quiero")]
    return pd.DataFrame(rows, columns=["track_id", "audio_uri", "lyrics"])


def _errors(table: pd.DataFrame) -> list[str]:
    # libsndfile's message names the BytesIO object by address
    return [re.sub(r" at 0x[0-9a-f]+", "", e) if isinstance(e, str) else "ok" for e in table["error"]]


def _torch_rows(batch: pd.DataFrame, cfg: FeatureConfig) -> pd.DataFrame:
    decoded = extract.decode_batch(batch, cfg).to_pandas()
    return extract.TorchFeatures(cfg, "cpu")(decoded).to_pandas()


def test_torch_path_rows_match_cpu_path_rows_with_bad_input(tmp_path):
    """decode_batch + TorchFeatures (what the job's torch path runs) against extract_batch (its CPU path):
    rows in = rows out, in order, the same errors, the same columns, features within the parity budget."""
    cfg = FeatureConfig()
    batch = _bad_and_good(tmp_path)
    cpu, tor = extract.extract_batch(batch, cfg).to_pandas(), _torch_rows(batch, cfg)
    assert list(tor.columns) == features.output_schema(cfg).names
    assert tor["track_id"].tolist() == cpu["track_id"].tolist() == batch["track_id"].tolist()
    assert _errors(tor) == _errors(cpu)
    assert [features.error_reason(None if e == "ok" else e) for e in _errors(tor)] == [
        "missing", "missing", "empty", "undecodable", "ok", "too_short", "silent", "ok", "ok"]
    names = list(features.feature_names(cfg))
    assert tor.loc[tor["error"].notna(), names].isna().all().all()
    for i in np.flatnonzero(cpu["error"].isna()):
        worst = _worst(tor.loc[i, names].to_dict(), cpu.loc[i, names].to_dict())
        assert worst[0][1] <= 1e-4, worst


def test_a_failing_torch_batch_is_redone_per_clip_on_the_numpy_path(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    cfg = FeatureConfig()
    batch = _bad_and_good(tmp_path)
    monkeypatch.setattr(audio_torch, "audio_features_batch", broken)
    tor = _torch_rows(batch, cfg)
    cpu = extract.extract_batch(batch, cfg).to_pandas()
    assert _errors(tor) == _errors(cpu)
    names = list(features.feature_names(cfg))
    pd.testing.assert_frame_equal(tor[names], cpu[names])  # the very same computation


def test_device_option_picks_the_path():
    assert not extract.use_torch("auto", 0) and extract.use_torch("auto", 1) and extract.use_torch("auto", 8.0)
    assert not extract.use_torch("cpu", 4) and extract.use_torch("torch", 0)
    with pytest.raises(ValueError):
        extract.use_torch("cuda", 1)
    import argparse

    p = argparse.ArgumentParser()
    extract.add_arguments(p)
    args = p.parse_args(["m.parquet", "out"])
    assert args.device == "auto" and args.torch_batch_size == 16
    assert p.parse_args(["m.parquet", "out", "--device", "torch"]).device == "torch"


@pytest.mark.integration
def test_job_with_torch_forced_on_cpu_gives_the_cpu_paths_rows(ray_local, tmp_path, capsys):
    """The whole job on the real local Ray (no GPU): --device torch runs decode tasks and a CPU torch actor;
    its rows are the CPU path's, bad input included."""
    cfg = FeatureConfig()
    batch = _bad_and_good(tmp_path)
    manifest = tmp_path / "manifest.parquet"
    batch.to_parquet(manifest)
    counts = extract.run(manifest, tmp_path / "out", batch_size=2, block_size=4, device="torch", torch_batch_size=3)
    assert counts == {"ok": 3, "missing": 2, "empty": 1, "undecodable": 1, "too_short": 1, "silent": 1}
    assert "audio features with torch, 1 actor(s) on the CPU" in capsys.readouterr().err
    got = extract.read_features(tmp_path / "out").set_index("track_id").loc[batch["track_id"]]
    cpu = extract.extract_batch(batch, cfg).to_pandas().set_index("track_id")
    assert _errors(got) == _errors(cpu)
    names = list(features.feature_names(cfg))
    for t in cpu.index[cpu["error"].isna()]:
        worst = _worst(got.loc[t, names].to_dict(), cpu.loc[t, names].to_dict())
        assert worst[0][1] <= 1e-4, worst


def test_tags_on_both_paths_with_bad_input(tmp_path):
    """--tags: the CPU path (extract_batch) and the torch path give the same rows, errors and tag columns,
    and a clip's tags are the tagger's on the clip resampled from its native rate to 16 kHz."""
    from hitmodels import tagger

    cfg = FeatureConfig(tags=True)
    batch = _bad_and_good(tmp_path)
    cpu, tor = extract.extract_batch(batch, cfg).to_pandas(), _torch_rows(batch, cfg)
    tag_cols = list(features.tag_names(cfg))
    assert len(tag_cols) == 50 and tag_cols[21] == "tag_no_vocals"
    assert list(cpu.columns) == list(tor.columns) == features.output_schema(cfg).names
    assert list(cpu.columns)[-50:] == tag_cols
    assert _errors(tor) == _errors(cpu) == _errors(extract.extract_batch(batch, FeatureConfig()).to_pandas())
    ok = cpu["error"].isna().to_numpy()
    assert ok.sum() == 3
    assert cpu.loc[~ok, tag_cols].isna().all().all() and tor.loc[~ok, tag_cols].isna().all().all()
    np.testing.assert_allclose(tor.loc[ok, tag_cols].to_numpy(float), cpu.loc[ok, tag_cols].to_numpy(float),
                               atol=1e-5)
    t = tagger.shared("cpu")
    for i in np.flatnonzero(ok):
        y, sr = audio.decode(Path(batch.at[i, "audio_uri"]).read_bytes(), 16000)
        np.testing.assert_allclose(cpu.loc[i, tag_cols].to_numpy(float), t.tag(y, sr), atol=1e-6)
    # the other columns are what extraction without tags gives
    plain = extract.extract_batch(batch, FeatureConfig()).to_pandas()
    cols = [c for c in plain.columns if c != "error"]
    pd.testing.assert_frame_equal(cpu[cols], plain[cols])


def test_a_failing_tagger_costs_only_its_rows(tmp_path, monkeypatch):
    from hitmodels import tagger

    cfg = FeatureConfig(tags=True)
    batch = _bad_and_good(tmp_path)
    real = tagger.tag_clips

    def flaky(clips, sr, device="cpu"):
        if any(len(y) == int(1.3 * 16000) for y in clips):  # good1 lasts 1.3 s
            raise RuntimeError("out of memory (simulated)")
        return real(clips, sr, device)

    monkeypatch.setattr(tagger, "tag_clips", flaky)
    rows = extract.extract_batch(batch, cfg).to_pandas().set_index("track_id")
    assert rows.loc["t-good1", "error"].startswith("internal: tagger: RuntimeError: out of memory")
    assert rows.loc["t-good1", list(features.feature_names(cfg))].isna().all()
    assert rows.loc[["t-good0", "t-good2"], "error"].isna().all()


@pytest.mark.integration
def test_job_with_tags_records_them_and_refuses_to_mix(ray_local, tmp_path):
    batch = _bad_and_good(tmp_path)
    manifest = tmp_path / "manifest.parquet"
    batch.to_parquet(manifest)
    counts = extract.run(manifest, tmp_path / "out", FeatureConfig(tags=True), batch_size=3, block_size=4)
    assert counts == {"ok": 3, "missing": 2, "empty": 1, "undecodable": 1, "too_short": 1, "silent": 1}
    got = extract.read_features(tmp_path / "out")
    assert len(got) == len(batch) and got.attrs["feature_config"]["tags"] is True
    ok = got[got["error"].isna()]
    assert np.isfinite(ok[list(features.tag_names(FeatureConfig(tags=True)))].to_numpy(float)).all()
    with pytest.raises(ValueError, match="other settings.*tags"):
        extract.run(manifest, tmp_path / "out", FeatureConfig(tags=False))
