"""Catalogue loading: the SpotGenTrack (SPD) layout, manifests, and the model table.

SPD's published CSVs carry quirks a loader must survive: a byte-order mark and an unnamed index column,
multi-line quoted lyrics, records broken apart by unbalanced quotes inside the lyrics, Python list literals
(``"['AD', 'AE']"``) for list-valued columns, and dates such as ``2/8/19`` beside ``2019`` and ``2019-02-08``.
Broken records are never fatal: :func:`read_spd_csv` returns them as rejects with the line and the reason.
"""

from __future__ import annotations

import ast
import csv
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

DATA_SOURCES = "Data Sources"
FEATURES_EXTRACTED = "Features Extracted"

TRACK_COLUMNS = [
    "", "acousticness", "album_id", "analysis_url", "artists_id", "available_markets", "country",
    "danceability", "disc_number", "duration_ms", "energy", "href", "id", "instrumentalness", "key",
    "liveness", "loudness", "lyrics", "mode", "name", "playlist", "popularity", "preview_url", "speechiness",
    "tempo", "time_signature", "track_href", "track_name_prev", "track_number", "uri", "valence", "type",
]
ARTIST_COLUMNS = ["", "artist_popularity", "followers", "genres", "id", "name", "track_id", "track_name_prev",
                  "type"]
ALBUM_COLUMNS = [
    "", "album_type", "artist_id", "available_markets", "external_urls", "href", "id", "images", "name",
    "release_date", "release_date_precision", "total_tracks", "track_id", "track_name_prev", "uri", "type",
]
LYRIC_FEATURE_COLUMNS = ["mean_syllables_word", "mean_words_sentence", "n_sentences", "n_words",
                         "sentence_similarity", "vocabulary_wealth"]

# Spotify's artist genres are fine-grained and local ("sertanejo universitario", "danish pop rock", "french
# baroque": thousands in SPD), too many and too sparse to learn from one-hot. Each maps to the broad families
# whose keywords it contains as whole words, so "latin hip hop" is both latin and hip_hop; a genre that
# matches none counts as "other". A fixed vocabulary keeps the model's columns the same for every catalogue.
GENRE_FAMILIES: dict[str, tuple[str, ...]] = {
    "pop": ("pop", "mandopop", "cantopop", "k-pop", "j-pop", "c-pop", "europop", "synthpop", "electropop"),
    "rock": ("rock", "grunge", "punk", "britpop", "new wave"),
    "hip_hop": ("hip hop", "rap", "trap", "drill", "grime", "boom bap"),
    "electronic": ("edm", "house", "techno", "electro", "electronica", "trance", "dubstep", "drum and bass",
                   "big room", "electropop", "synthpop", "eurodance"),
    "rnb_soul": ("r&b", "soul", "funk", "motown", "neo soul", "urban contemporary"),
    "latin": ("latin", "latino", "reggaeton", "salsa", "bachata", "cumbia", "sertanejo", "samba", "mpb", "forro",
              "banda", "corrido", "corridos", "tango", "flamenco", "norteno", "ranchera", "pagode", "axe"),
    "country_folk": ("country", "folk", "americana", "bluegrass", "singer-songwriter", "schlager"),
    "jazz_blues": ("jazz", "blues", "swing", "bossa nova", "big band"),
    "classical": ("classical", "baroque", "orchestra", "orchestral", "opera", "choral", "romantic era",
                  "soundtrack", "early music"),
    "metal": ("metal", "metalcore", "hardcore", "deathcore"),
    "indie_alternative": ("indie", "alternative", "shoegaze", "lo-fi", "emo", "post-punk"),
    "reggae": ("reggae", "dancehall", "ska", "dub"),
    "other": (),
}
GENRE_COLUMNS = [f"genre_{family}" for family in GENRE_FAMILIES]
_GENRE_PATTERNS = {family: re.compile(r"(?<![\w-])(" + "|".join(re.escape(k) for k in keys) + r")(?![\w-])")
                   for family, keys in GENRE_FAMILIES.items() if keys}

# Metadata columns the model table derives from the Spotify tables (section IV-C of the paper plus release year
# and the artist's genres: a multi-hot over GENRE_FAMILIES and the number of Spotify genres). SPD's tables carry
# no explicit-lyrics flag, so there is none here.
METADATA_COLUMNS = ["artist_popularity", "artist_followers_log", "n_available_markets", "release_year",
                    *GENRE_COLUMNS, "n_genres"]

_SPOTIFY_ID = re.compile(r"^[0-9A-Za-z]{22}$")

# Lyrics fields are long: the csv module's 128 KiB default is too small for some SPD rows.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def parse_list_literal(value: object) -> list:
    """``"['AD', 'AE']"`` -> ``['AD', 'AE']``; anything unparsable or missing -> ``[]``."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str) or not value.strip():
        return []
    try:
        parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return []
    return list(parsed) if isinstance(parsed, (list, tuple)) else []


def parse_release_year(value: object) -> float:
    """Year of an SPD ``release_date``: ``2019``, ``2019-02-08`` or ``2/8/19`` (m/d/yy); NaN if unreadable."""
    if not isinstance(value, str):
        return np.nan
    s = value.strip()
    if m := re.fullmatch(r"(\d{4})(?:-\d{1,2}(?:-\d{1,2})?)?", s):
        return float(m.group(1))
    if m := re.fullmatch(r"\d{1,2}/\d{1,2}/(\d{2}|\d{4})", s):
        y = int(m.group(1))
        if y < 100:  # two-digit years: SPD's releases span the 1900s and 2000s up to 2019
            y += 2000 if y <= 30 else 1900
        return float(y)
    return np.nan


@dataclass
class TableRead:
    """A parsed SPD table plus the records that could not be used, each with line number and reason."""

    rows: pd.DataFrame
    rejects: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["file", "line", "reason"]))


def _validators(kind: str):
    def is_int(v: str) -> bool:
        return bool(re.fullmatch(r"-?\d+(\.0+)?", v.strip()))

    def is_num(v: str) -> bool:
        try:
            float(v)
            return True
        except ValueError:
            return False

    if kind == "tracks":
        return {
            "id": lambda v: bool(_SPOTIFY_ID.match(v)) or "id is not a 22-character Spotify id",
            "popularity": lambda v: (is_int(v) and 0 <= float(v) <= 100) or "popularity is not an integer 0-100",
            "duration_ms": lambda v: is_num(v) or "duration_ms is not a number",
            "": lambda v: is_int(v) or "index column is not an integer",
        }
    if kind == "artists":
        return {
            "id": lambda v: bool(_SPOTIFY_ID.match(v)) or "id is not a 22-character Spotify id",
            "artist_popularity": lambda v: is_num(v) or "artist_popularity is not a number",
            "followers": lambda v: v.strip() == "" or is_num(v) or "followers is not a number",
        }
    if kind == "albums":
        return {"id": lambda v: bool(_SPOTIFY_ID.match(v)) or "id is not a 22-character Spotify id"}
    if kind == "lyrics_features":
        return {"track_id": lambda v: bool(_SPOTIFY_ID.match(v)) or "track_id is not a 22-character Spotify id",
                **{c: (lambda v, c=c: is_num(v) or f"{c} is not a number") for c in LYRIC_FEATURE_COLUMNS}}
    return {}


# The columns each SPD table must have for the model table (others are optional: their features become NaN)
REQUIRED_COLUMNS = {"tracks": ("id", "artists_id", "available_markets", "album_id"),
                    "artists": ("id", "artist_popularity", "followers", "genres"),
                    "albums": ("id", "release_date")}


def read_spd_csv(path: str | Path, kind: str) -> TableRead:
    """Read one SPD CSV (``kind``: tracks, artists, albums or lyrics_features) record by record.

    Returns the valid records as strings-typed-then-converted DataFrame and every unusable record in
    ``rejects`` (file, 1-based line where the record ends, reason). Never raises on content.
    """
    path = Path(path)
    checks = _validators(kind)
    good: list[list[str]] = []
    rejects: list[dict] = []
    with path.open("r", encoding="utf-8-sig", newline="", errors="replace") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            if kind == "tracks":
                raise ValueError(f"{path} is empty: an SPD tracks table needs a header with "
                                 f"{', '.join(REQUIRED_COLUMNS[kind])}")
            return TableRead(pd.DataFrame())
        missing = [c for c in REQUIRED_COLUMNS.get(kind, ()) if c not in header]
        if missing:
            raise ValueError(f"{path} has no {', '.join(repr(c) for c in missing)} column"
                             f"{'s' if len(missing) > 1 else ''}: an SPD {kind} table needs "
                             f"{', '.join(REQUIRED_COLUMNS[kind])} (its header: {', '.join(header[:12]) or 'empty'}"
                             f"{', ...' if len(header) > 12 else ''})")
        width = len(header)
        while True:
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                rejects.append({"file": path.name, "line": reader.line_num, "reason": f"csv error: {exc}"})
                continue
            if not record or all(not f.strip() for f in record):
                continue
            if len(record) != width:
                rejects.append({"file": path.name, "line": reader.line_num,
                                "reason": f"record has {len(record)} fields, header has {width}"})
                continue
            values = dict(zip(header, record))
            reason = next((r for col, ok in checks.items() if col in values
                           for r in [ok(values[col])] if r is not True), None)
            if reason:
                rejects.append({"file": path.name, "line": reader.line_num, "reason": reason})
                continue
            good.append(record)
    df = pd.DataFrame(good, columns=header)
    if "" in df.columns:
        df = df.drop(columns=[""])
    df = df.apply(_convert_column)
    return TableRead(df, pd.DataFrame(rejects, columns=["file", "line", "reason"]))


def _convert_column(col: pd.Series) -> pd.Series:
    """Numeric where every non-empty value is numeric, text otherwise (ids like ``1e10...`` stay text)."""
    if col.name in {"id", "track_id", "album_id", "artist_id", "name", "track_name_prev", "lyrics", "uri"}:
        return col
    converted = pd.to_numeric(col.replace("", np.nan), errors="coerce")
    if converted.notna().sum() == (col != "").sum():
        return converted
    return col


@dataclass
class SPDCatalogue:
    """The three Spotify tables of an SPD directory (and its lyric features, when present)."""

    tracks: pd.DataFrame
    artists: pd.DataFrame
    albums: pd.DataFrame
    lyrics_features: pd.DataFrame | None
    rejects: pd.DataFrame


def find_table(root: Path, name: str) -> Path | None:
    for candidate in (root / DATA_SOURCES / name, root / FEATURES_EXTRACTED / name, root / name):
        if candidate.exists():
            return candidate
    return None


def load_spd(root: str | Path) -> SPDCatalogue:
    """Load an SPD directory: ``Data Sources/`` (or the files directly in ``root``) and optional lyric features."""
    root = Path(root)
    reads = {}
    for kind, fname in [("tracks", "spotify_tracks.csv"), ("artists", "spotify_artists.csv"),
                        ("albums", "spotify_albums.csv"), ("lyrics_features", "lyrics_features.csv")]:
        p = find_table(root, fname)
        if p is None:
            if kind == "lyrics_features":
                reads[kind] = None
                continue
            raise FileNotFoundError(f"{fname} not found under {root} (looked in '{DATA_SOURCES}/' and {root})")
        reads[kind] = read_spd_csv(p, kind)
    rejects = pd.concat([r.rejects for r in reads.values() if r is not None], ignore_index=True)
    return SPDCatalogue(
        tracks=reads["tracks"].rows,
        artists=reads["artists"].rows,
        albums=reads["albums"].rows,
        lyrics_features=reads["lyrics_features"].rows if reads["lyrics_features"] is not None else None,
        rejects=rejects,
    )


def genre_families(genres: list[str]) -> dict[str, float]:
    """Spotify genres -> ``{genre_<family>: 0.0 or 1.0, ..., "n_genres": count}`` over :data:`GENRE_FAMILIES`.

    >>> genre_families(["latin hip hop"])["genre_latin"], genre_families(["latin hip hop"])["genre_hip_hop"]
    (1.0, 1.0)
    """
    out = dict.fromkeys(GENRE_COLUMNS, 0.0)
    for g in genres:
        hits = [family for family, pattern in _GENRE_PATTERNS.items() if pattern.search(str(g).lower())]
        for family in hits or ["other"]:
            out[f"genre_{family}"] = 1.0
    out["n_genres"] = float(len(genres))
    return out


def track_metadata(cat: SPDCatalogue) -> pd.DataFrame:
    """Per track: first artist's popularity, followers and genre families, number of markets, release year.

    Missing joins stay NaN: the model's preprocessing imputes them with training medians.
    """
    t = cat.tracks
    out = pd.DataFrame({"track_id": t["id"].astype(str)})
    out["artist_id"] = t["artists_id"].map(lambda v: (parse_list_literal(v) or [None])[0])
    out["n_available_markets"] = t["available_markets"].map(lambda v: float(len(parse_list_literal(v))))
    artists = cat.artists.drop_duplicates("id").set_index("id") if len(cat.artists) else pd.DataFrame()
    if len(artists):
        out["artist_popularity"] = out["artist_id"].map(artists["artist_popularity"]).astype(float)
        out["artist_followers_log"] = np.log1p(out["artist_id"].map(artists["followers"]).astype(float))
        families = artists["genres"].map(lambda v: genre_families(parse_list_literal(v)))
        # tracks whose artist is not in the table get NaN (imputed), not "no genres"
        empty = dict.fromkeys([*GENRE_COLUMNS, "n_genres"], np.nan)
        genre_rows = [families.get(a) or empty for a in out["artist_id"]]
        out = pd.concat([out, pd.DataFrame(genre_rows, index=out.index)], axis=1)
    else:
        out["artist_popularity"] = np.nan
        out["artist_followers_log"] = np.nan
        for c in [*GENRE_COLUMNS, "n_genres"]:
            out[c] = np.nan
    albums = cat.albums.drop_duplicates("id").set_index("id") if len(cat.albums) else pd.DataFrame()
    if len(albums):
        out["release_year"] = t["album_id"].map(albums["release_date"]).map(parse_release_year).astype(float)
    else:
        out["release_year"] = np.nan
    if "popularity" in t:
        out["popularity"] = t["popularity"].astype(float)
    return out.drop_duplicates("track_id").reset_index(drop=True)


def invalid_utf8_lines(lines) -> list[int]:
    """1-based numbers of the physical lines (an iterable of bytes, e.g. a binary file) that are not UTF-8."""
    bad = []
    for number, line in enumerate(lines, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(number)
    return bad


def _warn_invalid_utf8(path: Path) -> None:
    """A warning naming the lines of ``path`` that are not UTF-8 (streamed, one line in memory at a time)."""
    import sys

    with path.open("rb") as f:
        lines = invalid_utf8_lines(f)
    if not lines:
        return
    shown = ", ".join(map(str, lines[:20])) + (f" and {len(lines) - 20} more" if len(lines) > 20 else "")
    print(f"manifest {path}: bytes that are not UTF-8 on line(s) {shown}; read as U+FFFD (a lyric keeps the rest "
          "of its text, a URI with them will not be found)", file=sys.stderr)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """A feature-extraction manifest: columns ``track_id``, ``audio_uri`` and optional ``lyrics``; a relative
    local ``audio_uri`` is relative to the manifest's directory (:func:`absolute_uri`).

    Accepts Parquet or CSV, or an SPD directory (audio from ``Audio/<track_id>.*`` when present, otherwise
    each track's ``preview_url``).
    """
    path = Path(path)
    if path.is_dir():
        cat = load_spd(path)
        audio_dir = path / "Audio"
        local = {p.stem: str(p.resolve()) for p in audio_dir.glob("*")} if audio_dir.is_dir() else {}
        df = pd.DataFrame({
            "track_id": cat.tracks["id"].astype(str),
            "audio_uri": [local.get(i, u if isinstance(u, str) else "")
                          for i, u in zip(cat.tracks["id"], cat.tracks.get("preview_url", [""] * len(cat.tracks)))],
            "lyrics": cat.tracks.get("lyrics", pd.Series([""] * len(cat.tracks))).fillna("").astype(str),
        })
        return df.reset_index(drop=True)  # duplicate ids are the jobs' to report (row_keys), not dropped here
    if path.suffix == ".parquet" or path.is_dir():
        df = pd.read_parquet(path)
    else:
        _warn_invalid_utf8(path)
        # one row of bad bytes must not refuse the catalogue: they become U+FFFD (the warning names the lines)
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", encoding_errors="replace")
    missing = {"track_id", "audio_uri"} - set(df.columns)
    if missing:
        raise ValueError(f"manifest {path} lacks column(s) {sorted(missing)}; it needs track_id and audio_uri")
    if "lyrics" not in df:
        df["lyrics"] = ""
    df["lyrics"] = df["lyrics"].fillna("").astype(str)
    base = path.resolve().parent
    df["audio_uri"] = [absolute_uri(u, base) for u in df["audio_uri"]]
    return df[["track_id", "audio_uri", "lyrics"]].reset_index(drop=True)


ROW_KEY = "row_key"


def id_key(track_id: str) -> str:
    """The row key of a track_id's first row: the id itself, with each ``#`` doubled. Generated keys
    (:func:`row_keys`) hold a single ``#``, so no real id can spell one, whatever else the manifest holds.

    >>> id_key("a"), id_key("a#2")
    ('a', 'a##2')
    """
    return str(track_id).replace("#", "##")


def row_keys(track_ids) -> tuple[list[str], list[str | None]]:
    """Per manifest row, the key its output row is written and resumed under, and an error for a row that
    cannot stand for a track of its own. A track_id's first row is keyed by :func:`id_key` (the id itself
    unless it holds a ``#``); a later row with the same id gets ``<id_key>#<k>`` (its k-th occurrence) and
    ``duplicate_track_id``, naming the first row; a row without an id gets ``#row<n>`` and
    ``missing_track_id``. So every input row has exactly one output row, duplicates and id-less rows included
    (rows in = rows out), and a resume finds each of them done. Row numbers are 1-based positions in the
    manifest. A row's key depends only on the rows before it: a manifest that grows at its end keeps the
    keys it had. Generated keys have an odd run of ``#`` and id keys only even runs, so they never collide.

    >>> row_keys(["a", "b", "a", None, "a#2"])
    (['a', 'b', 'a#2', '#row4', 'a##2'], [None, None, "duplicate_track_id: 'a' is also manifest row 1", 'missing_track_id: manifest row 4 has no track_id', None])
    """
    def missing(t) -> bool:
        return t is None or (isinstance(t, float) and np.isnan(t)) or not str(t).strip()

    keys: list[str] = []
    errors: list[str | None] = []
    first: dict[str, int] = {}
    seen: dict[str, int] = {}
    for n, t in enumerate(track_ids, start=1):
        if missing(t):
            keys.append(f"#row{n}")
            errors.append(f"missing_track_id: manifest row {n} has no track_id")
            continue
        t = str(t)
        seen[t] = seen.get(t, 0) + 1
        if seen[t] == 1:
            first[t] = n
            keys.append(id_key(t))
            errors.append(None)
        else:
            keys.append(f"{id_key(t)}#{seen[t]}")
            errors.append(f"duplicate_track_id: {t!r} is also manifest row {first[t]}")
    return keys, errors


def keyed_manifest(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A manifest split into the rows to process and the rows that fail as a whole (duplicate or missing
    ``track_id``), both with :data:`ROW_KEY`; the failing ones also carry their ``error`` (:func:`row_keys`)."""
    keys, errors = row_keys(df["track_id"].tolist())
    df = df.assign(**{ROW_KEY: keys})
    bad = np.array([e is not None for e in errors], dtype=bool)
    failed = df[bad].assign(error=[e for e in errors if e is not None])
    # object, not pandas' string dtype, whose missing value is NaN: Arrow wants None for a null string
    failed["track_id"] = pd.Series([None if e.startswith("missing_track_id") else str(t)
                                    for t, e in zip(failed["track_id"], failed["error"])], dtype=object,
                                   index=failed.index)
    return df[~bad].reset_index(drop=True), failed.reset_index(drop=True)


def absolute_uri(uri, base: Path):
    """A manifest's relative local path made absolute against the manifest's directory ``base``, here on the
    driver: a Ray worker's working directory is not the user's. URIs with a scheme, absolute paths and
    missing values are unchanged."""
    if not isinstance(uri, str) or not uri or "://" in uri or uri.startswith("file:") or Path(uri).is_absolute():
        return uri
    return str(base / uri)


def build_model_table(features: pd.DataFrame, cat: SPDCatalogue) -> pd.DataFrame:
    """Join extracted features (one row per track_id) with metadata and the popularity target.

    Every feature row is kept, failed extractions included (their ``error`` says why), so scoring the table
    keeps rows in = rows out; :func:`training_rows` picks what a model may learn from.
    """
    meta = track_metadata(cat)
    # one row per manifest row (a duplicate id's row carries its error), as written by extract
    # the attempt that wrote a row (hitmodels.outdir) is bookkeeping of the extraction, not a property of the track
    table = features.drop_duplicates(ROW_KEY if ROW_KEY in features else "track_id") \
        .drop(columns=["attempt"], errors="ignore").merge(meta, on="track_id", how="left")
    if "error" not in table:
        table["error"] = None
    return table.reset_index(drop=True)


def training_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows with features (no extraction error) and a known popularity."""
    ok = table["error"].isna() | (table["error"] == "") if "error" in table else True
    return table[ok & table["popularity"].notna()].reset_index(drop=True)


def feature_columns(table: pd.DataFrame) -> list[str]:
    """The model's input columns of a model table: everything but ids, target and bookkeeping."""
    skip = {"track_id", "artist_id", "popularity", "error", "attempt"}  # attempt: hitmodels.outdir's bookkeeping
    return [c for c in table.columns if c not in skip and pd.api.types.is_numeric_dtype(table[c])]
