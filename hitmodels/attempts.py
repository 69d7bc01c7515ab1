"""Resumable jobs write one row per attempt: a resumed run retries only the tracks whose rows failed and
appends the new rows beside the old ones (a part file is never rewritten). Readers take one row per track.

    >>> import pandas as pd
    >>> rows = pd.DataFrame({"track_id": ["a", "b", "a", "b"], "error": ["fetch_failed: x", None, None, None]})
    >>> out = latest(rows)
    >>> out["track_id"].tolist(), out["error"].isna().all(), out["attempts"].tolist()
    (['a', 'b'], True, [2, 2])
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def ok_mask(df: pd.DataFrame) -> np.ndarray:
    """Rows without an error (null or empty ``error``)."""
    return (df["error"].isna() | (df["error"] == "")).to_numpy()


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """One row per track of a table of attempts (``track_id``, ``error``, ...): its last error-free row if it
    has one, else its last failed one, in the order of the rows kept; ``attempts`` counts
    each track's rows. Rows without a track_id cannot be told apart: each is kept, as one attempt."""
    keyed = df["track_id"].notna().to_numpy()
    order = df.assign(_ok=ok_mask(df), _pos=np.arange(len(df)))
    with_id = order[keyed]
    attempts = with_id.groupby("track_id", sort=False)["_pos"].transform("size")
    best = with_id.assign(attempts=attempts.to_numpy()).sort_values(["_ok", "_pos"], kind="stable") \
        .drop_duplicates("track_id", keep="last")
    out = pd.concat([best, order[~keyed].assign(attempts=1)]).sort_values("_pos")
    return out.drop(columns=["_ok", "_pos"]).reset_index(drop=True)


def done_ids(df: pd.DataFrame) -> set[str]:
    """The track_ids of a table of attempts that have an error-free row: what a resumed run skips."""
    return set(df.loc[ok_mask(df) & df["track_id"].notna().to_numpy(), "track_id"])
