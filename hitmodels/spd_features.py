"""The model table of the real SPD download, from its published "Features Extracted/" folder.

SPD (SpotGenTrack, Mendeley 4m2x4zngny) ships the features the paper used: ``low_level_audio_features.csv``
(Chroma, MEL, MFCC, spectral contrast, Tonnetz, ZCR, energy entropy, spectral centroid/bandwidth/roll-off,
one row per ``track_id``, with an unnamed index column) and ``lyrics_features.csv``. Joined with the
metadata of "Data Sources/" (artist popularity and followers, markets, release year, the popularity target)
and, as in the authors' code, Spotify's own descriptors of each track (acousticness, danceability, ...), this
gives the paper's experiment without extracting any audio::

    hitmusic evaluate /path/to/SpotGenTrack --out report/

Joins are inner joins (a track needs every part), as in the authors' code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .data import FEATURES_EXTRACTED, load_spd, read_spd_csv, track_metadata

LOW_LEVEL_FILE = "low_level_audio_features.csv"
LYRICS_FILE = "lyrics_features.csv"
# Spotify's track-level descriptors in spotify_tracks.csv that the authors kept as features.
SPOTIFY_DESCRIPTORS = ["acousticness", "danceability", "duration_ms", "energy", "instrumentalness", "key",
                       "liveness", "loudness", "mode", "speechiness", "tempo", "valence"]


def has_spd_features(root: str | Path) -> bool:
    """Whether ``root`` is an SPD directory with the published audio features."""
    return (Path(root) / FEATURES_EXTRACTED / LOW_LEVEL_FILE).is_file()


def read_low_level(path: str | Path) -> pd.DataFrame:
    """``low_level_audio_features.csv``: ``track_id`` plus float feature columns, one row per track."""
    df = pd.read_csv(path, encoding="utf-8-sig", low_memory=False)
    df = df.drop(columns=[c for c in df.columns if c == "" or str(c).startswith("Unnamed:")])
    if "track_id" not in df:
        raise ValueError(f"{path} has no track_id column")
    df["track_id"] = df["track_id"].astype(str)
    features = [c for c in df.columns if c != "track_id"]
    df[features] = df[features].apply(pd.to_numeric, errors="coerce").astype(float)
    return df.drop_duplicates("track_id").reset_index(drop=True)


def load_spd_model_table(root: str | Path, spotify_descriptors: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(model table, rejects)`` of an SPD directory: ``track_id, artist_id, error, popularity`` and the
    features, in the layout ``hitmusic build`` writes; ``rejects`` lists unusable CSV records with reasons."""
    root = Path(root)
    low_level = root / FEATURES_EXTRACTED / LOW_LEVEL_FILE
    if not low_level.is_file():
        raise FileNotFoundError(f"{LOW_LEVEL_FILE} not found in {root / FEATURES_EXTRACTED}")
    cat = load_spd(root)
    rejects = [cat.rejects]
    lyrics = cat.lyrics_features
    if lyrics is None:
        read = read_spd_csv(root / FEATURES_EXTRACTED / LYRICS_FILE, "lyrics_features")
        lyrics, rejects = read.rows, rejects + [read.rejects]
    lyrics = lyrics.assign(track_id=lyrics["track_id"].astype(str)).drop_duplicates("track_id")
    table = read_low_level(low_level).merge(lyrics, on="track_id", how="inner")
    table = table.merge(track_metadata(cat), on="track_id", how="inner")
    if spotify_descriptors:
        present = [c for c in SPOTIFY_DESCRIPTORS if c in cat.tracks]
        desc = cat.tracks[["id"] + present].rename(columns={"id": "track_id"}).drop_duplicates("track_id")
        desc[present] = desc[present].apply(pd.to_numeric, errors="coerce")
        table = table.merge(desc.assign(track_id=desc["track_id"].astype(str)), on="track_id", how="inner")
    table = table[table["popularity"].notna()].copy()
    table["error"] = None
    numeric = [c for c in table.columns if c not in ("track_id", "artist_id", "error")]
    table[numeric] = table[numeric].astype(np.float64)
    return table.reset_index(drop=True), pd.concat(rejects, ignore_index=True)
