"""Metrics for popularity predictions. Arrays in, floats out; popularity is on its 0-100 scale in the inputs
and MAE/MSE are reported on popularity / 100 as in the HitMusicNet paper."""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from .config import CLASS_NAMES
from .predict import popularity_class


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``mae``, ``mse`` (both on /100), ``r2`` and ``spearman`` of predicted vs. true popularity (0-100)."""
    t, p = np.asarray(y_true, float) / 100.0, np.asarray(y_pred, float) / 100.0
    rho = stats.spearmanr(t, p).statistic if len(t) > 1 and np.ptp(p) > 0 and np.ptp(t) > 0 else 0.0
    return {"mae": float(np.mean(np.abs(t - p))), "mse": float(np.mean((t - p) ** 2)),
            "r2": float(skm.r2_score(t, p)) if len(t) > 1 else 0.0, "spearman": float(np.nan_to_num(rho))}


def class_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 of the low/medium/high classes implied by popularity values."""
    t, p = popularity_class(np.asarray(y_true, float)), popularity_class(np.asarray(y_pred, float))
    labels = list(CLASS_NAMES)
    return {
        "accuracy": float(skm.accuracy_score(t, p)),
        "precision_macro": float(skm.precision_score(t, p, labels=labels, average="macro", zero_division=0)),
        "recall_macro": float(skm.recall_score(t, p, labels=labels, average="macro", zero_division=0)),
        "f1_macro": float(skm.f1_score(t, p, labels=labels, average="macro", zero_division=0)),
    }
