"""The audio features of :mod:`hitmodels.audio`, batched in PyTorch for a GPU (or, for tests, the CPU).

The same features, names and statistics as :func:`hitmodels.audio.audio_features`, computed for a batch of
clips at once: the STFTs, mel filter bank, DCT, spectral contrast/centroid/bandwidth/roll-off, ZCR, energy
entropy, the tuning estimate's peak picking, the constant-Q filter products, chroma and tonnetz run as batched
tensor operations on ``device``. The matrices are the NumPy path's own (librosa's mel filters, contrast
bands, CQT kernels and plan from :mod:`hitmodels.audio`; the DCT, chroma map and tonnetz basis from the same
librosa calls), converted once per ``(sr, cfg, device)`` and cached there.

Three pieces stay on the CPU, per clip, with the NumPy path's code:

* the CQT's octave resampling (``audio.cqt_pyramid``, soxr's ``soxr_hq``): no torch resampler reproduces that
  filter, and the octaves' filter responses depend on its passband and transition band; it costs ~20-30 ms
  per 30 s clip, less than decoding the MP3;
* the last step of the tuning estimate (``audio.tuning_from_peaks``: median and histogram over the few
  thousand peaks that the device picks), data-dependent and tiny;
* the summary statistics (``audio.summarise`` on each clip's valid frames), so the columns and their order
  are those of the NumPy path by construction.

Clips of different lengths are zero-padded to the batch's longest and masked, not grouped by length: decoded
previews differ by a sample or a few (1,323,000 vs 1,323,001 at 44.1 kHz), so grouping would leave batches of
one. Zero padding is exact for every feature whose frames librosa pads with zeros (STFTs, CQT, energy
entropy): a clip's own frames see the same samples either way. ZCR pads each clip's edges with its own edge
sample (librosa's ``mode="edge"``), gathered per clip. Frames past a clip's own count are left out of every
per-clip reduction: the dB scale's 80 dB floor (MFCC, contrast) and the summary statistics.

Precision: float32 as in the NumPy path (energy entropy, tonnetz and the statistics in float64). Matrix
products are held to full float32 (no TF32) while a batch runs. The largest relative deviation of any
statistic from the naive librosa reference, measured as ``tests/test_features.py`` does, must stay within
1e-3 (``tests/test_features_torch.py``); with torch on the CPU it is 3.3e-5 on the four real previews (the
NumPy path's: 2.4e-5), and each clip's frames match the NumPy path's to ~1e-5 of their scale, roll-off bins
exactly.

On the CPU this path is slower than the NumPy one (~2x per clip; its FFTs, sorts and the roll-off's running
sum do more work than the NumPy path's tuned loops): it is there for GPUs, and runs on the CPU for testing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import librosa
import numpy as np
import torch
import torch.nn.functional as F

from . import audio
from .audio import _TUNING_N_FFT, _TUNING_WINDOW
from .config import FeatureConfig

_TUNING_HOP = _TUNING_N_FFT // 4  # the hop of frame_features' Hann STFT for the tuning estimate
_TUNING_THRESHOLD = 0.1  # estimate_tuning's default: peaks below 10 % of the frame's maximum are ignored
_ZCR_THRESHOLD = 1e-10  # librosa's zero_crossing_rate default: |y| <= this counts as zero


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def full_float32():
    """Matrix products and convolutions in full float32 while inside: TF32 (torch's or cuDNN's opt-in, or a
    caller's ``set_float32_matmul_precision("high")``) keeps 10 mantissa bits, ~1e-3 relative, the whole
    parity budget. Restores the caller's settings on exit."""
    precision, cudnn_tf32 = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


# ---- constants per (sr, cfg, device) -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Constants:
    window: torch.Tensor  # (n_fft,) float32: cfg.window, as the NumPy path's STFT
    tuning_window: torch.Tensor  # (_TUNING_N_FFT,) float32 Hann
    mel: torch.Tensor  # (n_mels, 1 + n_fft // 2) float32 Slaney mel filters, fmin to sr / 2
    dct: torch.Tensor  # (n_mfcc, n_mels) float32 orthonormal DCT-II rows
    freqs: torch.Tensor  # (1 + n_fft // 2,) float64 bin frequencies, Hz
    moments: torch.Tensor  # (3, 1 + n_fft // 2) float32 rows [1, f, f^2] for centroid and bandwidth
    contrast_bands: tuple  # ((lo, hi, n_q), ...) rows of each contrast band and its quantile's bin count
    tuning_band: tuple | None  # (lo, hi, first, last) rows of the Hann STFT the tuning estimate reads
    tuning_rows: torch.Tensor | None  # (hi - lo - 2, 1) bool: interior rows within [first, last]
    tuning_bins: torch.Tensor | None  # (hi - lo - 2, 1) float64 bin numbers of the interior rows
    chroma: torch.Tensor  # (n_chroma, n_cqt_bins) float32 CQT-to-chroma map
    tonnetz: torch.Tensor  # (6, n_chroma) float64 tonal-centroid basis


@lru_cache(maxsize=8)
def _constants(sr: int, cfg: FeatureConfig, device: torch.device) -> _Constants:
    n_bins = 1 + cfg.n_fft // 2
    mel = np.zeros((cfg.n_mels, n_bins), dtype=np.float32)
    for m0, m1, lo, hi, w in audio._mel_bands(sr, cfg.n_fft, cfg.n_mels, float(cfg.fmin)):
        mel[m0:m1, lo:hi] = w.T  # the banded pieces of the NumPy path, back into one dense bank
    # mfcc and tonnetz are linear maps (after the dB scale, after L1 normalisation): applied to an identity
    # they give their own matrices, so the coefficients are librosa's without restating its formulas
    dct = librosa.feature.mfcc(S=np.eye(cfg.n_mels), n_mfcc=cfg.n_mfcc)
    tonnetz = librosa.feature.tonnetz(chroma=np.eye(cfg.n_chroma))
    n_cqt = cfg.chroma_n_octaves * cfg.chroma_bins_per_octave
    chroma = librosa.filters.cq_to_chroma(n_cqt, bins_per_octave=cfg.chroma_bins_per_octave, n_chroma=cfg.n_chroma)
    freqs = librosa.fft_frequencies(sr=sr, n_fft=cfg.n_fft)
    band = audio.tuning_band(sr, _TUNING_N_FFT)
    rows = bins = None
    if band is not None:
        lo, hi, first, last = band
        interior = np.arange(lo + 1, hi - 1)
        rows = torch.as_tensor((interior >= first) & (interior <= last), device=device)[:, None]
        bins = torch.as_tensor(interior, dtype=torch.float64, device=device)[:, None]

    def f32(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)

    return _Constants(
        window=f32(audio._window(cfg.window, cfg.n_fft)),
        tuning_window=f32(audio._window(_TUNING_WINDOW, _TUNING_N_FFT)),
        mel=f32(mel), dct=f32(dct),
        freqs=torch.as_tensor(freqs, dtype=torch.float64, device=device),
        moments=f32(np.stack([np.ones_like(freqs), freqs, freqs**2])),
        contrast_bands=audio._contrast_bands(sr, cfg.n_fft, float(cfg.contrast_fmin), cfg.contrast_n_bands, 0.02),
        tuning_band=band, tuning_rows=rows, tuning_bins=bins,
        chroma=f32(chroma), tonnetz=torch.as_tensor(tonnetz, dtype=torch.float64, device=device))


# ---- building blocks: batch-first tensors, (batch, n_dims, n_frames) ---------------------------------------


def n_frames(lengths: torch.Tensor, frame_length: int, hop_length: int) -> torch.Tensor:
    """Frames ``(batch,)`` of centred, ``frame_length // 2``-padded framing of clips of ``lengths`` samples."""
    return 1 + (lengths + 2 * (frame_length // 2) - frame_length) // hop_length


def frame_mask(counts: torch.Tensor, n: int) -> torch.Tensor:
    """``(batch, n)`` bool: True for each clip's first ``counts[b]`` frames."""
    return torch.arange(n, device=counts.device)[None, :] < counts[:, None]


def stft_magnitude(y: torch.Tensor, n_fft: int, hop_length: int, window: torch.Tensor) -> torch.Tensor:
    """|STFT| ``(batch, 1 + n_fft // 2, 1 + n_samples // hop_length)`` float32 of ``y (batch, n_samples)``:
    centred frames, zero padding, as ``audio.stft_magnitude(audio.frame(...))``."""
    spec = torch.stft(y, n_fft, hop_length, window=window, center=True, pad_mode="constant", return_complex=True)
    return spec.abs()


def power_to_db(S: torch.Tensor, valid: torch.Tensor, amin: float = 1e-10, top_db: float = 80.0) -> torch.Tensor:
    """``librosa.power_to_db(S)`` (ref 1) per clip of ``S (batch, n_dims, n_frames)``: the ``top_db`` floor
    is relative to the clip's maximum over its ``valid (batch, n_frames)`` frames only."""
    db = 10.0 * torch.log10(torch.clamp(S, min=amin))
    peak = db.masked_fill(~valid[:, None, :], -torch.inf).amax(dim=(1, 2), keepdim=True)
    return torch.maximum(db, peak - top_db)


def spectral_centroid_bandwidth(S: torch.Tensor, moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid and bandwidth (p=2) in Hz, float64 ``(batch, 1, n_frames)`` each, of ``S (batch, n_bins,
    n_frames)``: ``audio.spectral_centroid_bandwidth``'s single product with ``[1, f, f^2]``."""
    m = torch.matmul(moments, S).double()  # (batch, 3, n_frames)
    total = torch.where(m[:, 0] > 0, m[:, 0], 1.0)
    centroid = m[:, 1] / total
    bandwidth = torch.sqrt(torch.clamp(m[:, 2] / total - centroid**2, min=0.0))
    return centroid[:, None], bandwidth[:, None]


def spectral_rolloff(S: torch.Tensor, freqs: torch.Tensor, roll_percent: float) -> torch.Tensor:
    """Roll-off frequency ``(batch, 1, n_frames)`` float64 in Hz of ``S (batch, n_bins, n_frames)``.

    The running sum is librosa's float32 one, bin after bin: ``torch.cumsum`` accumulates in double on the
    CPU and in a parallel scan on CUDA, and either moves the odd frame by one bin (21.5 Hz, ~1 % of the
    roll-off's spread), enough to move its min or max. One vector add per bin, over every frame of the batch.
    """
    running = S.clone()
    for k in range(1, running.shape[1]):
        running[:, k].add_(running[:, k - 1])
    below = torch.count_nonzero(running < roll_percent * running[:, -1:], dim=1)
    return freqs[below][:, None]


def spectral_contrast(S: torch.Tensor, bands: tuple, valid: torch.Tensor) -> torch.Tensor:
    """Spectral contrast in dB, float64 ``(batch, n_bands + 1, n_frames)``, of ``S (batch, n_bins,
    n_frames)``: ``audio.spectral_contrast`` with ``bands`` from ``audio._contrast_bands``; the means of the
    quantiles' extreme bins via ``topk`` rather than a full sort."""
    valleys, peaks = [], []
    for lo, hi, n_q in bands:
        band = S[:, lo:hi]
        if n_q == 1:
            valleys.append(band.amin(dim=1))
            peaks.append(band.amax(dim=1))
        else:
            valleys.append(torch.topk(band, n_q, dim=1, largest=False).values.mean(dim=1))
            peaks.append(torch.topk(band, n_q, dim=1, largest=True).values.mean(dim=1))
    valley, peak = torch.stack(valleys, dim=1).double(), torch.stack(peaks, dim=1).double()
    return power_to_db(peak, valid) - power_to_db(valley, valid)


def zero_crossing_rate(y: torch.Tensor, lengths: torch.Tensor, frame_length: int, hop_length: int) -> torch.Tensor:
    """ZCR ``(batch, 1, 1 + max_len // hop_length)`` float64 of ``y (batch, n_samples)`` whose clip ``b``
    holds ``lengths[b]`` samples: ``audio.zero_crossing_rate`` (librosa's edge padding, ``|y| <= 1e-10``
    counts as zero, zero as positive), each clip padded with its own edge samples."""
    half = frame_length // 2
    positions = torch.arange(-half, y.shape[1] + half, device=y.device)[None, :]
    edge = torch.minimum(positions.clamp(min=0), (lengths - 1)[:, None])  # per clip: repeat its last sample
    negative = torch.gather(y, 1, edge) < -torch.tensor(_ZCR_THRESHOLD, dtype=y.dtype, device=y.device)
    changes = torch.zeros(negative.shape, dtype=torch.int64, device=y.device)
    changes[:, 1:] = negative[:, 1:] != negative[:, :-1]
    running = torch.cumsum(changes, dim=1)
    starts = torch.arange(1 + y.shape[1] // hop_length, device=y.device) * hop_length
    counts = running[:, starts + frame_length - 1] - running[:, starts]
    return (counts.double() / frame_length)[:, None]


def energy_entropy(y: torch.Tensor, frame_length: int, hop_length: int, n_blocks: int) -> torch.Tensor:
    """Entropy of energy in bits, float64 ``(batch, 1, n_frames)``, of ``y (batch, n_samples)``: each centred
    (zero-padded) frame's ``n_blocks`` sub-block energy shares, as ``audio.energy_entropy``."""
    sub = frame_length // n_blocks
    sq = F.pad(y.double() ** 2, (frame_length // 2, frame_length // 2))
    frames = sq.unfold(1, frame_length, hop_length)[..., : sub * n_blocks]  # a view: (batch, n_frames, n)
    e = frames.reshape(*frames.shape[:2], n_blocks, sub).sum(dim=3)  # sums of 204 zeros stay exactly 0
    p = e / (e.sum(dim=2, keepdim=True) + 1e-12)
    return -(p * torch.log2(p + 1e-12)).sum(dim=2)[:, None]


def tuning_peaks(H: torch.Tensor, valid: torch.Tensor, sr: int, c: _Constants) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per clip, the interpolated frequencies (Hz) and heights of the spectral peaks that
    ``audio.estimate_tuning`` picks, ``(n_peaks,)`` float32 each, from a Hann |STFT| ``H (batch,
    1 + n_fft // 2, n_frames)`` whose ``valid (batch, n_frames)`` frames belong to the clip. Feed each pair
    to ``audio.tuning_from_peaks``."""
    if c.tuning_band is None:
        return [(np.zeros(0, np.float32), np.zeros(0, np.float32))] * H.shape[0]
    lo, hi = c.tuning_band[:2]
    n_fft = 2 * (H.shape[1] - 1)
    x = H[:, lo:hi]
    xt = x * (x > _TUNING_THRESHOLD * H.amax(dim=1, keepdim=True))
    peak = (xt[:, 1:-1] > xt[:, :-2]) & (xt[:, 1:-1] >= xt[:, 2:]) & c.tuning_rows & valid[:, None, :]
    left, mid, right = x[:, :-2], x[:, 1:-1], x[:, 2:]
    a = (right + left) - 2 * mid
    b = (right - left) / 2
    shift = torch.where(b.abs() >= a.abs(), torch.zeros_like(a), -b / a)
    # bin + shift in double, then float32, as numpy promotes int64 + float32
    pitch = ((c.tuning_bins + shift.double()) * float(sr) / n_fft).float()
    mag = mid + 0.5 * b * shift
    # only the peaks travel to the CPU, clip after clip in the mask's row-major order
    splits = np.cumsum(peak.sum(dim=(1, 2)).cpu().numpy())[:-1]
    pitch, mag = np.split(pitch[peak].cpu().numpy(), splits), np.split(mag[peak].cpu().numpy(), splits)
    return list(zip(pitch, mag))


def _kernels(plans: Sequence[audio.CqtPlan], octave: int, device: torch.device) -> torch.Tensor:
    """The octave's CQT kernels of each clip's plan, ``(batch, n_fft, 2 * m)`` float32; a shorter kernel is
    centred in zeros to the longest's ``n_fft`` (the same response: frames are centred on their hop)."""
    Ws = [p.octaves[octave].kernel for p in plans]
    n = max(W.shape[0] for W in Ws)
    out = np.zeros((len(Ws), n, Ws[0].shape[1]), dtype=np.float32)
    for i, W in enumerate(Ws):
        off = (n - W.shape[0]) // 2
        out[i, off:off + W.shape[0]] = W
    return torch.as_tensor(out, device=device)


def _stack(signals: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """Zero-padded ``(batch, max_len)`` float32 tensor of 1-D signals."""
    out = np.zeros((len(signals), max(len(s) for s in signals)), dtype=np.float32)
    for i, s in enumerate(signals):
        out[i, : len(s)] = s
    return torch.as_tensor(out, device=device)


def cqt_magnitude(pyramids: Sequence[list[np.ndarray]], plans: Sequence[audio.CqtPlan],
                  device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """|CQT| ``(batch, n_bins, n_frames)`` float32 and each clip's frame count, from each clip's signal
    pyramid (``audio.cqt_pyramid``, on the CPU) and plan, which must share their structure (hops, levels,
    bins) and may differ in tuning. Each octave is one batched product of the frames with the clips' kernels,
    as ``audio.cqt_magnitude``'s ``framed_dot``; frames past a clip's count hold garbage."""
    first = plans[0]
    counts = [min(1 + len(pyr[o.level]) // o.hop for o in first.octaves) for pyr in pyramids]
    n_bins = first.octaves[0].hi
    out = torch.zeros((len(plans), max(counts), n_bins), dtype=torch.float32, device=device)
    kernels: dict[tuple, torch.Tensor] = {}  # octaves with the same relative frequencies share their kernel
    for i, o in enumerate(first.octaves):
        key = tuple(id(p.octaves[i].kernel) for p in plans)
        if key not in kernels:
            kernels[key] = _kernels(plans, i, device)
        W = kernels[key]
        n_fft, m = W.shape[1], W.shape[2] // 2
        x = F.pad(_stack([pyr[o.level] for pyr in pyramids], device), (n_fft // 2, n_fft // 2))
        frames = x.unfold(1, n_fft, o.hop)[:, : out.shape[1]]  # (batch, n_frames, n_fft)
        r = torch.matmul(frames, W)
        keep = o.hi - o.lo
        re, im = r[..., m - keep:m], r[..., 2 * m - keep:]
        out[:, : r.shape[1], o.lo:o.hi] = torch.sqrt(re * re + im * im)
    scale = torch.as_tensor(np.stack([p.scale for p in plans]), device=device)
    return (out * scale[:, None, :]).transpose(1, 2), counts


def chroma_from_cqt(C: torch.Tensor, chroma_map: torch.Tensor) -> torch.Tensor:
    """Chromagram ``(batch, n_chroma, n_frames)`` float32 of a |CQT| ``(batch, n_bins, n_frames)``, each
    frame scaled to max 1: ``librosa.feature.chroma_cqt(C=...)`` (threshold 0, inf-norm, tiny frames left)."""
    chroma = torch.clamp(torch.matmul(chroma_map, C), min=0.0)
    peak = chroma.amax(dim=1, keepdim=True)
    return chroma / torch.where(peak < torch.finfo(chroma.dtype).tiny, 1.0, peak)


def tonnetz_from_chroma(chroma: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Tonal centroids ``(batch, 6, n_frames)`` float64 of a chromagram: ``librosa.feature.tonnetz(chroma=)``
    (L1-normalised frames times ``basis (6, n_chroma)``)."""
    chroma = chroma.double()
    total = chroma.abs().sum(dim=1, keepdim=True)
    return torch.matmul(basis, chroma / torch.where(total < torch.finfo(torch.float32).tiny, 1.0, total))


# ---- a batch -------------------------------------------------------------------------------------------------


def _cqt_groups(plans: Sequence[audio.CqtPlan]) -> dict[tuple, list[int]]:
    """Clip indices by CQT plan structure: a tuning far enough off can change the early downsampling, and
    only clips whose octaves line up share a batched product."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(plans):
        key = (p.early, tuple((o.level, o.hop, o.lo, o.hi, o.kernel.shape[1]) for o in p.octaves))
        groups.setdefault(key, []).append(i)
    return groups


def _frame_features(y: torch.Tensor, lengths: Sequence[int], sr: int, cfg: FeatureConfig,
                    host: Sequence[np.ndarray]) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Every frame-level feature of the batch ``y (batch, n_samples)`` (clip ``b`` in its first
    ``lengths[b]`` samples, zeros after; ``host[b]`` the same clip as a NumPy array, for the resampler), each
    ``(batch, n_dims, n_frames)``, with each clip's frame count per feature."""
    device = y.device
    c = _constants(int(sr), cfg, device)
    L = torch.as_tensor(list(lengths), device=device)
    bpo = cfg.chroma_bins_per_octave

    # Tuning first: the CQT's kernels (and in principle its plan) depend on it, and the CPU needs it to start
    # resampling; while the CPU resamples, the device works through the spectral features queued below.
    H = stft_magnitude(y, _TUNING_N_FFT, _TUNING_HOP, c.tuning_window)
    peaks = tuning_peaks(H, frame_mask(n_frames(L, _TUNING_N_FFT, _TUNING_HOP), H.shape[2]), sr, c)
    del H
    tunings = [audio.tuning_from_peaks(pitch, mag, bins_per_octave=bpo) for pitch, mag in peaks]

    S = stft_magnitude(y, cfg.n_fft, cfg.hop_length, c.window)
    stft_counts = n_frames(L, cfg.n_fft, cfg.hop_length)
    valid = frame_mask(stft_counts, S.shape[2])
    M = torch.matmul(c.mel, S * S)
    centroid, bandwidth = spectral_centroid_bandwidth(S, c.moments)
    feats = {
        "MEL": M,
        "MFCC": torch.matmul(c.dct, power_to_db(M, valid)),
        "Spectral_contrast": spectral_contrast(S, c.contrast_bands, valid),
        "spectral_centroid": centroid,
        "spectral_bandwith": bandwidth,
        "spectral_rollOff": spectral_rolloff(S, c.freqs, cfg.rolloff_percent),
        "ZCR": zero_crossing_rate(y, L, cfg.n_fft, cfg.hop_length),
        "entropy_energy": energy_entropy(y, cfg.n_fft, cfg.hop_length, cfg.energy_entropy_blocks),
    }
    del S

    plans = [audio.cqt_plan(int(sr), cfg.hop_length, None, cfg.chroma_n_octaves * bpo, bpo, t) for t in tunings]
    pyramids = [audio.cqt_pyramid(x, p) for x, p in zip(host, plans)]  # on the CPU: soxr, see the docstring
    chroma_counts = [0] * len(plans)
    parts = []
    for idx in _cqt_groups(plans).values():
        C, counts = cqt_magnitude([pyramids[i] for i in idx], [plans[i] for i in idx], device)
        parts.append((idx, chroma_from_cqt(C, c.chroma)))
        for i, n in zip(idx, counts):
            chroma_counts[i] = n
    if len(parts) == 1:  # the usual case: one group, every clip in order
        chroma = parts[0][1]
    else:
        chroma = torch.zeros((len(plans), cfg.n_chroma, max(part.shape[2] for _, part in parts)), device=device)
        for idx, part in parts:
            chroma[idx, :, : part.shape[2]] = part

    order = [name for name, _ in audio._feature_dims(cfg)]  # frame_features' order
    feats.update({"Chroma": chroma, "Tonnetz": tonnetz_from_chroma(chroma, c.tonnetz)})
    stft_counts = stft_counts.tolist()
    counts = {name: chroma_counts if name in ("Chroma", "Tonnetz") else stft_counts for name in order}
    return {name: feats[name] for name in order}, counts


@audio.compile_serialised
def frame_features_batch(y: torch.Tensor, sr: int, cfg: FeatureConfig = FeatureConfig(),
                         lengths: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Every frame-level feature of a batch of clips, each ``(batch, n_dims, n_frames)``, named and ordered
    as :func:`hitmodels.audio.frame_features`.

    ``y (batch, n_samples)`` float32 on the device to compute on, clip ``b`` in its first ``lengths[b]``
    samples (default: all) and zeros after. Each clip's frames are those ``frame_features`` gives for it
    alone; frames past its own count (shorter clips) are NaN. The CQT's resampling copies each clip to the
    CPU (see the module docstring).
    """
    lengths = [y.shape[1]] * y.shape[0] if lengths is None else [int(n) for n in lengths]
    host = [y[i, :n].detach().cpu().numpy() for i, n in enumerate(lengths)]
    with full_float32(), torch.no_grad():
        feats, counts = _frame_features(y, lengths, sr, cfg, host)
        out = {}
        for name, Fb in feats.items():
            n = torch.as_tensor(counts[name], device=Fb.device)
            out[name] = Fb.masked_fill(~frame_mask(n, Fb.shape[2])[:, None, :], torch.nan)
    return out


@audio.compile_serialised
def audio_features_batch(clips: Sequence[np.ndarray], sr: int, cfg: FeatureConfig = FeatureConfig(),
                         device: torch.device | str | None = None) -> list[dict[str, float]]:
    """All summary audio features of each clip, as :func:`hitmodels.audio.audio_features` gives them (same
    columns, same order, ``audio.summarise``'s statistics), computed as one batch on ``device`` (default:
    CUDA when available, else the CPU).

    ``clips``: mono float32 ``(n_samples,)`` arrays at ``sr`` Hz, each already through ``audio.check_usable``;
    lengths may differ (padded and masked, see the module docstring). Memory on the device grows with
    ``len(clips)`` times the longest clip: ~65 MB per 30 s clip at 44.1 kHz (peak, measured on the CPU).
    """
    if not len(clips):
        return []
    device = default_device() if device is None else torch.device(device)
    host = [np.ascontiguousarray(x, dtype=np.float32) for x in clips]
    with full_float32(), torch.no_grad():
        feats, counts = _frame_features(_stack(host, device), [len(x) for x in host], sr, cfg, host)
        arrays = {name: Fb.cpu().numpy() for name, Fb in feats.items()}
    return [audio.summarise({name: A[i, :, : counts[name][i]] for name, A in arrays.items()})
            for i in range(len(host))]
