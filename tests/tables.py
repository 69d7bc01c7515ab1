"""Generated model tables with the real feature columns, for tests that need a registered model fast."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hitmodels.config import FeatureConfig
from hitmodels.data import METADATA_COLUMNS
from hitmodels.features import feature_names


def random_table(seed: int, n: int = 120) -> pd.DataFrame:
    """Rows with every feature column (so real audio can be scored by a model trained on them), values in
    their physical ranges, and a popularity that depends on the artist's popularity."""
    rng = np.random.default_rng(seed)
    cols = list(feature_names(FeatureConfig())) + METADATA_COLUMNS
    df = pd.DataFrame(np.abs(rng.normal(1.0, 0.5, (n, len(cols)))), columns=cols)
    df["ZCR"] = rng.uniform(0, 0.3, n)
    df["ZCR_std"] = rng.uniform(0, 0.1, n)
    df["release_year"] = rng.integers(1990, 2020, n).astype(float)
    df["artist_popularity"] = rng.uniform(0, 100, n)
    genres = [c for c in cols if c.startswith("genre_")]
    df[genres] = (rng.uniform(size=(n, len(genres))) < 0.2).astype(float)
    df["n_genres"] = df[genres].sum(axis=1) + rng.integers(0, 3, n)
    df["popularity"] = np.clip(df["artist_popularity"] * 0.8 + rng.normal(0, 5, n), 0, 100)
    df["track_id"] = [f"t{seed}_{i}" for i in range(n)]
    df["artist_id"] = "a"
    df["error"] = None
    return df
