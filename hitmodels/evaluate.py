"""Metrics for popularity predictions. Arrays in, floats out; popularity is on its 0-100 scale in the inputs
and MAE/MSE are reported on popularity / 100 as in the HitMusicNet paper.

Ranking metrics follow Yu et al. (ICASSP 2018, "Hit song prediction ... Siamese CNN"), who score the top 10 %
of the test songs. Our exact reading (see :func:`ranking_metrics`): the "top" set is the ``k = ceil(f·n)``
test rows with the highest *true* popularity (ties at the boundary broken by row order);

- ``ndcg_topF``: nDCG@k of the ranking by *predicted* popularity, with relevance 1 for rows in the top set and
  0 otherwise (so a random ranking scores about ``f`` and a perfect one 1, the scale of their Table 1);
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


def ranking_metrics(y_true: np.ndarray, y_pred: np.ndarray, top_fraction: float = 0.1) -> dict[str, float]:
    """nDCG, Kendall's tau and Spearman's rho on the top ``top_fraction`` of rows by true popularity."""
    t, p = np.asarray(y_true, float), np.asarray(y_pred, float)
    tag = top_tag(top_fraction)
    k = min(len(t), max(2, math.ceil(top_fraction * len(t))))
    if len(t) < 2:
        return {f"ndcg_{tag}": 0.0, f"kendall_{tag}": 0.0, f"spearman_{tag}": 0.0}
    top = np.argsort(-t, kind="stable")[:k]
    relevant = np.zeros(len(t))
    relevant[top] = 1.0
    ndcg = skm.ndcg_score(relevant[None, :], p[None, :], k=k)
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
