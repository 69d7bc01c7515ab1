"""One feature row per track: audio summary statistics plus the six lyric features.

:func:`extract_row` never raises on bad input: a preview that is missing, cannot be fetched, is empty,
undecodable, too short or silent gives a row whose ``error`` names the reason and whose features are null,
so a batch job keeps rows in = rows out.
"""

from __future__ import annotations

from functools import lru_cache

import pyarrow as pa

from . import audio, lyrics
from .config import FeatureConfig, InputPolicy


@lru_cache(maxsize=8)
def feature_names(cfg: FeatureConfig = FeatureConfig()) -> tuple[str, ...]:
    """Every feature column, audio first (SPD's names), then lyrics (SPD's ``lyrics_features.csv`` names)."""
    return tuple(audio.audio_feature_names(cfg)) + lyrics.FEATURE_NAMES


def output_schema(cfg: FeatureConfig = FeatureConfig()) -> pa.Schema:
    """Arrow schema of the feature table: ``track_id``, ``error`` (null when fine), then float64 features."""
    return pa.schema([("track_id", pa.string()), ("error", pa.string())]
                     + [(n, pa.float64()) for n in feature_names(cfg)])


def extract_row(track_id: str, audio_uri: str, lyric_text: str | None,
                cfg: FeatureConfig = FeatureConfig(), policy: InputPolicy | None = None) -> dict:
    """Features of one track as ``{"track_id", "error", <feature>: float}``; ``audio_uri`` is read only as
    ``policy`` allows (default :meth:`InputPolicy.default`), and its bounds apply to audio and lyrics."""
    row: dict = {"track_id": str(track_id), "error": None}
    policy = policy or InputPolicy.default()
    try:
        # a manifest read by pandas gives None or NaN where the URI is missing
        y, sr = audio.load(audio_uri if isinstance(audio_uri, str) else "", cfg, policy)
        row.update(audio.audio_features(y, sr, cfg))
        row.update(lyrics.lyric_features(lyric_text if isinstance(lyric_text, str) else None, policy=policy))
    except (audio.AudioError, lyrics.LyricsError) as exc:
        row["error"] = str(exc)
    except Exception as exc:  # a bug or an exotic file must not cost the other rows of the batch
        row["error"] = f"internal: {type(exc).__name__}: {exc}"
    if row["error"] is not None:
        row.update({n: None for n in feature_names(cfg)})
    return row


def rows_to_table(rows: list[dict], cfg: FeatureConfig = FeatureConfig()) -> pa.Table:
    """Rows from :func:`extract_row` as an Arrow table with the fixed :func:`output_schema`."""
    schema = output_schema(cfg)
    return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)


def error_reason(error: str | None) -> str:
    """The reason code of an ``error`` string (``"missing: file not found..."`` -> ``"missing"``)."""
    return "ok" if not error else error.split(":", 1)[0]

