"""Log-mel segments of a track, the input of the CNN families (Yu et al. 2018, section 2.5).

Arrays in, arrays out, in the spirit of ``librosa.feature``: ``y`` is mono float32 at ``MelConfig.sr``; a
log-mel spectrogram is ``(n_mels, n_frames)`` float32 in dB; a segment is ``(n_mels, MelConfig.n_frames)``
(323 frames for 30 s at 22,050 Hz, hop 2,048).

Two segments per track, as in the paper:

- **Mid-30**: the middle ``segment_s`` seconds;
- **HL-30**: a highlight, chosen without training as the ``segment_s`` window of greatest mean power
  (:func:`highlight_start`): a chorus is, in most popular music, the loudest full-band part of a track and
  the part that returns. Ties go to the earliest window.

For a track no longer than the segment both are the whole track, padded at the end with silence
(:data:`FLOOR_DB`) to the segment's frame count. The spectrogram is computed once over the whole track and
both segments are slices of it, so a segment's frames are those of the whole track (at most one frame at
each edge differs from analysing the cut clip alone, which would pad it with zeros).
"""

from __future__ import annotations

import numpy as np

from .config import MelConfig

SEGMENTS = ("mid30", "hl30")
FLOOR_DB = -100.0  # 10 log10 of the power floor, 1e-10: silence
AMIN = 1e-10


def log_mel(y: np.ndarray, sr: int, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """Log-mel spectrogram ``(n_mels, 1 + len(y) // hop_length)`` float32 in dB of mono ``y`` at ``sr`` Hz
    (must be ``cfg.sr``): ``librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=4096,
    hop_length=2048, window="hamming", n_mels=128, fmin=0), ref=1, amin=1e-10, top_db=None)``, computed in
    single precision with the project's banded filter product."""
    from . import audio  # librosa underneath: loaded by what analyses audio, not by what only reads segments

    if sr != cfg.sr:
        raise ValueError(f"log-mel segments are analysed at {cfg.sr} Hz, got audio at {sr} Hz")
    S = audio.stft_magnitude(audio.frame(np.asarray(y, np.float32), cfg.n_fft, cfg.hop_length), cfg.window)
    M = audio.mel_power(S, sr, cfg)
    return (10.0 * np.log10(np.maximum(M, AMIN))).astype(np.float32)


def frame_power(M_db: np.ndarray) -> np.ndarray:
    """Mean power over the mel bands of each frame, ``(n_frames,)`` (linear, float64)."""
    return np.power(10.0, np.asarray(M_db, np.float64) / 10.0).mean(axis=0)


def mid_start(n_frames: int, width: int) -> int:
    """First frame of the middle ``width`` frames of ``n_frames`` (0 when the track is no longer)."""
    return max(0, (int(n_frames) - int(width)) // 2)


def highlight_start(M_db: np.ndarray, width: int) -> int:
    """First frame of the ``width``-frame window of greatest mean power of a log-mel spectrogram ``(n_mels,
    n_frames)`` (0 when the track is no longer than ``width``; ties to the earliest)."""
    e = frame_power(M_db)
    if len(e) <= width:
        return 0
    c = np.concatenate([[0.0], np.cumsum(e)])
    return int(np.argmax(c[width:] - c[:-width]))


def take(M_db: np.ndarray, start: int, width: int) -> np.ndarray:
    """Frames ``start .. start + width`` of ``M_db`` ``(n_mels, width)`` float32, padded with
    :data:`FLOOR_DB` past the end."""
    out = np.full((M_db.shape[0], width), FLOOR_DB, dtype=np.float32)
    part = M_db[:, start:start + width]
    out[:, :part.shape[1]] = part
    return out


def segment_starts(M_db: np.ndarray, cfg: MelConfig = MelConfig()) -> dict[str, int]:
    """First frame of each of :data:`SEGMENTS` in a whole track's log-mel spectrogram."""
    if cfg.highlight != "energy":
        raise ValueError(f"unknown highlight method {cfg.highlight!r}; this version has 'energy'")
    width = cfg.n_frames
    return {"mid30": mid_start(M_db.shape[1], width), "hl30": highlight_start(M_db, width)}


def segments(y: np.ndarray, sr: int, cfg: MelConfig = MelConfig()) -> dict[str, tuple[np.ndarray, float]]:
    """Each of :data:`SEGMENTS` of a track: ``name -> (segment (n_mels, cfg.n_frames) float32 dB, start in
    seconds)``."""
    M = log_mel(y, sr, cfg)
    return {name: (take(M, s, cfg.n_frames), s * cfg.hop_length / cfg.sr)
            for name, s in segment_starts(M, cfg).items()}
