"""Decoding previews and the low-level audio features of HitMusicNet (section IV-B).

Numerical functions take arrays and return arrays, librosa-style; shapes are documented as
``(n_bins, n_frames)``. One magnitude STFT is computed per clip and shared by every spectral feature.
"""

from __future__ import annotations

import io
import os
import urllib.parse
import urllib.request
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from .config import FeatureConfig


class AudioError(Exception):
    """A preview that cannot be used. ``reason`` is a short machine-readable code, the message says why."""

    REASONS = ("missing", "empty", "undecodable", "too_short", "silent", "fetch_failed")

    def __init__(self, reason: str, message: str):
        assert reason in self.REASONS, reason
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def fetch_bytes(uri: str, s3_endpoint_url: str | None = None) -> bytes:
    """Bytes of a local path, ``file://``, ``s3://bucket/key`` or ``http(s)://`` URI.

    The S3 endpoint defaults to ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` so S3-compatible stores work.
    """
    if not uri:
        raise AudioError("missing", "no audio URI given")
    parsed = urllib.parse.urlparse(uri)
    try:
        if parsed.scheme == "s3":
            import boto3

            endpoint = s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            obj = boto3.client("s3", endpoint_url=endpoint).get_object(Bucket=parsed.netloc,
                                                                       Key=parsed.path.lstrip("/"))
            data = obj["Body"].read()
        elif parsed.scheme in ("http", "https"):
            with urllib.request.urlopen(uri, timeout=30) as resp:
                data = resp.read()
        else:
            path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else uri)
            if not path.exists():
                raise AudioError("missing", f"file not found: {path}")
            data = path.read_bytes()
    except AudioError:
        raise
    except Exception as exc:  # network and S3 errors come in many classes; all mean "could not fetch"
        raise AudioError("fetch_failed", f"{uri}: {type(exc).__name__}: {exc}") from exc
    if not data:
        raise AudioError("empty", f"{uri} has 0 bytes")
    return data


def decode(data: bytes, sr: int | None = None, name: str = "audio") -> tuple[np.ndarray, int]:
    """Decode MP3/WAV/FLAC/OGG bytes to mono float32 ``(n_samples,)``; resample to ``sr`` if given."""
    if not data:
        raise AudioError("empty", f"{name} has 0 bytes")
    try:
        y, native_sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises LibsndfileError, RuntimeError or TypeError by format
        raise AudioError("undecodable", f"{name}: {exc}") from exc
    y = y.mean(axis=1)
    if sr is not None and sr != native_sr:
        y = librosa.resample(y, orig_sr=native_sr, target_sr=sr, res_type="soxr_hq")
        native_sr = sr
    return np.ascontiguousarray(y, dtype=np.float32), int(native_sr)


def check_usable(y: np.ndarray, sr: int, cfg: FeatureConfig, name: str = "audio") -> None:
    """Raise :class:`AudioError` for clips too short or silent to describe."""
    if y.size == 0:
        raise AudioError("empty", f"{name} decodes to 0 samples")
    if y.size / sr < cfg.min_duration_s:
        raise AudioError("too_short", f"{name} lasts {y.size / sr:.2f} s, at least {cfg.min_duration_s} s needed")
    if not np.all(np.isfinite(y)):
        raise AudioError("undecodable", f"{name} decodes to non-finite samples")
    if float(np.sqrt(np.mean(y.astype(np.float64) ** 2))) < cfg.silence_rms:
        raise AudioError("silent", f"{name} is silent (RMS below {cfg.silence_rms})")


def load(uri: str, cfg: FeatureConfig = FeatureConfig()) -> tuple[np.ndarray, int]:
    """Fetch, decode and check one preview."""
    y, sr = decode(fetch_bytes(uri), cfg.sr, name=uri)
    check_usable(y, sr, cfg, name=uri)
    return y, sr


# ---- frame-level features (arrays in, arrays out) ----------------------------------------------------------


def magnitude_spectrogram(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """|STFT| of ``y``: ``(1 + n_fft // 2, n_frames)``, Hamming window, centred frames."""
    return np.abs(librosa.stft(y, n_fft=cfg.n_fft, hop_length=cfg.hop_length, window=cfg.window, center=True))


def mel_power(S: np.ndarray, sr: int, cfg: FeatureConfig) -> np.ndarray:
    """Mel power spectrogram ``(n_mels, n_frames)`` from a magnitude spectrogram, ``fmin`` to sr/2."""
    fb = librosa.filters.mel(sr=sr, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=sr / 2)
    return fb @ (S**2)


def mfcc_from_mel(M: np.ndarray, n_mfcc: int) -> np.ndarray:
    """MFCC ``(n_mfcc, n_frames)`` of a mel power spectrogram (dB scale, orthonormal DCT-II, as librosa)."""
    return librosa.feature.mfcc(S=librosa.power_to_db(M), n_mfcc=n_mfcc)


def energy_entropy(y: np.ndarray, frame_length: int, hop_length: int, n_blocks: int) -> np.ndarray:
    """Entropy of energy ``(n_frames,)`` in bits: each frame split into ``n_blocks`` sub-blocks whose energy
    shares form the distribution (pyAudioAnalysis' definition). Frames are centred like the STFT's."""
    padded = np.pad(y, frame_length // 2, mode="constant")
    frames = librosa.util.frame(padded, frame_length=frame_length, hop_length=hop_length)
    sub = frame_length // n_blocks
    blocks = frames[: sub * n_blocks].reshape(n_blocks, sub, -1)
    e = np.sum(blocks.astype(np.float64) ** 2, axis=1)
    p = e / (np.sum(e, axis=0, keepdims=True) + 1e-12)
    return -np.sum(p * np.log2(p + 1e-12), axis=0)


def frame_features(y: np.ndarray, sr: int, cfg: FeatureConfig) -> dict[str, np.ndarray]:
    """Every frame-level feature of one clip, each ``(n_dims, n_frames)``, from one shared STFT."""
    S = magnitude_spectrogram(y, cfg)
    M = mel_power(S, sr, cfg)
    freqs = librosa.fft_frequencies(sr=sr, n_fft=cfg.n_fft)
    return {
        "MEL": M,
        "MFCC": mfcc_from_mel(M, cfg.n_mfcc),
        "Spectral_contrast": librosa.feature.spectral_contrast(S=S, sr=sr, n_fft=cfg.n_fft, freq=freqs),
        "spectral_centroid": librosa.feature.spectral_centroid(S=S, sr=sr, freq=freqs),
        "spectral_bandwith": librosa.feature.spectral_bandwidth(S=S, sr=sr, freq=freqs),
        "spectral_rollOff": librosa.feature.spectral_rolloff(S=S, sr=sr, freq=freqs,
                                                             roll_percent=cfg.rolloff_percent),
        "ZCR": librosa.feature.zero_crossing_rate(y, frame_length=cfg.n_fft, hop_length=cfg.hop_length),
        "entropy_energy": energy_entropy(y, cfg.n_fft, cfg.hop_length, cfg.energy_entropy_blocks)[None, :],
    }


def summarise(frames: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-clip statistics with SPD's column names: the mean under SPD's name (``MEL_1``, ``ZCR``...), the
    standard deviation as ``<name>_std``; rolloff also as SPD's ``spectral_rollOff_min``/``_max``."""
    out: dict[str, float] = {}
    for name, F in frames.items():
        mean, std = F.mean(axis=1), F.std(axis=1)
        if F.shape[0] == 1:
            if name == "spectral_rollOff":
                out["spectral_rollOff_min"] = float(F.min())
                out["spectral_rollOff_max"] = float(F.max())
                out["spectral_rollOff_mean"] = float(mean[0])
            else:
                out[name] = float(mean[0])
            out[f"{name}_std"] = float(std[0])
        else:
            for i in range(F.shape[0]):
                out[f"{name}_{i + 1}"] = float(mean[i])
            for i in range(F.shape[0]):
                out[f"{name}_{i + 1}_std"] = float(std[i])
    return out


def audio_features(y: np.ndarray, sr: int, cfg: FeatureConfig = FeatureConfig()) -> dict[str, float]:
    """All summary audio features of one clip as ``{column: value}``."""
    return summarise(frame_features(y, sr, cfg))


def audio_feature_names(cfg: FeatureConfig = FeatureConfig()) -> list[str]:
    """Column names :func:`audio_features` returns, in order, without computing anything heavy."""
    sr = 22050
    y = np.random.default_rng(0).standard_normal(sr).astype(np.float32)
    return list(audio_features(y, sr, cfg))
