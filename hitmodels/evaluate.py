"""Metrics for popularity predictions. Arrays in, floats out; popularity is on its 0-100 scale in the inputs
and MAE/MSE are reported on popularity / 100 as in the HitMusicNet paper.

Ranking metrics follow Yu et al. (ICASSP 2018, "Hit song prediction ... Siamese CNN"), who score the top 10 % of
the test songs. Our exact reading (see :func:`ranking_metrics`): the "top" set is the ``k = ceil(f·n)`` test rows
with the highest *true* popularity, plus every row tied with the k-th (ties at the boundary stay together);

- ``ndcg_topF``: nDCG over that set's size of the ranking by *predicted* popularity, with graded relevance: a
  top row's true popularity, 0 for the others (a perfect ranking scores 1; ties in the prediction are averaged,
  as scikit-learn's ``ndcg_score`` does);
- ``kendall_topF`` / ``spearman_topF``: Kendall's tau-b / Spearman's rho between true and predicted
  popularity *within* the top set (random: about 0).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from .config import CLASS_NAMES, CLASS_THRESHOLDS
from .predict import popularity_class


def _finite(x: float) -> float:
    return float(x) if np.isfinite(x) else 0.0


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``mae``, ``mse`` (both on /100), ``r2`` and ``spearman`` of predicted vs. true popularity (0-100)."""
    t, p = np.asarray(y_true, float) / 100.0, np.asarray(y_pred, float) / 100.0
    rho = stats.spearmanr(t, p).statistic if len(t) > 1 and np.ptp(p) > 0 and np.ptp(t) > 0 else 0.0
    return {"mae": float(np.mean(np.abs(t - p))), "mse": float(np.mean((t - p) ** 2)),
            "r2": float(skm.r2_score(t, p)) if len(t) > 1 else 0.0, "spearman": _finite(rho)}


def top_tag(top_fraction: float) -> str:
    """Metric-name suffix of a top fraction: 0.1 -> ``top10``."""
    return f"top{round(top_fraction * 100):d}"


def top_rows(y_true: np.ndarray, top_fraction: float = 0.1) -> np.ndarray:
    """Positions of the top ``top_fraction`` of rows by true score, ``k = ceil(f·n)`` (at least 2), with every
    row tied with the k-th kept in: the set can be larger than k, never split among equal scores."""
    t = np.asarray(y_true, float)
    k = min(len(t), max(2, math.ceil(top_fraction * len(t))))
    boundary = np.sort(t)[::-1][k - 1]
    return np.flatnonzero(t >= boundary)


def ranking_metrics(y_true: np.ndarray, y_pred: np.ndarray, top_fraction: float = 0.1) -> dict[str, float]:
    """nDCG, Kendall's tau and Spearman's rho on the top ``top_fraction`` of rows by true popularity
    (:func:`top_rows`): nDCG@m with m the size of that set, graded relevance (a top row's relevance is its
    true score, every other row's 0) over the ranking by prediction, so a perfect ranking scores 1."""
    t, p = np.asarray(y_true, float), np.asarray(y_pred, float)
    tag = top_tag(top_fraction)
    if len(t) < 2:
        return {f"ndcg_{tag}": 0.0, f"kendall_{tag}": 0.0, f"spearman_{tag}": 0.0}
    top = top_rows(t, top_fraction)
    relevance = np.zeros(len(t))
    relevance[top] = t[top]
    ndcg = skm.ndcg_score(relevance[None, :], p[None, :], k=len(top)) if relevance.any() else 0.0
    tt, pt = t[top], p[top]
    varied = np.ptp(tt) > 0 and np.ptp(pt) > 0
    tau = stats.kendalltau(tt, pt).statistic if varied else 0.0
    rho = stats.spearmanr(tt, pt).statistic if varied else 0.0
    return {f"ndcg_{tag}": _finite(ndcg), f"kendall_{tag}": _finite(tau), f"spearman_{tag}": _finite(rho)}


def label_metrics(t: np.ndarray, p: np.ndarray, labels: list) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 over ``labels`` (a label absent from both counts as 0)."""
    return {
        "accuracy": float(skm.accuracy_score(t, p)),
        "precision_macro": float(skm.precision_score(t, p, labels=labels, average="macro", zero_division=0)),
        "recall_macro": float(skm.recall_score(t, p, labels=labels, average="macro", zero_division=0)),
        "f1_macro": float(skm.f1_score(t, p, labels=labels, average="macro", zero_division=0)),
    }


def class_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                  thresholds: tuple[float, float] = CLASS_THRESHOLDS) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 of the low/medium/high classes implied by popularity values."""
    t = popularity_class(np.asarray(y_true, float), thresholds)
    p = popularity_class(np.asarray(y_pred, float), thresholds)
    return label_metrics(t, p, list(CLASS_NAMES))


def interval_metrics(y_true: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> dict[str, float]:
    """Empirical ``coverage`` of [lower, upper] and its mean ``interval_width`` (both on the 0-100 scale
    for width, a fraction for coverage)."""
    t = np.asarray(y_true, float)
    inside = (t >= np.asarray(lower, float)) & (t <= np.asarray(upper, float))
    return {"coverage": float(inside.mean()) if len(t) else 0.0,
            "interval_width": float(np.mean(np.asarray(upper, float) - np.asarray(lower, float))) if len(t) else 0.0}
