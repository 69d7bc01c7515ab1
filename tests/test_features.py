"""Decoding the real previews, feature parity with plain librosa calls, bad input, lyric features."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf

from hitmodels import audio, features, lyrics
from hitmodels.config import FeatureConfig

PREVIEWS = ["edm.mp3", "rap.mp3", "rock.mp3", "soul.mp3"]


@pytest.mark.parametrize("name", PREVIEWS)
def test_real_preview_decodes_at_native_rate(shared_dir, name):
    y, sr = audio.load(str(shared_dir / "data/audio" / name), FeatureConfig(sr=None))
    assert sr == 44100
    assert 29.0 < len(y) / sr < 31.5
    # MP3 decoders overshoot full scale slightly on loud masters, hence 2 rather than 1
    assert y.dtype == np.float32 and np.isfinite(y).all() and 0.05 < np.abs(y).max() < 2.0


@pytest.mark.parametrize("name", PREVIEWS)
def test_every_statistic_matches_naive_librosa_on_real_audio(shared_dir, name):
    """Each of the summary statistics against the one-librosa-call-per-feature way (the paper's code)."""
    cfg = FeatureConfig()
    y, sr = audio.load(str(shared_dir / "data/audio" / name))
    ours = audio.audio_features(y, sr, cfg)
    ref = audio.reference_audio_features(y, sr, cfg)
    assert list(ours) == list(ref) == audio.audio_feature_names(cfg)
    dev = audio.summary_deviations(ours, ref)
    worst = sorted(dev, key=dev.get, reverse=True)[:5]
    assert dev[worst[0]] <= 1e-3, [(k, dev[k], ours[k], ref[k]) for k in worst]
    # the reference itself is plain librosa: spot-check two columns by hand
    kw = dict(n_fft=cfg.n_fft, hop_length=cfg.hop_length, window=cfg.window)
    # (float32 sums in another order: 1e-6 apart at 22,050 Hz)
    assert ref["spectral_centroid"] == pytest.approx(float(librosa.feature.spectral_centroid(y=y, sr=sr, **kw).mean()),
                                                     rel=1e-5)
    assert ref["Chroma_1"] == pytest.approx(float(librosa.feature.chroma_cqt(y=y, sr=sr).mean(axis=1)[0]), rel=1e-5)


def test_feature_row_has_every_column_in_order(shared_dir):
    row = features.extract_row("t", str(shared_dir / "data/audio/soul.mp3"), "la la la\nsing along")
    assert row["error"] is None
    names = features.feature_names(FeatureConfig())
    assert [k for k in row if k not in ("track_id", "error")] == list(names)
    assert {"MEL_128", "MFCC_48", "Chroma_12", "Chroma_1_std", "Tonnetz_6", "Tonnetz_6_std",
            "Spectral_contrast_7", "ZCR", "entropy_energy", "spectral_bandwith", "spectral_centroid",
            "spectral_rollOff_max", "spectral_rollOff_min", "MEL_1_std", "n_words", "vocabulary_wealth"} <= set(names)
    assert all(np.isfinite(row[n]) for n in names)


def _write(path, y, sr=22050):
    sf.write(path, y, sr)
    return str(path)


def _bytes(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("case, reason", [("missing", "missing"), ("empty", "empty"), ("garbage", "undecodable"),
                                          ("short", "too_short"), ("silent", "silent")])
def test_bad_audio_gives_reason_and_null_features(tmp_path, case, reason):
    uri = {
        "missing": lambda: str(tmp_path / "nope.wav"),
        "empty": lambda: _bytes(tmp_path / "e.wav", b""),
        "garbage": lambda: _bytes(tmp_path / "g.mp3", b"not audio at all" * 100),
        "short": lambda: _write(tmp_path / "s.wav", np.random.default_rng(0).standard_normal(2000) * 0.1),
        "silent": lambda: _write(tmp_path / "z.wav", np.zeros(22050 * 2)),
    }[case]()
    row = features.extract_row("t1", uri, "some words here")
    assert features.error_reason(row["error"]) == reason
    assert all(row[n] is None for n in features.feature_names(FeatureConfig()))
    table = features.rows_to_table([row])
    assert table.num_rows == 1 and table.schema == features.output_schema()


def test_energy_entropy_bounds():
    sr, n_blocks = 22050, 10
    noise = np.random.default_rng(0).standard_normal(sr).astype(np.float32)
    ee = audio.energy_entropy(noise, 2048, 512, n_blocks)
    assert ee.shape == (1 + sr // 512,)
    # stationary noise spreads energy evenly: close to the maximum log2(n_blocks)
    assert np.median(ee) == pytest.approx(np.log2(n_blocks), abs=0.1)
    click = np.zeros(sr, dtype=np.float32)
    click[sr // 2] = 1.0
    assert audio.energy_entropy(click, 2048, 512, n_blocks).min() < 0.01  # one block holds all the energy


def test_energy_entropy_matches_framewise_definition():
    y = _music(22050, seconds=2.0)
    y[:5000] = 0.0  # digital silence must stay exactly 0 bits, not rounding noise
    fast = audio.energy_entropy(y, 2048, 512, 10)
    np.testing.assert_allclose(fast, audio._energy_entropy_framewise(y, 2048, 512, 10), rtol=1e-9, atol=1e-9)
    assert fast[2] == 0.0


def _music(sr: int, seconds: float = 3.0, seed: int = 1, detune: float = 0.3) -> np.ndarray:
    from hitmodels.synth import synth_audio

    return synth_audio(np.random.default_rng(seed), seconds, sr, brightness=0.6, noisiness=0.3, tempo=120,
                       root_hz=220 * 2 ** (detune / 12))


@pytest.mark.parametrize("sr", [22050, 44100])
def test_cqt_matches_librosa(sr):
    y = _music(sr)
    for tuning in (0.0, -0.37):
        ref = np.abs(librosa.cqt(y, sr=sr, hop_length=512, n_bins=252, bins_per_octave=36, tuning=tuning))
        ours = audio.cqt_magnitude(y, sr, 512, n_bins=252, bins_per_octave=36, tuning=tuning)
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() <= 1e-5 * ref.max()
        loud = ref > 1e-3 * ref.max()  # float32 products: bins 60 dB down carry ~1e-4 relative error
        assert (np.abs(ours - ref)[loud] / ref[loud]).max() < 1e-3


def test_cqt_matches_librosa_for_other_hops_and_partial_octaves():
    y = _music(22050, seconds=2.0)
    for hop, n_bins, bpo in [(256, 84, 12), (384, 100, 24), (500, 60, 12)]:
        ref = np.abs(librosa.cqt(y, sr=22050, hop_length=hop, n_bins=n_bins, bins_per_octave=bpo, tuning=0.1))
        ours = audio.cqt_magnitude(y, 22050, hop, n_bins=n_bins, bins_per_octave=bpo, tuning=0.1)
        assert ours.shape == ref.shape and np.abs(ours - ref).max() <= 1e-5 * ref.max(), hop


@pytest.mark.parametrize("detune", [-0.4, -0.1, 0.0, 0.23, 0.45])
def test_tuning_matches_librosa(detune):
    y = _music(22050, detune=detune, seed=int(100 * detune) % 7)
    S = audio.stft_magnitude(audio.frame(y, 2048, 512), "hann")
    assert audio.estimate_tuning(S, 22050, bins_per_octave=36) == pytest.approx(
        librosa.estimate_tuning(y=y, sr=22050, bins_per_octave=36), abs=1e-9)


def test_spectral_features_match_librosa_on_the_same_spectrogram():
    sr = 44100
    y = _music(sr, seconds=2.0)
    y[:3000] = 0.0  # all-zero frames: centroid, bandwidth and roll-off are 0 there, as in librosa
    S = audio.magnitude_spectrogram(y, FeatureConfig())
    freqs = librosa.fft_frequencies(sr=sr, n_fft=2048)
    centroid, bandwidth = audio.spectral_centroid_bandwidth(S, freqs)
    np.testing.assert_allclose(centroid, librosa.feature.spectral_centroid(S=S, sr=sr), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bandwidth, librosa.feature.spectral_bandwidth(S=S, sr=sr), rtol=1e-4, atol=1e-3)
    # the same float32 running sum and threshold: the same bins, exactly
    np.testing.assert_array_equal(audio.spectral_rolloff(S, freqs, 0.85),
                                  librosa.feature.spectral_rolloff(S=S, sr=sr, roll_percent=0.85))
    np.testing.assert_allclose(audio.spectral_contrast(S, sr), librosa.feature.spectral_contrast(S=S, sr=sr),
                               rtol=1e-5, atol=1e-4)
    M = audio.mel_power(S, sr, FeatureConfig())
    np.testing.assert_allclose(M, librosa.feature.melspectrogram(S=S**2, sr=sr, n_mels=128, fmin=50.0, fmax=sr / 2),
                               rtol=1e-4, atol=1e-9 * M.max())


def test_zero_crossing_rate_is_librosa_exactly():
    rng = np.random.default_rng(0)
    y = rng.standard_normal(30000).astype(np.float32)
    y[:2000] = 1e-10  # at the threshold: counts as zero
    y[2000:2600] = -1e-10
    y[5000:5100] = -0.0
    y[rng.integers(0, len(y), 300)] = 0.0
    for frame_length, hop in [(2048, 512), (1024, 256), (512, 100)]:
        np.testing.assert_array_equal(audio.zero_crossing_rate(y, frame_length, hop),
                                      librosa.feature.zero_crossing_rate(y, frame_length=frame_length,
                                                                         hop_length=hop))


@pytest.mark.parametrize("hop", [1, 4, 100, 256, 1024])
def test_framed_dot_equals_product_with_explicit_frames(hop):
    rng = np.random.default_rng(hop)
    x = rng.standard_normal(9000).astype(np.float32)
    W = rng.standard_normal((1024, 10)).astype(np.float32)
    n_frames = 1 + (len(x) - 1024) // hop
    frames = librosa.util.frame(x, frame_length=1024, hop_length=hop).T
    np.testing.assert_allclose(audio.framed_dot(x, W, hop, n_frames), frames @ W, rtol=1e-4, atol=1e-3)


def test_one_clip_costs_two_stfts_and_one_cqt(monkeypatch):
    """The spectral features share one STFT, chroma and tonnetz share one CQT; the second STFT (Hann) is the
    tuning estimate that librosa's chroma_cqt makes too."""
    calls = {"stft": 0, "cqt": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(audio, "stft_magnitude", counting("stft", audio.stft_magnitude))
    monkeypatch.setattr(audio, "cqt_magnitude", counting("cqt", audio.cqt_magnitude))
    frames = audio.frame_features(_music(22050, seconds=2.0), 22050, FeatureConfig())
    assert calls == {"stft": 2, "cqt": 1}
    np.testing.assert_allclose(frames["Tonnetz"], librosa.feature.tonnetz(chroma=frames["Chroma"]))
    assert {k: v.shape[0] for k, v in frames.items()} == dict(audio._feature_dims(FeatureConfig()))


def test_feature_names_follow_the_config():
    cfg = FeatureConfig(n_mfcc=20, n_mels=64)
    names = audio.audio_feature_names(cfg)
    assert names == list(audio.audio_features(_music(22050, seconds=1.5), 22050, cfg))
    assert "MFCC_20_std" in names and "MFCC_21" not in names and "MEL_64" in names and "MEL_65" not in names
    # mean + std of MEL, MFCC, chroma, tonnetz, contrast, centroid, bandwidth, ZCR, entropy; roll-off min, max,
    # mean, std
    assert len(names) == 2 * (64 + 20 + 12 + 6 + 7 + 4) + 4


def test_lyric_features_hand_checked_english():
    text = "I love you\nI love you\nYou are the sun tonight"
    f = lyrics.lyric_features(text, lang="en")
    assert f["n_sentences"] == 3 and f["n_words"] == 11
    assert f["mean_words_sentence"] == pytest.approx(11 / 3)
    # pairs (1,2) identical, (1,3) and (2,3) share only 'you': 1 of 3 pairs at >= 0.75
    assert f["sentence_similarity"] == pytest.approx(1 / 3)
    # non-stop words: love, love, sun, tonight -> 'love' (2) + 'sun' (1) reach 85 % of 4? 3/4 < 0.85,
    # so 3 distinct words are needed: 3 / 4
    assert f["vocabulary_wealth"] == pytest.approx(3 / 4)
    assert f["mean_syllables_word"] == pytest.approx(12 / 11)  # to-night is the only 2-syllable word


def test_lyric_features_spanish_uses_spanish_stopwords_and_syllables():
    text = "Te quiero mucho mi corazón\nBailando en la noche contigo"
    assert lyrics.detect_language(text) == "es"
    f = lyrics.lyric_features(text)
    assert f["n_words"] == 10 and f["n_sentences"] == 2
    assert lyrics.syllables("corazón", "es") == 3
    assert f["mean_syllables_word"] > 1.5


@pytest.mark.parametrize("lang, counts", [
    # hand-checked against a dictionary's syllabification; pyphen's hyphenation points alone gave 1 for
    # baby, about, alone, every, forever (English), amor, ella (Spanish)
    ("en", {"baby": 2, "about": 2, "alone": 2, "every": 3, "forever": 3, "love": 1, "beautiful": 3, "heart": 1,
            "tonight": 2, "little": 2, "the": 1, "you": 1, "are": 1, "free": 1}),
    ("es", {"amor": 2, "ella": 2, "corazón": 3, "quiero": 2, "noche": 2, "bailando": 3}),
    ("pt", {"saudade": 3, "coração": 3, "amor": 2}),
    ("de", {"liebe": 2, "schön": 1, "zusammen": 3, "herz": 1}),
    ("ru", {"любовь": 2, "сердце": 2, "ночь": 1}),  # Cyrillic: pyphen's Russian hyphenation
])
def test_syllables_hand_checked(lang, counts):
    assert {w: lyrics.syllables(w, lang) for w in counts} == counts


@pytest.mark.parametrize("text", ["", None, "   \r\n\r\n  ", "123 456 !!!"])
def test_lyric_features_missing_convention(text):
    assert lyrics.lyric_features(text) == {k: -1.0 for k in lyrics.FEATURE_NAMES}


def test_first_call_waits_for_the_compile_lock_and_later_calls_do_not(tmp_path, monkeypatch):
    """Extraction workers compile librosa's cached gufuncs one at a time (numba writes their cache files
    non-atomically; concurrent compiles left a crashing cache): the first call of a guarded function waits
    while another process holds the lock, later calls never touch it."""
    import fcntl
    import threading

    monkeypatch.setattr(audio.tempfile, "gettempdir", lambda: str(tmp_path))
    calls = []

    @audio.compile_serialised
    def extract(x):
        calls.append(x)
        return x * 2

    other = open(tmp_path / "hitmusic-numba-compile.lock", "a")  # another worker compiling right now
    fcntl.flock(other, fcntl.LOCK_EX)
    first = threading.Thread(target=extract, args=(1,))
    first.start()
    first.join(timeout=1.0)
    assert first.is_alive() and calls == [], "the first call ran while another process held the lock"
    fcntl.flock(other, fcntl.LOCK_UN)
    first.join(timeout=10)
    assert calls == [1]
    fcntl.flock(other, fcntl.LOCK_EX)  # held again: a warm process goes straight through
    try:
        assert extract(2) == 4 and calls == [1, 2]
    finally:
        fcntl.flock(other, fcntl.LOCK_UN)
        other.close()


def test_one_clip_at_three_rates_gives_the_same_features_at_the_fixed_analysis_rate(tmp_path):
    """MEL_k is the same band whatever rate a file comes at: 22.05, 44.1 and 48 kHz versions of one clip are
    resampled to FeatureConfig.sr before analysis, so their features agree (up to the resamplers' error)."""
    import soundfile as sf

    from hitmodels.config import InputPolicy

    cfg = FeatureConfig()
    assert cfg.sr == 22050
    clip = _music(48000, seconds=6.0)
    feats = {}
    for sr in (22050, 44100, 48000):
        y = librosa.resample(clip, orig_sr=48000, target_sr=sr) if sr != 48000 else clip
        path = tmp_path / f"clip-{sr}.wav"
        sf.write(path, y, sr, subtype="FLOAT")
        decoded, got = audio.load(str(path), cfg, InputPolicy(local_roots=(str(tmp_path),)))
        assert got == 22050
        feats[sr] = audio.audio_features(decoded, got, cfg)
    mel = [k for k in feats[22050] if k.startswith("MEL_") and not k.endswith("_std")]
    ref = np.array([feats[48000][k] for k in mel])
    for sr in (22050, 44100):
        ours = np.array([feats[sr][k] for k in mel])
        loud = ref > 1e-4 * ref.max()  # bands with energy; the near-silent top bands carry resampler noise
        assert np.abs(ours[loud] - ref[loud]).max() <= 0.05 * np.abs(ref[loud]).max(), sr
        assert np.corrcoef(ours[loud], ref[loud])[0, 1] > 0.999, sr
