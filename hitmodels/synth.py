"""A deterministic, seeded sample catalogue in the SpotGenTrack (SPD) layout, with real audio and lyrics.

Layout written under ``root``::

    Data Sources/spotify_tracks.csv    32 columns, BOM + unnamed index, multi-line quoted lyrics, list literals
    Data Sources/spotify_artists.csv   BOM + unnamed index, genres as list literal
    Data Sources/spotify_albums.csv    unnamed index, dates as m/d/yy, list/dict literals
    Audio/<track_id>.<fmt>             previews: synthesised music (harmonic chords, drums, noise)
    manifest.parquet                   track_id, audio_uri, lyrics: the input of ``hitmusic extract``
    popularity_truth.parquet           the hidden generative factors per track, for tests and curious users

The hidden popularity function
------------------------------
Each artist has a latent appeal ``q ~ N(0, 1)`` that sets ``artist_popularity = clip(50 + 15 q + N(0, 5))``
and ``followers = round(exp(9 + 1.8 q + N(0, 0.5)))``. Each track draws, around its artist's style,
``brightness`` (harmonic roll-off; raises spectral centroid), ``noisiness`` (share of broadband noise; raises
ZCR and flattens the spectrum), ``tempo`` in BPM (drum rate) and whether it has lyrics and how many lines.
The raw score is::

    z = 0.55 q_pop + 0.35 q_fol + 0.45 brightness_z - 0.35 noisiness_z - 0.25 |tempo - 118| / 25
        + 0.30 lyrics_z + N(0, 0.35)

where ``q_pop``, ``q_fol`` are the standardised artist popularity and log-followers actually written to the
tables, ``brightness_z``/``noisiness_z`` the standardised track parameters, and ``lyrics_z`` is -1.5 for
instrumentals and the standardised number of lyric lines otherwise. Popularity is
``clip(round(40 + 16.8 * (z - mean z) / sd z), 0, 100)``, shaped like SPD (mean about 40, sd about 16.8).
Everything derives from ``SynthConfig.seed``: the same seed gives byte-identical tables and audio.
"""

from __future__ import annotations

import string
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from .config import SynthConfig
from .data import DATA_SOURCES

MARKETS = ["AD", "AE", "AR", "AT", "AU", "BE", "BG", "BH", "BO", "BR", "CA", "CH", "CL", "CO", "CR", "CY", "CZ",
           "DE", "DK", "DO", "DZ", "EC", "EE", "EG", "ES", "FI", "FR", "GB", "GR", "GT", "HK", "HN", "HU", "ID",
           "IE", "IL", "IN", "IS", "IT", "JO", "JP", "KW", "LB", "LI", "LT", "LU", "LV", "MA", "MC", "MT", "MX",
           "MY", "NI", "NL", "NO", "NZ", "OM", "PA", "PE", "PH", "PL", "PS", "PT", "PY", "QA", "RO", "SA", "SE",
           "SG", "SK", "SV", "TH", "TN", "TR", "TW", "US", "UY", "VN", "ZA"]
GENRES = ["pop", "dance pop", "edm", "rock", "indie rock", "hip hop", "rap", "soul", "r&b", "latin",
          "reggaeton", "sertanejo", "jazz", "classical", "folk"]
PLAYLISTS = ["Hipsteribrunssi", "Top Hits", "Chill Vibes", "Workout", "Indie Mix", "Latin Party"]
COUNTRIES = ["BE", "BR", "DE", "ES", "FR", "GB", "MX", "US"]
_WORDS = {
    "en": ("love night heart baby dance feel fire light dream time world know want never always tonight "
           "forever away home road rain sun sky hold tell come stay go run fall rise shine broken golden "
           "tender sweet wild free lonely crazy money city street summer").split(),
    "es": ("amor noche corazón bailar sentir fuego luz sueño tiempo mundo quiero nunca siempre hoy "
           "contigo camino lluvia cielo vida loco dulce libre solo ciudad calle verano besos").split(),
    "pt": ("amor noite coração dançar sentir fogo luz sonho tempo mundo quero nunca sempre hoje "
           "contigo caminho chuva céu vida louco doce livre sozinho cidade rua verão saudade").split(),
}
_FILLERS = {"en": "i you we the a my your in on and to of".split(),
            "es": "yo tú el la mi tu en y de que por".split(),
            "pt": "eu você o a meu seu em e de que por".split()}
_ALPHABET = string.ascii_letters + string.digits


def spotify_id(rng: np.random.Generator) -> str:
    """A 22-character base-62 id like Spotify's."""
    return "".join(rng.choice(list(_ALPHABET), 22))


def _z(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    sd = x.std()
    return (x - x.mean()) / (sd if sd > 0 else 1.0)


def synth_audio(rng: np.random.Generator, duration_s: float, sr: int, *, brightness: float, noisiness: float,
                tempo: float, root_hz: float) -> np.ndarray:
    """A music-like clip ``(n_samples,)`` float32 in [-1, 1]: a chord progression of harmonic tones whose
    harmonic roll-off follows ``brightness`` (0 dull .. 1 bright), drum hits at ``tempo`` BPM, and broadband
    noise at share ``noisiness``."""
    n = int(round(duration_s * sr))
    t = np.arange(n) / sr
    bar = 4 * 60.0 / tempo
    progression = np.array([0, 5, 7, 3])  # semitone offsets of the chord roots, one per bar
    # One period of a harmonic tone whose harmonic k has amplitude k^-rolloff, read as a wavetable: the
    # same spectrum as summing sinusoids, at a fraction of the cost.
    n_harm, table_size = 10, 4096
    rolloff = 0.6 + 3.0 * (1.0 - brightness)
    phase_grid = np.arange(table_size) / table_size
    harmonics = np.arange(1, n_harm + 1)
    table = (harmonics ** -rolloff) @ np.sin(2 * np.pi * np.outer(harmonics, phase_grid))
    roots = root_hz * 2.0 ** (progression[(t // bar).astype(int) % len(progression)] / 12)
    tonal = np.zeros(n)
    for interval in (0, 4, 7):
        f = roots * 2 ** (interval / 12)
        # keep harmonics under Nyquist: the table's top harmonic is n_harm * f
        f = np.minimum(f, sr / (2 * n_harm))
        phase = (np.cumsum(f) / sr + rng.uniform()) % 1.0
        tonal += table[(phase * table_size).astype(int)]
    tonal /= np.max(np.abs(tonal)) + 1e-9
    beat = 60.0 / tempo
    since_beat = t % beat
    # a kick (decaying 55 Hz tone) with a short noise click: rhythm without masking the tonal spectrum
    drums = np.exp(-since_beat / 0.08) * np.sin(2 * np.pi * 55 * since_beat)
    drums += 0.3 * np.exp(-since_beat / 0.01) * rng.standard_normal(n)
    noise = rng.standard_normal(n)
    y = 0.8 * tonal + 0.5 * drums + noisiness * 0.1 * noise
    y *= 0.5 / (np.max(np.abs(y)) + 1e-9)
    return y.astype(np.float32)


def chorus_layout(rng: np.random.Generator, duration_s: float, chorus_s: float) -> tuple[float, float]:
    """Seeded starts (s) of a chorus played twice in a track of ``duration_s``: the first between 15 % and
    40 % of the track, the second after a verse of 10-30 s, both ending before the track does."""
    first = rng.uniform(0.15, 0.40) * duration_s
    second = first + chorus_s + rng.uniform(10.0, 30.0)
    if second + chorus_s > duration_s:  # a short track: the second chorus ends the track
        second = max(first + chorus_s, duration_s - chorus_s)
    return float(first), float(second)


def synth_full_track(rng: np.random.Generator, duration_s: float, sr: int, chorus_s: float,
                     **style) -> tuple[np.ndarray, tuple[float, float]]:
    """A full-length track ``(n_samples,)`` float32: verses from :func:`synth_audio` at a quarter of the
    chorus's level, and one chorus (brighter: roll-off of ``brightness + 0.2``; 4x the verses' amplitude)
    played at both starts of :func:`chorus_layout`. Returns the track and the two chorus starts in seconds."""
    starts = chorus_layout(rng, duration_s, chorus_s)
    y = 0.25 * synth_audio(rng, duration_s, sr, **style)
    chorus = synth_audio(rng, chorus_s, sr, **{**style, "brightness": min(1.0, style["brightness"] + 0.2)})
    for s in starts:
        a = int(round(s * sr))
        part = chorus[:max(0, len(y) - a)]
        y[a:a + len(part)] = part
    return y, starts


def synth_lyrics(rng: np.random.Generator, lang: str, n_lines: int, repetition: float) -> str:
    """Lyrics of ``n_lines`` lines (``\\r\\n``-separated like SPD), verses plus a chorus repeated with
    probability ``repetition``."""
    vocab, fillers = _WORDS[lang], _FILLERS[lang]

    def line() -> str:
        k = int(rng.integers(3, 9))
        return " ".join(rng.choice(fillers) if rng.random() < 0.35 else rng.choice(vocab) for _ in range(k))

    chorus = [line().capitalize() for _ in range(2)]
    lines: list[str] = []
    while len(lines) < n_lines:
        if rng.random() < repetition:
            lines.extend(chorus)
        else:
            lines.extend(line().capitalize() for _ in range(4))
            lines.append("")  # blank line between verses, as in SPD's lyrics
    return "\r\n" + "\r\n".join(lines[:n_lines]) + "\r\n"


def generate(root: str | Path, cfg: SynthConfig = SynthConfig()) -> dict[str, Path]:
    """Write a sample catalogue under ``root``; returns the paths written. Deterministic in ``cfg.seed``."""
    root = Path(root)
    (root / DATA_SOURCES).mkdir(parents=True, exist_ok=True)
    audio_dir = root / "Audio"
    audio_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    n = cfg.n_tracks
    n_artists = max(1, int(np.ceil(n / cfg.tracks_per_artist)))

    # artists
    q = rng.standard_normal(n_artists)
    artist_ids = [spotify_id(rng) for _ in range(n_artists)]
    artist_pop = np.clip(np.round(50 + 15 * q + rng.normal(0, 5, n_artists)), 0, 100).astype(int)
    followers = np.round(np.exp(9 + 1.8 * q + rng.normal(0, 0.5, n_artists))).astype(int)
    style_bright = rng.uniform(0.15, 0.85, n_artists)
    style_noise = rng.uniform(0.05, 0.45, n_artists)
    style_tempo = rng.uniform(80, 150, n_artists)
    artist_lang = rng.choice(list(_WORDS), n_artists, p=[0.6, 0.25, 0.15])
    artist_genres = [sorted({str(g) for g in rng.choice(GENRES, int(rng.integers(0, 4)))}) for _ in range(n_artists)]
    artist_names = [" ".join(w.capitalize() for w in rng.choice(_WORDS["en"], 2)) for _ in range(n_artists)]

    # tracks: artist i gets tracks i, i + n_artists, ... so every artist has about tracks_per_artist tracks
    track_artist = np.arange(n) % n_artists
    brightness = np.clip(style_bright[track_artist] + rng.normal(0, 0.12, n), 0.0, 1.0)
    noisiness = np.clip(style_noise[track_artist] + rng.normal(0, 0.08, n), 0.0, 0.8)
    tempo = np.clip(style_tempo[track_artist] + rng.normal(0, 10, n), 60, 180)
    instrumental = rng.random(n) < 0.12
    n_lines = np.where(instrumental, 0, rng.integers(8, 48, n))
    repetition = rng.uniform(0.1, 0.6, n)
    root_hz = 110 * 2 ** (rng.integers(0, 12, n) / 12)
    track_ids = [spotify_id(rng) for _ in range(n)]
    album_ids = [spotify_id(rng) for _ in range(n)]

    lyrics_z = np.where(instrumental, -1.5, 0.0)
    lyrics_z[~instrumental] = _z(n_lines[~instrumental]) if (~instrumental).sum() > 1 else 0.0
    q_pop = _z(artist_pop[track_artist])
    q_fol = _z(np.log1p(followers[track_artist]))
    z = (0.55 * q_pop + 0.35 * q_fol + 0.45 * _z(brightness) - 0.35 * _z(noisiness)
         - 0.25 * np.abs(tempo - 118) / 25 + 0.30 * lyrics_z + rng.normal(0, 0.35, n))
    popularity = np.clip(np.round(40 + 16.8 * _z(z)), 0, 100).astype(int)

    lyrics, audio_paths = [], []
    # full-length tracks draw their audio from a generator of their own (the tables' popularity model is the
    # previews' one; the lyrics, drawn after each track's audio, differ)
    track_rng = np.random.default_rng([cfg.seed, 1]) if cfg.full_length else rng
    chorus_starts = np.full((n, 2), np.nan)
    durations = np.full(n, float(cfg.duration_s))
    for i in range(n):
        lang = artist_lang[track_artist[i]]
        lyrics.append("" if instrumental[i] else synth_lyrics(rng, lang, int(n_lines[i]), repetition[i]))
        style = dict(brightness=brightness[i], noisiness=noisiness[i], tempo=tempo[i], root_hz=root_hz[i])
        if cfg.full_length:
            durations[i] = track_rng.uniform(*cfg.full_length_s)
            y, chorus_starts[i] = synth_full_track(track_rng, durations[i], cfg.sr, cfg.chorus_s, **style)
        else:
            y = synth_audio(rng, cfg.duration_s, cfg.sr, **style)
        path = audio_dir / f"{track_ids[i]}.{cfg.audio_format}"
        sf.write(path, y, cfg.sr, format=cfg.audio_format.upper(),
                 subtype="PCM_16" if cfg.audio_format in ("wav", "flac") else None)
        audio_paths.append(path.resolve())

    markets = [str(sorted(str(m) for m in rng.choice(MARKETS, int(rng.integers(1, len(MARKETS) + 1)), replace=False)))
               for _ in range(n)]
    release = [f"{int(rng.integers(1, 13))}/{int(rng.integers(1, 29))}/{int(rng.integers(0, 20)):02d}"
               for _ in range(n)]
    tracks = pd.DataFrame({
        "acousticness": rng.uniform(0, 1, n).round(4), "album_id": album_ids,
        "analysis_url": [f"https://api.spotify.com/v1/audio-analysis/{t}" for t in track_ids],
        "artists_id": [str([artist_ids[a]]) for a in track_artist], "available_markets": markets,
        "country": rng.choice(COUNTRIES, n), "danceability": rng.uniform(0, 1, n).round(3),
        "disc_number": 1, "duration_ms": rng.integers(90_000, 420_000, n),
        "energy": rng.uniform(0, 1, n).round(3), "href": [f"https://api.spotify.com/v1/tracks/{t}" for t in track_ids],
        "id": track_ids, "instrumentalness": np.where(instrumental, 0.9, 0.0).round(3),
        "key": rng.integers(0, 12, n), "liveness": rng.uniform(0, 1, n).round(3),
        "loudness": rng.uniform(-20, -3, n).round(3), "lyrics": lyrics, "mode": rng.integers(0, 2, n),
        "name": [" ".join(rng.choice(_WORDS["en"], 2)).title() for _ in range(n)],
        "playlist": rng.choice(PLAYLISTS, n), "popularity": popularity,
        "preview_url": [p.as_uri() for p in audio_paths], "speechiness": rng.uniform(0, 0.5, n).round(4),
        "tempo": tempo.round(3), "time_signature": 4,
        "track_href": [f"https://api.spotify.com/v1/tracks/{t}" for t in track_ids],
        "track_name_prev": [f"track_{i % 50}" for i in range(n)], "track_number": rng.integers(1, 15, n),
        "uri": [f"spotify:track:{t}" for t in track_ids], "valence": rng.uniform(0, 1, n).round(3),
        "type": "track",
    })
    first_track = {a: track_ids[int(np.flatnonzero(track_artist == a)[0])] for a in range(n_artists)}
    artists = pd.DataFrame({
        "artist_popularity": artist_pop, "followers": followers, "genres": [str(g) for g in artist_genres],
        "id": artist_ids, "name": artist_names, "track_id": [first_track[a] for a in range(n_artists)],
        "track_name_prev": [f"track_{a % 50}" for a in range(n_artists)], "type": "artist",
    })
    albums = pd.DataFrame({
        "album_type": rng.choice(["album", "single", "compilation"], n),
        "artist_id": [artist_ids[a] for a in track_artist], "available_markets": markets,
        "external_urls": [str({"spotify": f"https://open.spotify.com/album/{a}"}) for a in album_ids],
        "href": [f"https://api.spotify.com/v1/albums/{a}" for a in album_ids], "id": album_ids,
        "images": "[]", "name": [" ".join(rng.choice(_WORDS["en"], 3)).title() for _ in range(n)],
        "release_date": release, "release_date_precision": "day", "total_tracks": rng.integers(1, 20, n),
        "track_id": track_ids, "track_name_prev": [f"track_{i % 50}" for i in range(n)],
        "uri": [f"spotify:album:{a}" for a in album_ids], "type": "album",
    })
    paths = {
        "tracks": root / DATA_SOURCES / "spotify_tracks.csv",
        "artists": root / DATA_SOURCES / "spotify_artists.csv",
        "albums": root / DATA_SOURCES / "spotify_albums.csv",
        "manifest": root / "manifest.parquet",
        "truth": root / "popularity_truth.parquet",
    }
    # SPD's tracks and artists files start with a byte-order mark; its albums file does not.
    tracks.to_csv(paths["tracks"], encoding="utf-8-sig")
    artists.to_csv(paths["artists"], encoding="utf-8-sig")
    albums.to_csv(paths["albums"], encoding="utf-8")
    pd.DataFrame({"track_id": track_ids, "audio_uri": [str(p) for p in audio_paths],
                  "lyrics": lyrics}).to_parquet(paths["manifest"], index=False)
    pd.DataFrame({"track_id": track_ids, "artist_id": [artist_ids[a] for a in track_artist],
                  "popularity": popularity, "brightness": brightness, "noisiness": noisiness, "tempo": tempo,
                  "n_lyric_lines": n_lines, "artist_appeal": q[track_artist], "duration_s": durations,
                  "chorus_start_s": chorus_starts[:, 0], "chorus2_start_s": chorus_starts[:, 1],
                  }).to_parquet(paths["truth"], index=False)
    (root / "synth_config.json").write_text(pd.Series(asdict(cfg)).to_json(indent=2))
    return paths
