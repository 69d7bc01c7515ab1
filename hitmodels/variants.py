"""Cross-validating a family's named variants the way Yu et al. (ICASSP 2018) evaluate theirs.

The rows are cut into ``k`` parts (10 by default; stratified on popularity, or whole artists per part with
``split="artist"``). Fold ``f`` tests on part ``f``, early-stops and selects on part ``f + 1`` and fits on the
other ``k - 2`` (8:1:1 with ten parts), so every row is a test row exactly once. Every variant is fitted on
the same rows of every fold. Metrics per fold: MAE (popularity / 100), Spearman over all test rows, and
nDCG, Kendall's tau and Spearman's rho on the top 10 % of the fold's test rows by true popularity
(:func:`hitmodels.evaluate.ranking_metrics`: nDCG with graded relevance, a top row's relevance its true
popularity, as their hit scores); the report averages them over the folds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedKFold

from . import families
from .config import TrainConfig
from .data import feature_columns, training_rows
from .evaluate import ranking_metrics, regression_metrics
from .train import artist_groups, popularity_bins

METRICS = ("ndcg_top10", "kendall_top10", "spearman_top10", "mae", "spearman")


@dataclass
class VariantResult:
    family: str
    n_rows: int
    n_folds: int
    split: str
    folds: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # variant -> per-fold test metrics
    seconds: dict[str, float] = field(default_factory=dict)

    def means(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{variant: {"test": {metric: mean over folds}, "test_sd": {metric: standard deviation}}}``."""
        out = {}
        for name, rows in self.folds.items():
            df = pd.DataFrame(rows)
            out[name] = {"test": {k: float(df[k].mean()) for k in df}, "test_sd": {k: float(df[k].std(ddof=0)) for k in df}}
        return out


def fold_parts(table: pd.DataFrame, k: int, cfg: TrainConfig) -> np.ndarray:
    """The part (0 .. k-1) of every row: stratified on popularity bins, or by artist (``cfg.split``)."""
    if k < 3:
        raise ValueError(f"need at least 3 folds (test, validation and training parts), got {k}")
    parts = np.empty(len(table), dtype=int)
    if cfg.split == "artist":
        splitter = GroupKFold(n_splits=k, shuffle=True, random_state=cfg.seed)
        folds = splitter.split(table, groups=artist_groups(table))
    else:
        bins = popularity_bins(table["popularity"].to_numpy(), min(cfg.strat_bins, max(1, len(table) // k)))
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=cfg.seed).split(table, bins)
    for f, (_, test) in enumerate(folds):
        parts[test] = f
    return parts


def cross_validate_variants(table: pd.DataFrame, family: str, variants: dict[str, dict], base: TrainConfig,
                            k: int = 10, progress: Callable[[str], None] | None = None) -> VariantResult:
    """Every variant (``name -> the family's settings``) of ``family`` over the same ``k`` folds (ranking
    metrics on the top 10 % of each fold's test rows, as the paper's)."""
    fam = families.get(family)
    base = replace(base, family=family)
    for params in variants.values():
        fam.check(replace(base, params={**base.params, **params}))
    rows = fam.prepare(training_rows(table), base)
    if len(rows) < 3 * k:
        raise ValueError(f"{len(rows)} usable rows are too few for {k} folds")
    columns = feature_columns(rows)
    parts = fold_parts(rows, k, base)
    result = VariantResult(family, len(rows), k, base.split)
    for f in range(k):
        test, val = rows[parts == f], rows[parts == (f + 1) % k]
        fit = rows[(parts != f) & (parts != (f + 1) % k)]
        truth = test["popularity"].to_numpy(float)
        for name, params in variants.items():
            cfg = replace(base, params={**base.params, **params}, name=name)
            start = time.perf_counter()
            fitted = fam.fit(fit.reset_index(drop=True), val.reset_index(drop=True), fit.iloc[:0], columns, cfg)
            pred = fitted.predict(test.reset_index(drop=True))["popularity"].to_numpy(float)
            m = {**ranking_metrics(truth, pred, 0.1), **regression_metrics(truth, pred)}
            result.folds.setdefault(name, []).append({k_: m[k_] for k_ in METRICS})
            result.seconds[name] = result.seconds.get(name, 0.0) + time.perf_counter() - start
            if progress:
                progress(f"fold {f + 1}/{k} {name}: Kendall@10% {m['kendall_top10']:.3f}, MAE {m['mae']:.4f} "
                         f"({time.perf_counter() - start:.0f} s)")
    return result
