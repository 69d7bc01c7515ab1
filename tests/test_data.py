"""Loader tests on the real SPD rows in ../shared and on generated catalogues in the same layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hitmodels.data import (GENRE_COLUMNS, build_model_table, genre_families, load_spd, parse_list_literal,
                            parse_release_year, read_manifest, read_spd_csv, track_metadata, training_rows)


def test_real_tracks_survive_bom_index_multiline_lyrics_and_broken_rows(shared_dir):
    read = read_spd_csv(shared_dir / "data/spd-sample/spotify_tracks.csv", "tracks")
    t = read.rows
    assert list(t.columns)[:3] == ["acousticness", "album_id", "analysis_url"]  # BOM and index column gone
    assert t["id"].str.fullmatch(r"[0-9A-Za-z]{22}").all()
    assert t["popularity"].between(0, 100).all() and t["popularity"].dtype.kind in "if"
    assert t["id"].iloc[0] == "5qljLQuKnNJf4F4vfxQB0V" and t["popularity"].iloc[0] == 28
    assert "\n" in t["lyrics"].iloc[0] and t["lyrics"].iloc[0].count("\n") > 20  # multi-line quoted lyrics kept
    # the records broken by unbalanced quotes in the lyrics are reported with line and reason, not loaded
    assert len(read.rejects) >= 1
    assert set(read.rejects.columns) == {"file", "line", "reason"}
    assert (read.rejects["line"] > 700).all()
    assert "6rlEcNrUCujtmQK0EDvcp2" not in set(t["id"])  # its popularity field was swallowed by the lyrics


def test_real_list_literals_and_metadata(shared_dir):
    cat = load_spd(shared_dir / "data/spd-sample")
    markets = parse_list_literal(cat.tracks["available_markets"].iloc[0])
    assert markets[:3] == ["AD", "AE", "AR"] and len(markets) == 79
    genres = parse_list_literal(cat.artists["genres"].iloc[0])
    assert genres[0] == "sertanejo"
    assert parse_list_literal(cat.artists["genres"].iloc[1]) == []
    meta = track_metadata(cat)
    assert len(meta) == len(cat.tracks)
    assert meta["n_available_markets"].iloc[0] == 79
    # the sample's files come from different parts of SPD: joins miss and stay NaN, never crash
    assert meta["artist_popularity"].isna().all()
    assert meta[GENRE_COLUMNS + ["n_genres"]].isna().all(axis=None)  # unknown artist: imputed, not "no genre"


def _families(genres):
    out = genre_families(genres)
    return {k.removeprefix("genre_") for k in GENRE_COLUMNS if out[k]}, out["n_genres"]


@pytest.mark.parametrize("genres, families", [
    (["sertanejo", "sertanejo pop", "sertanejo universitario"], {"latin", "pop"}),  # the real sample's artist
    (["danish pop rock"], {"pop", "rock"}),
    (["uk alternative pop"], {"pop", "indie_alternative"}),
    (["french baroque"], {"classical"}),
    (["classic finnish pop"], {"pop"}),
    (["latin hip hop"], {"latin", "hip_hop"}),
    (["k-pop"], {"pop"}),
    (["dub"], {"reggae"}),
    (["dubstep"], {"electronic"}),  # whole words: dubstep is not dub
    (["popular music"], {"other"}),  # nor is popular pop
    (["zydeco"], {"other"}),
    ([], set()),
])
def test_genre_families_by_whole_words(genres, families):
    assert _families(genres) == (families, float(len(genres)))


def test_real_lyrics_features_use_minus_one_for_missing(shared_dir):
    read = read_spd_csv(shared_dir / "data/spd-sample/lyrics_features.csv", "lyrics_features")
    lf = read.rows
    assert len(lf) == 41 and read.rejects.empty
    assert (lf.iloc[0][["n_sentences", "n_words", "vocabulary_wealth"]] == -1).all()
    assert lf["n_words"].iloc[1] == 326


@pytest.mark.parametrize("raw, year", [("2019", 2019), ("2019-02-08", 2019), ("2/8/19", 2019),
                                       ("12/31/85", 1985), ("garbage", None), (None, None)])
def test_release_year(raw, year):
    got = parse_release_year(raw)
    assert (np.isnan(got) if year is None else got == year)


def test_list_literal_never_raises():
    assert parse_list_literal("['a', 'b'") == []
    assert parse_list_literal("__import__('os')") == []
    assert parse_list_literal(float("nan")) == []


def test_generated_catalogue_has_spd_layout_and_quirks(tiny_catalogue):
    root = tiny_catalogue["root"]
    raw = tiny_catalogue["tracks"].read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf,acousticness,album_id")  # BOM + unnamed index, as SPD
    assert tiny_catalogue["albums"].read_bytes().startswith(b",album_type")
    cat = load_spd(root)
    assert cat.rejects.empty and len(cat.tracks) == 48
    real_header = ["acousticness", "album_id", "analysis_url", "artists_id", "available_markets"]
    assert list(cat.tracks.columns[:5]) == real_header
    assert parse_list_literal(cat.tracks["artists_id"].iloc[0])[0] in set(cat.artists["id"])
    assert cat.tracks.groupby("artists_id").size().min() >= 2  # artists have several tracks
    meta = track_metadata(cat)
    assert meta[["artist_popularity", "artist_followers_log", "release_year", "n_genres"]].notna().all(axis=None)
    artists = cat.artists.set_index("id")
    for _, row in meta.iterrows():  # each track carries its own artist's genre families
        genres = parse_list_literal(artists.loc[row["artist_id"], "genres"])
        assert row["n_genres"] == len(genres)
        assert {c for c in GENRE_COLUMNS if row[c] == 1.0} == {c for c, v in genre_families(genres).items()
                                                               if c != "n_genres" and v == 1.0}
    assert meta[GENRE_COLUMNS].to_numpy().sum() > 0
    assert (cat.tracks["lyrics"].fillna("") == "").any()  # instrumentals without lyrics


def test_synth_is_deterministic(tmp_path):
    from hitmodels.config import SynthConfig
    from hitmodels.synth import generate

    cfg = SynthConfig(n_tracks=6, tracks_per_artist=2, duration_s=1.0, sr=8000, seed=11)
    a, b = generate(tmp_path / "a", cfg), generate(tmp_path / "b", cfg)
    for k in ("tracks", "artists", "albums"):
        ta, tb = a[k].read_text(encoding="utf-8-sig"), b[k].read_text(encoding="utf-8-sig")
        assert ta.replace(str(tmp_path / "a"), "") == tb.replace(str(tmp_path / "b"), "")
    audio_a = sorted((tmp_path / "a/Audio").iterdir())
    audio_b = sorted((tmp_path / "b/Audio").iterdir())
    assert [p.read_bytes() for p in audio_a] == [p.read_bytes() for p in audio_b]


def test_synth_popularity_is_shaped_like_spd(tmp_path):
    from hitmodels.config import SynthConfig
    from hitmodels.synth import generate

    paths = generate(tmp_path, SynthConfig(n_tracks=400, duration_s=0.2, sr=8000, seed=1))
    truth = pd.read_parquet(paths["truth"])
    assert truth["popularity"].between(0, 100).all()
    assert abs(truth["popularity"].mean() - 40) < 1.5 and abs(truth["popularity"].std() - 16.8) < 1.5
    # it is a function of what the model can see: artist appeal and the audio parameters
    assert truth["popularity"].corr(truth["artist_appeal"]) > 0.4
    assert truth["popularity"].corr(truth["brightness"]) > 0.15


def test_manifest_from_spd_dir_and_csv(tiny_catalogue, tmp_path):
    m = read_manifest(tiny_catalogue["root"])
    assert len(m) == 48 and m["audio_uri"].str.endswith(".wav").all()
    csv = tmp_path / "m.csv"
    m.to_csv(csv, index=False)
    assert read_manifest(csv)["track_id"].tolist() == m["track_id"].tolist()
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"id": ["x"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="audio_uri"):
        read_manifest(bad)


def test_model_table_keeps_failed_rows_but_training_does_not(tiny_catalogue):
    cat = load_spd(tiny_catalogue["root"])
    ids = cat.tracks["id"].tolist()
    feats = pd.DataFrame({"track_id": ids, "error": [None] * (len(ids) - 1) + ["missing: gone"],
                          "MEL_1": np.arange(len(ids), dtype=float)})
    feats.loc[len(ids) - 1, "MEL_1"] = np.nan
    table = build_model_table(feats, cat)
    assert len(table) == len(ids)
    assert len(training_rows(table)) == len(ids) - 1
