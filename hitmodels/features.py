"""One feature row per track: audio summary statistics, the six lyric features and, with
``FeatureConfig.tags``, the 50 tag activations of the pretrained tagger (:mod:`hitmodels.tagger`).

:func:`extract_rows` never raises on bad input: a preview that is missing, cannot be fetched, is empty,
undecodable, too short or silent gives a row whose ``error`` names the reason and whose features are null,
so a batch job keeps rows in = rows out. The tagger runs once per batch over every usable clip of it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyarrow as pa

from . import audio, lyrics
from .config import FeatureConfig, InputPolicy


@lru_cache(maxsize=8)
def feature_names(cfg: FeatureConfig = FeatureConfig()) -> tuple[str, ...]:
    """Every feature column, audio first (SPD's names), then lyrics (SPD's ``lyrics_features.csv`` names),
    then with ``cfg.tags`` the tagger's ``tag_<label>`` columns."""
    return tuple(audio.audio_feature_names(cfg)) + lyrics.FEATURE_NAMES + tag_names(cfg)


TAGGED = FeatureConfig(tags=True)  # the settings under which tag columns exist (the tagger's are its own)


def tagger_columns(columns) -> list[str]:
    """The tagger's ``tag_<label>`` columns among a model's or a table's ``columns``: computed from the audio,
    never imputed. A ``tag_*`` column the tagger does not produce is refused (``ValueError``): it could only
    ever be imputed."""
    tagged = [c for c in columns if c.startswith("tag_")]
    if tagged:
        known = set(tag_names(TAGGED))
        unknown = [c for c in tagged if c not in known]
        if unknown:
            raise ValueError(f"column(s) {unknown[:5]} are named like the tagger's tag_<label> columns but it has no "
                             "such label: rename them (tag_* is reserved for the tagger)")
    return tagged


def tag_names(cfg: FeatureConfig = FeatureConfig()) -> tuple[str, ...]:
    """The ``tag_<label>`` columns (MagnaTagATune's 50 labels, spaces as underscores), or none."""
    if not cfg.tags:
        return ()
    from . import tagger  # torch: loaded only where tags are asked for

    return tagger.musicnn_spec().columns


def tag_sr() -> int:
    from . import tagger

    return tagger.musicnn_spec().sr


def load_tagger(device: str = "cpu") -> None:
    """Load the tagger now, outside any per-row error handling: a missing wheel or a corrupt checkpoint must
    fail the task (and so the job, loudly), not become an ``internal`` error on every row, which a resumed
    run would then count as done."""
    from . import tagger

    tagger.shared(device)


def tag_rows(clips: list[np.ndarray], cfg: FeatureConfig, device: str = "cpu") -> list[dict | str]:
    """``{tag_<label>: activation}`` per clip (at :func:`tag_sr`), or per clip an error string: a batch that
    fails is redone clip by clip, so one clip costs only its own row."""
    from . import tagger

    names = tag_names(cfg)
    try:
        acts = tagger.tag_clips(clips, tag_sr(), device)
        return [dict(zip(names, map(float, a))) for a in acts]
    except Exception as exc:  # a bug, a clip too long for the device's memory: per clip, on its own
        if len(clips) == 1:
            return [f"internal: tagger: {type(exc).__name__}: {exc}"]
    return [tag_rows([y], cfg, device)[0] for y in clips]


def output_schema(cfg: FeatureConfig = FeatureConfig()) -> pa.Schema:
    """Arrow schema of the feature table: ``track_id``, ``row_key`` (the manifest row's key,
    :func:`hitmodels.data.row_keys`), ``error`` (null when fine), then float64 features."""
    return pa.schema([("track_id", pa.string()), ("row_key", pa.string()), ("error", pa.string())]
                     + [(n, pa.float64()) for n in feature_names(cfg)])


def extract_row(track_id: str, audio_uri: str, lyric_text: str | None,
                cfg: FeatureConfig = FeatureConfig(), policy: InputPolicy | None = None) -> dict:
    """Features of one track as ``{"track_id", "error", <feature>: float}``; ``audio_uri`` is read only as
    ``policy`` allows (default :meth:`InputPolicy.default`), and its bounds apply to audio and lyrics."""
    return extract_rows([(track_id, audio_uri, lyric_text)], cfg, policy)[0]


def extract_rows(items: list[tuple[str, str, str | None]], cfg: FeatureConfig = FeatureConfig(),
                 policy: InputPolicy | None = None, device: str = "cpu") -> list[dict]:
    """:func:`extract_row` of each ``(track_id, audio_uri, lyrics)``, with the tags (``cfg.tags``) of every
    usable clip computed as one batch on ``device``. Errors in this order: loading the audio, its features,
    the lyrics, the tags."""
    policy = policy or InputPolicy.default()
    rates = (cfg.sr, tag_sr()) if cfg.tags else (cfg.sr,)
    if cfg.tags:
        load_tagger(device)
    rows: list[dict] = []
    to_tag: list[tuple[int, np.ndarray]] = []
    for track_id, audio_uri, lyric_text in items:
        row: dict = {"track_id": str(track_id), "error": None}
        try:
            # a manifest read by pandas gives None or NaN where the URI is missing
            loaded = audio.load_rates(audio_uri if isinstance(audio_uri, str) else "", rates, cfg, policy)
            row.update(audio.audio_features(*loaded[0], cfg))
            row.update(lyrics.lyric_features(lyric_text if isinstance(lyric_text, str) else None, policy=policy))
            if cfg.tags:
                to_tag.append((len(rows), loaded[1][0]))
        except (audio.AudioError, lyrics.LyricsError) as exc:
            row["error"] = str(exc)
        except Exception as exc:  # a bug or an exotic file must not cost the other rows of the batch
            row["error"] = f"internal: {type(exc).__name__}: {exc}"
        rows.append(row)
    if to_tag:
        for (i, _), tags in zip(to_tag, tag_rows([y for _, y in to_tag], cfg, device)):
            if isinstance(tags, str):
                rows[i]["error"] = tags
            else:
                rows[i].update(tags)
    for row in rows:
        if row["error"] is not None:
            row.update({n: None for n in feature_names(cfg)})
    return rows


def rows_to_table(rows: list[dict], cfg: FeatureConfig = FeatureConfig()) -> pa.Table:
    """Rows from :func:`extract_row` as an Arrow table with the fixed :func:`output_schema`."""
    schema = output_schema(cfg)
    return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)


def error_reason(error: str | None) -> str:
    """The reason code of an ``error`` string (``"missing: file not found..."`` -> ``"missing"``)."""
    return "ok" if not error else error.split(":", 1)[0]

