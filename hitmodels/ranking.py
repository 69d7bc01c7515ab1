"""Pair sampling and the multi-objective loss of the Siamese families (Yu et al., ICASSP 2018, eq. 1-3).

A Siamese model is one scoring network applied to both songs of a pair (shared weights). Its loss on a batch
of pairs ``(i, j)`` with predicted hit scores ``s`` and true scores ``y`` (popularity / 100) is::

    L = (1 - w) * MSE + w * R
    MSE = mean over the pairs of ((s_i - y_i)^2 + (s_j - y_j)^2) / 2           (eq. 1, both songs rated)
    R   = mean over the pairs with y_i != y_j of max(0, m - sign(y_i - y_j) (s_i - s_j))   (eq. 2, hinge)

so the ranking term asks the better song to score at least ``m`` above the other. Pairs come only from
training rows (callers pass the fit rows of a split, never validation or test rows) and are drawn afresh
each epoch:

- ``naive``: a random permutation cut into consecutive pairs (each track in one pair);
- ``ab``: every pair holds at least one track above the training mean ("A"): each other track ("B") is
  paired with an A track, the A tracks left over with each other;
- ``artist``: both tracks by the same artist, paired within each artist's shuffled tracks (an odd one out
  is paired with another of the same artist); artists with one track contribute none.

Arrays in, arrays out: samplers return ``(n_pairs, 2)`` int64 positions into the rows they were given.
"""

from __future__ import annotations

import numpy as np

SAMPLERS = ("naive", "ab", "artist")


def naive_pairs(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n // 2`` pairs of distinct positions of ``0 .. n - 1``, no position twice."""
    perm = rng.permutation(int(n))
    return perm[: 2 * (len(perm) // 2)].reshape(-1, 2).astype(np.int64)


def ab_pairs(y: np.ndarray, rng: np.random.Generator, mean: float | None = None) -> np.ndarray:
    """Pairs in which at least one track's ``y`` is above ``mean`` (default: the mean of ``y``)."""
    y = np.asarray(y, float)
    mean = float(y.mean()) if mean is None else float(mean)
    a = rng.permutation(np.flatnonzero(y > mean))
    b = rng.permutation(np.flatnonzero(y <= mean))
    if len(a) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    # every B track gets an A partner (A tracks reused in turn when there are more B than A)
    partners = a[np.arange(len(b)) % len(a)]
    pairs = [np.stack([partners, b], axis=1)]
    rest = a[len(b):]
    if len(rest) >= 2:
        pairs.append(rest[: 2 * (len(rest) // 2)].reshape(-1, 2))
    out = np.concatenate(pairs).astype(np.int64)
    return out[rng.permutation(len(out))]


def artist_pairs(artists, rng: np.random.Generator) -> np.ndarray:
    """Pairs of positions with the same artist (``artists``: one label per row)."""
    labels = np.asarray(artists, dtype=object)
    pairs = []
    _, inverse = np.unique(labels.astype(str), return_inverse=True)
    for g in range(inverse.max() + 1 if len(inverse) else 0):
        idx = rng.permutation(np.flatnonzero(inverse == g))
        if len(idx) < 2:
            continue
        pairs.append(idx[: 2 * (len(idx) // 2)].reshape(-1, 2))
        if len(idx) % 2:  # the odd one out with another of the same artist
            pairs.append(np.array([[idx[-1], idx[rng.integers(0, len(idx) - 1)]]]))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    out = np.concatenate(pairs).astype(np.int64)
    return out[rng.permutation(len(out))]


def sample_pairs(kind: str, y: np.ndarray, artists, rng: np.random.Generator, mean: float | None = None) -> np.ndarray:
    """One epoch's pairs of sampler ``kind`` (one of :data:`SAMPLERS`); ``mean``: A/B's split (default: ``y``'s)."""
    if kind == "naive":
        return naive_pairs(len(y), rng)
    if kind == "ab":
        return ab_pairs(y, rng, mean)
    if kind == "artist":
        return artist_pairs(artists, rng)
    raise ValueError(f"unknown pair sampling {kind!r}; choose from {', '.join(SAMPLERS)}")


def score_quantiles(scores: np.ndarray, n: int = 1001) -> list[float]:
    """At most ``n`` quantiles of the training tracks' hit scores, sorted: what a bundle keeps to place a new
    score among them (:func:`percentile`)."""
    scores = np.asarray(scores, float)
    return np.quantile(scores, np.linspace(0, 1, min(n, len(scores)))).tolist() if len(scores) else []


def percentile(scores: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """Percentile (0-100) of each score among the training scores summarised by :func:`score_quantiles`
    (NaN when there are none)."""
    ref = np.asarray(quantiles, float)
    if len(ref) == 0:
        return np.full(len(scores), np.nan)
    return 100.0 * np.searchsorted(ref, np.asarray(scores, float), side="right") / len(ref)


def describe_objective(p: dict) -> str:
    """The training objective of a Siamese family's settings, for a version's description."""
    if p["sampling"] == "none":
        return "rating only (MSE)"
    return f"{p['sampling']} pairs, (1 - {p['w']}) MSE + {p['w']} hinge (margin {p['margin']})"


def siamese_loss(s_i, s_j, y_i, y_j, w: float, margin: float):
    """Eq. 1-3 on torch tensors ``(n_pairs,)``: ``(1 - w) MSE + w hinge``; pairs of equal truth add no
    ranking term."""
    import torch

    mse = 0.5 * ((s_i - y_i) ** 2 + (s_j - y_j) ** 2).mean()
    sign = torch.sign(y_i - y_j)
    hinge = torch.clamp(margin - sign * (s_i - s_j), min=0.0)
    used = sign != 0
    rank = hinge[used].mean() if bool(used.any()) else hinge.sum() * 0.0
    return (1.0 - w) * mse + w * rank


def objective(scores: np.ndarray, truth: np.ndarray, w: float, margin: float) -> float:
    """The same loss over *all* pairs of a set of rows (validation rows: a fixed, sampling-free measure to stop
    and select on): ``(1 - w) MSE + w`` mean hinge over every pair of different truth. ``O(n^2)`` memory in
    blocks of 1,024 rows."""
    s, y = np.asarray(scores, float), np.asarray(truth, float)
    mse = float(np.mean((s - y) ** 2)) if len(s) else 0.0
    if w == 0 or len(s) < 2:
        return (1.0 - w) * mse
    total, count = 0.0, 0
    for a in range(0, len(s), 1024):
        sign = np.sign(y[a:a + 1024, None] - y[None, :])
        hinge = np.maximum(0.0, margin - sign * (s[a:a + 1024, None] - s[None, :]))
        used = sign != 0
        total += float(hinge[used].sum())
        count += int(used.sum())
    return (1.0 - w) * mse + w * (total / count if count else 0.0)
