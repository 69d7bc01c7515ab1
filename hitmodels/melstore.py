"""The mel store: each track's log-mel segments, computed once, kept as float16 in Parquet parts.

Layout of a store directory (written by ``hitmusic mels``, :mod:`pipelines.mels`)::

    (a local directory or an s3:// prefix)
    part-*.parquet      one row per row of the manifest (rows in = rows out):
                        track_id, row_key (hitmodels.data.row_keys: a duplicate or missing track_id's
                        row has its own, and an error), error (null when fine), duration_s, mid30_start_s, hl30_start_s,
                        mid30, hl30 (float16 (n_mels, n_frames), C order, as bytes; hl30 null when it is
                        the same segment as mid30, as for a preview no longer than 30 s);
                        with ``hitmusic mels --tags`` also the tagger's 50 ``tag_<label>`` activations of
                        the whole clip (float64), what a Siamese model with a tag branch takes beside its segment
    _mel_config.json    the :class:`~hitmodels.config.MelConfig` every segment was computed with, and
                        ``"tags"``: whether the parts carry the tag columns (a store never mixes both)

One 30 s segment is 128 x 323 float16 = 82.7 KB, so a store of 100,000 previews is ~8.3 GB on disk; training
reads only the segment and the tracks it needs, one Parquet row group at a time (:meth:`MelStore.load`),
and holds them as float16 (half of float32's memory).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .config import FeatureConfig, InputPolicy, MelConfig
from .mel import FLOOR_DB, SEGMENTS, segments
from .storage import exists, filesystem, parquet_files

# The column of model rows that carries a track's segment (float16 bytes of :func:`encode`), for the models on
# log-mel input; :func:`attach` fills it from a store.
MEL_COLUMN = "mel"
MEL_CONFIG_FILE = "_mel_config.json"  # a leading underscore keeps it out of Arrow's dataset discovery
SCHEMA = pa.schema([("track_id", pa.string()), ("row_key", pa.string()), ("error", pa.string()),
                    ("duration_s", pa.float64()),
                    ("mid30_start_s", pa.float64()), ("hl30_start_s", pa.float64()),
                    ("mid30", pa.binary()), ("hl30", pa.binary())])


def encode(segment: np.ndarray) -> bytes:
    """A segment ``(n_mels, n_frames)`` as float16 bytes (dB values keep ~0.03 dB of precision)."""
    return np.ascontiguousarray(segment, dtype=np.float16).tobytes()


def decode(data: bytes, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """Bytes of :func:`encode` back to ``(n_mels, n_frames)`` float16; a length mismatch is an error."""
    arr = np.frombuffer(data, dtype=np.float16)
    if arr.size != cfg.n_mels * cfg.n_frames:
        raise ValueError(f"a mel segment of {arr.size} values, expected {cfg.n_mels} x {cfg.n_frames}")
    return arr.reshape(cfg.n_mels, cfg.n_frames)


def audio_config(cfg: MelConfig) -> FeatureConfig:
    """The decoding settings of the segments: resampled to ``cfg.sr``, with the same usability checks."""
    return FeatureConfig(sr=cfg.sr, min_duration_s=cfg.min_duration_s, silence_rms=cfg.silence_rms)


def segment_bytes(y: np.ndarray, sr: int, cfg: MelConfig, segment: str) -> bytes:
    """One segment of decoded audio as the store keeps it (what a model on log-mel input is fed)."""
    return encode(segments(y, sr, cfg)[segment][0])


def segment_row(y: np.ndarray, sr: int, cfg: MelConfig = MelConfig()) -> dict:
    """A store row's values (all but ``track_id`` and ``error``) for decoded mono audio at ``cfg.sr``."""
    seg = segments(y, sr, cfg)
    (mid, mid_s), (hl, hl_s) = seg["mid30"], seg["hl30"]
    return {"duration_s": len(y) / sr, "mid30_start_s": mid_s, "hl30_start_s": hl_s, "mid30": encode(mid),
            "hl30": None if hl_s == mid_s else encode(hl)}


def mel_row(track_id: str, audio_uri: str, cfg: MelConfig = MelConfig(), policy: InputPolicy | None = None) -> dict:
    """One store row; never raises on bad input: the row's ``error`` names the reason (the same reasons as
    feature extraction: missing, refused, too_large, undecodable, too_short, silent, ...)."""
    return mel_rows([(track_id, audio_uri)], cfg, policy)[0]


def mel_rows(items: list[tuple[str, str]], cfg: MelConfig = MelConfig(), policy: InputPolicy | None = None,
             tags: bool = False) -> list[dict]:
    """:func:`mel_row` of each ``(track_id, audio_uri)``; with ``tags`` each clip is decoded once at both
    ``cfg.sr`` and the tagger's rate, and the usable clips are tagged as one batch (a clip the tagger fails
    on gets its own error; its row keeps no segments, so a store row is either whole or failed)."""
    from . import audio, features  # librosa underneath: only the writers of segments need it

    rates = (cfg.sr, features.tag_sr()) if tags else (cfg.sr,)
    if tags:
        features.load_tagger()  # a missing wheel fails the task, not every row (see features.load_tagger)
    rows: list[dict] = []
    to_tag: list[tuple[int, np.ndarray]] = []
    for track_id, audio_uri in items:
        row = {"track_id": str(track_id), "error": None}
        try:
            loaded = audio.load_rates(audio_uri if isinstance(audio_uri, str) else "", rates, audio_config(cfg),
                                      policy)
            row.update(segment_row(*loaded[0], cfg))
            if tags:
                to_tag.append((len(rows), loaded[1][0]))
        except audio.AudioError as exc:
            row["error"] = str(exc)
        except Exception as exc:  # a bug or an exotic file must not cost the other rows of the batch
            row["error"] = f"internal: {type(exc).__name__}: {exc}"
        rows.append(row)
    if to_tag:
        for (i, _), values in zip(to_tag, features.tag_rows([y for _, y in to_tag], features.TAGGED)):
            if isinstance(values, str):
                rows[i] = {"track_id": rows[i]["track_id"], "error": values}
            else:
                rows[i].update(values)
    return rows


def schema(tags: bool = False) -> pa.Schema:
    """The parts' schema: :data:`SCHEMA`, plus the tag columns with ``tags``."""
    if not tags:
        return SCHEMA
    from . import features

    return pa.schema(list(SCHEMA) + [(n, pa.float64()) for n in features.tag_names(features.TAGGED)])


def rows_to_table(rows: list[dict], tags: bool = False) -> pa.Table:
    sch = schema(tags)
    return pa.Table.from_pylist([{k: r.get(k) for k in sch.names} for r in rows], schema=sch)


def is_store(uri: str | Path) -> bool:
    """Whether ``uri`` (local or ``s3://``) is a mel store: it holds :data:`MEL_CONFIG_FILE`."""
    fs, root = filesystem(str(uri))
    return exists(fs, f"{root}/{MEL_CONFIG_FILE}")


def read_config(fs, root: str) -> tuple[MelConfig, bool]:
    """``(settings, tags)`` of the store at ``root`` (a store written before tags existed has none)."""
    with fs.open_input_stream(f"{root}/{MEL_CONFIG_FILE}") as f:
        d = json.loads(f.read())
    tags = d.pop("tags", False)
    if not isinstance(tags, bool):
        raise ValueError(f"{root}/{MEL_CONFIG_FILE}: 'tags' must be true or false, got {tags!r}")
    return MelConfig.from_dict(d), tags


def record_config(uri: str | Path, cfg: MelConfig, tags: bool = False) -> None:
    """Write ``cfg`` (and ``tags``) beside the parts; a store holding segments of other settings, or written
    with the other ``tags`` choice, is refused."""
    fs, root = filesystem(str(uri))
    path = f"{root}/{MEL_CONFIG_FILE}"
    if exists(fs, path):
        before, had_tags = read_config(fs, root)
        if before != cfg:
            raise ValueError(f"{uri} holds mel segments computed with other settings ({before}); "
                             "write into a new directory")
        if had_tags != tags:
            raise ValueError(f"{uri} holds segments {'with' if had_tags else 'without'} the tag columns; "
                             f"{'add' if had_tags else 'drop'} --tags or write into a new directory")
        return
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(path) as f:
        # the key only when true: a store without tags stays readable by versions from before tags existed
        f.write(json.dumps({**asdict(cfg), **({"tags": True} if tags else {})}).encode())


QUARANTINE = "_quarantine"  # a leading underscore keeps it out of Arrow's dataset discovery


def readable_parts(fs, root: str, quarantine: bool = False) -> list[str]:
    """The store's readable parts (:func:`hitmodels.outdir.readable_parts`)."""
    from .outdir import readable_parts as parts

    return parts(fs, root, quarantine, "mels")


class MelStore:
    """Read access to a store (a local directory or an ``s3://`` prefix)."""

    def __init__(self, uri: str | Path):
        self.uri = str(uri)
        self.fs, self.root = filesystem(self.uri)
        if not exists(self.fs, f"{self.root}/{MEL_CONFIG_FILE}"):
            raise FileNotFoundError(f"{self.uri} is not a mel store (no {MEL_CONFIG_FILE}); make one with "
                                    "hitmusic mels MANIFEST DIR")
        self.config, self.tags = read_config(self.fs, self.root)
        self.files = readable_parts(self.fs, self.root)

    def index(self) -> pd.DataFrame:
        """Every manifest row's row without the segments (its latest attempt, :mod:`hitmodels.outdir`):
        track_id, row_key, error, duration, segment starts and attempt (a store from before row keys: the
        row_key is the track_id)."""
        from .outdir import ATTEMPT, latest, read_parts

        cols = [n for n in SCHEMA.names if n not in SEGMENTS]
        return latest(read_parts(self.fs, self.files, cols + [ATTEMPT]))

    def load(self, track_ids, segment: str = "hl30") -> tuple[np.ndarray, np.ndarray]:
        """``(segments (n, n_mels, n_frames) float16, found (n,) bool)`` for ``track_ids`` in their order;
        a track absent from the store or with an ``error`` is not found (its segment is all
        :data:`~hitmodels.mel.FLOOR_DB`). Reads one row group at a time, only the columns it needs."""
        if segment not in SEGMENTS:
            raise ValueError(f"unknown segment {segment!r}; choose {' or '.join(SEGMENTS)}")
        ids = [str(t) for t in track_ids]
        where = {t: i for i, t in enumerate(ids)}
        cfg = self.config
        out = np.full((len(ids), cfg.n_mels, cfg.n_frames), FLOOR_DB, dtype=np.float16)
        found = np.zeros(len(ids), dtype=bool)
        columns = ["track_id", "error", "mid30"] + (["hl30"] if segment == "hl30" else [])
        for f in self.files:
            with self.fs.open_input_file(f) as fh:
                pf = pq.ParquetFile(fh)
                for g in range(pf.num_row_groups):
                    t = pf.read_row_group(g, columns=["track_id"])["track_id"].to_pylist()
                    if not any(x in where for x in t):
                        continue
                    part = pf.read_row_group(g, columns=columns).to_pydict()
                    hl = part.get("hl30") or [None] * len(t)  # hl30 null: the same segment as mid30
                    for k, tid in enumerate(part["track_id"]):
                        i = where.get(tid)
                        if i is None or found[i] or part["error"][k] is not None:
                            continue
                        data = hl[k] or part["mid30"][k]
                        out[i] = decode(data, cfg)
                        found[i] = True
        return out, found


# Training holds the segments of the tracks it fits in memory, as float16, about three copies at the peak (the
# array read, the rows' bytes, the fit's array); past this many bytes of segments it refuses, before reading.
MAX_ATTACH_GB = float(os.environ.get("HITMUSIC_MAX_MEL_GB", "12"))


def attach(table: pd.DataFrame, store: str | Path, segment: str, max_gb: float | None = None) -> pd.DataFrame:
    """``table`` with :data:`MEL_COLUMN` holding each track's ``segment`` from ``store``; tracks without one (not
    in the store, or with an error there) are dropped, with a count on stderr. ``attrs["mel_config"]`` records
    the store's settings. More than ``max_gb`` (default ``$HITMUSIC_MAX_MEL_GB`` or 12) GB of segments is
    refused with the count and the bound (100,000 30 s segments are 8.3 GB)."""
    import sys

    st = MelStore(store)
    limit = MAX_ATTACH_GB if max_gb is None else max_gb
    need = len(table) * st.config.n_mels * st.config.n_frames * 2 / 1e9
    if need > limit:
        raise ValueError(f"{len(table)} tracks' {segment} segments are {need:.1f} GB of float16, over the "
                         f"{limit:g} GB training holds in memory: train on a sample (hitmusic evaluate --max-rows) or "
                         "raise HITMUSIC_MAX_MEL_GB on a machine with the memory for it")
    arr, found = st.load(table["track_id"].astype(str).tolist(), segment)
    out = table[found].reset_index(drop=True).copy()
    out[MEL_COLUMN] = [encode(a) for a in arr[found]]
    if st.tags and not any(c.startswith("tag_") for c in out.columns):
        # not merged in: --no-tag-columns must be able to leave them out, and a table says what a model learns
        print(f"mels: {store} holds the tagger's tag_* columns but the table has none; a tag branch trains on the "
              "genre_* descriptors (build the table from hitmusic extract --tags to train it on the tags)",
              file=sys.stderr)
    if (~found).any():
        print(f"mels: {int((~found).sum())} of {len(table)} tracks have no {segment} segment in {store}; left out",
              file=sys.stderr)
    out.attrs = {**table.attrs, "mel_config": asdict(st.config)}
    return out
