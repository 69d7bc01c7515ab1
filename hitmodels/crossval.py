"""Cross-validation as the HitMusicNet paper does it (section V-C), for ``hitmusic evaluate``: an 80/20
stratified train/test split, stratified k-fold CV on the training part, every configuration and baseline
fitted on the same folds, validation metrics averaged over folds and each fold's model scored on the
held-out test rows. The paper's configurations are fitted through the ``hitmusicnet`` family's interface;
the baselines are :mod:`hitmodels.baselines`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from threadpoolctl import threadpool_limits

from . import baselines as baseline_models
from . import families
from .config import EvaluateConfig, TrainConfig, paper_config
from .data import feature_columns, training_rows
from .predict import Preprocessor, class_thresholds, popularity_class
from .train import artist_groups, popularity_bins, score, split_part


@dataclass
class CVResult:
    """What :func:`cross_validate` measured.

    ``scores`` has one row per (model, fold, split in val/test) with every metric; ``histories`` the
    learning curves per (configuration, fold); ``codes`` per configuration the scaled code of (a sample of)
    the test rows from the first fold's model with their true classes, for the t-SNE plot.
    """

    scores: pd.DataFrame
    histories: dict[tuple[str, int], dict[str, list[dict]]]
    codes: dict[str, tuple[np.ndarray, np.ndarray]]
    train_popularity: np.ndarray
    thresholds: tuple[float, float]
    n_rows: int
    n_features: int
    n_test: int
    settings: dict

    def summary(self) -> pd.DataFrame:
        """Mean and standard deviation over folds, one row per (model, split)."""
        metrics = self.scores.drop(columns=["fold"]).groupby(["model", "split"], sort=False)
        return metrics.agg(["mean", "std"])

    def means(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{model: {split: {metric: mean over folds}}}`` (JSON-ready)."""
        out: dict = {}
        for (model, split_name), g in self.scores.drop(columns=["fold"]).groupby(["model", "split"], sort=False):
            out.setdefault(model, {})[split_name] = {k: float(v) for k, v in g.mean(numeric_only=True).items()
                                                     if np.isfinite(v)}
        return out


def cross_validate(table: pd.DataFrame, base: TrainConfig = TrainConfig(), ecfg: EvaluateConfig = EvaluateConfig(),
                   progress: Callable[[str], None] | None = None) -> CVResult:
    """Stratified k-fold CV of the paper's named configurations ``ecfg.configs`` (built on ``base``) and the
    baselines ``ecfg.baselines`` on one table. Split settings (test and calibration sizes, bins, seed) come
    from ``base``; every model sees exactly the same rows."""
    say = progress or (lambda _msg: None)
    hitmusicnet = families.get("hitmusicnet")
    table = training_rows(table)
    columns = feature_columns(table)
    min_rows = 4 * ecfg.n_folds
    if len(table) < min_rows:
        raise ValueError(f"model table has {len(table)} rows; {ecfg.n_folds}-fold CV needs at least {min_rows}")
    configs = [paper_config(n, base) if n != base.name else base for n in ecfg.configs]
    outer, test = split_part(table, base.test_size, base)
    truth_test = test["popularity"].to_numpy(float)
    strat = popularity_bins(outer["popularity"].to_numpy(), min(base.strat_bins, len(outer) // ecfg.n_folds))
    if base.split == "artist":  # whole artists per fold, popularity spread alike across folds where it can be
        groups = artist_groups(outer)
        if len(set(groups)) < ecfg.n_folds:
            raise ValueError(f"{len(set(groups))} artists cannot fill {ecfg.n_folds} artist-grouped folds")
        folds = StratifiedGroupKFold(ecfg.n_folds, shuffle=True, random_state=base.seed).split(outer, strat, groups)
    else:
        folds = StratifiedKFold(ecfg.n_folds, shuffle=True, random_state=base.seed).split(outer, strat)
    rows: list[dict] = []
    histories: dict = {}
    codes: dict = {}
    thresholds = class_thresholds(base.class_scheme, outer["popularity"].to_numpy(float))
    for k, (tr_idx, va_idx) in enumerate(folds):
        train_part, val = outer.iloc[tr_idx].reset_index(drop=True), outer.iloc[va_idx].reset_index(drop=True)
        fit_rows, calib = split_part(train_part, base.calib_size, replace(base, seed=base.seed + k)) \
            if base.calib_size > 0 else (train_part, train_part.iloc[:0])
        fold_pop = fit_rows["popularity"].to_numpy(float)
        median = float(np.median(fold_pop))
        fold_thr = class_thresholds(base.class_scheme, fold_pop)
        for cfg in configs:
            fitted = hitmusicnet.fit(fit_rows, val, calib, columns, replace(cfg, seed=base.seed + k))
            for split_name, rows_ in (("val", val), ("test", test)):
                m = score(rows_["popularity"].to_numpy(float), fitted.predict(rows_), fold_thr, median,
                          ecfg.top_fraction)
                rows.append({"model": cfg.name, "fold": k, "split": split_name, "seconds": fitted.seconds, **m})
            histories[(cfg.name, k)] = fitted.history
            if k == 0:
                sample = test.sample(min(len(test), ecfg.tsne_points), random_state=base.seed)
                codes[cfg.name] = (fitted.model.code(sample),
                                   popularity_class(sample["popularity"].to_numpy(float), fold_thr))
            say(f"fold {k + 1}/{ecfg.n_folds} {cfg.name}: val MAE {rows[-2]['mae']:.4f}, "
                f"test MAE {rows[-1]['mae']:.4f} ({fitted.seconds:.1f} s)")
        pre = Preprocessor.fit(fit_rows, columns)
        X_fit, X_val, X_test = pre.transform(fit_rows), pre.transform(val), pre.transform(test)
        for name in ecfg.baselines:
            if name in families.names():  # a registrable family: evaluated exactly as it is registered
                family = families.get(name)
                fitted = family.fit(fit_rows, val, calib, columns, replace(base, family=name, seed=base.seed + k))
                label, seconds = family.label, fitted.seconds
                outputs = [("val", fitted.predict(val), val), ("test", fitted.predict(test), test)]
            else:
                start = time.perf_counter()
                with threadpool_limits(base.threads):
                    model = baseline_models.make(name, base.seed + k).fit(X_fit, fold_pop, fold_thr, median)
                label, seconds = model.label, time.perf_counter() - start
                outputs = [("val", model.predict(X_val), val), ("test", model.predict(X_test), test)]
            for split_name, out, rows_ in outputs:
                rows.append({"model": label, "fold": k, "split": split_name, "seconds": seconds,
                             **score(rows_["popularity"].to_numpy(float), out, fold_thr, median, ecfg.top_fraction)})
            say(f"fold {k + 1}/{ecfg.n_folds} {label}: {seconds:.1f} s")
    return CVResult(scores=pd.DataFrame(rows), histories=histories, codes=codes,
                    train_popularity=outer["popularity"].to_numpy(float), thresholds=thresholds,
                    n_rows=len(table), n_features=len(columns), n_test=len(test),
                    settings={"base": asdict(base), "evaluate": asdict(ecfg)})
