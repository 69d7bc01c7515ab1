"""Training any model family on a model table, tracked in MLflow and registered as a new version.

:func:`train` (``hitmusic train --family F``, the leaderboard, the demo): one stratified split into fit /
validation / calibration / test rows, the family's fit, and :func:`register_bundle`, which scores the
bundle on the test rows and registers it. Whatever the family, a version carries the same things: the
bundle (weights + JSON or arrays, no pickles), its test metrics, the track ids of its test rows and the
dataset fingerprint (so that promotion can compare versions on rows neither trained on), tags and a
description that reads in the MLflow UI without opening the run.

Everything that is fitted (imputation medians, scaling, class boundaries, the conformal calibrator) sees
training rows only: the test rows are split off first and never reach a fit. Within the training part,
``calib_size`` of the rows are held back for the split conformal calibrator, and the validation rows only
drive early stopping or model selection.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.model_selection import GroupShuffleSplit, train_test_split

from . import families
from .bundle import bundle_artifacts, feature_config_of, load_bundle, write_bundle
from .config import CLASS_NAMES, FEATURE_SCHEMA_VERSION, TrainConfig
from .config import tracking_uri as resolve_tracking_uri
from .data import feature_columns, training_rows
from .melstore import MEL_COLUMN
from .evaluate import class_metrics, interval_metrics, label_metrics, ranking_metrics, regression_metrics
from .predict import popularity_class
from .tracking import ended_run, is_outage, outage_message

# Where a version's run keeps the track ids of its test rows (promotion scores on exactly those).
SPLIT_ARTIFACT = "split/test_rows.json"


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    version: str
    metrics: dict[str, float]
    family: str = "hitmusicnet"
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------- splits


def popularity_bins(pop: np.ndarray, n_bins: int = 5) -> np.ndarray:
    """Quantile bins of popularity for stratified splits (fewer bins when there are few distinct values)."""
    ranks = pd.Series(pop).rank(method="first")
    return pd.qcut(ranks, q=min(n_bins, max(1, len(pop) // 4)), labels=False).to_numpy()


def stratified_split(df: pd.DataFrame, size: float, seed: int, n_bins: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rest, part)`` with ``part`` about ``size`` of the rows, stratified on popularity quantile bins.

    The number of bins shrinks on small frames so that every bin can give a row to both sides.
    """
    n_part = math.ceil(size * len(df))
    q = min(n_bins, n_part, len(df) - n_part, len(df) // 2)
    strat = popularity_bins(df["popularity"].to_numpy(), q) if q > 1 else None
    rest, part = train_test_split(df, test_size=n_part, random_state=seed, stratify=strat)
    return rest.reset_index(drop=True), part.reset_index(drop=True)


def split(table: pd.DataFrame, test_size: float, val_size: float, seed: int):
    """Train / validation / test frames, stratified on popularity bins."""
    train, test = train_test_split(table, test_size=test_size, random_state=seed,
                                   stratify=popularity_bins(table["popularity"].to_numpy()))
    train, val = train_test_split(train, test_size=val_size, random_state=seed,
                                  stratify=popularity_bins(train["popularity"].to_numpy()))
    return train.reset_index(drop=True), val.reset_index(drop=True), test.reset_index(drop=True)


@dataclass
class Splits:
    """Disjoint row sets: ``fit`` trains, ``val`` early-stops, ``calib`` calibrates the interval, ``test``
    is only ever scored."""

    fit: pd.DataFrame
    val: pd.DataFrame
    calib: pd.DataFrame
    test: pd.DataFrame


def artist_groups(df: pd.DataFrame) -> np.ndarray:
    """The artist of every row (a row without one is an artist of its own)."""
    artist = df["artist_id"] if "artist_id" in df else pd.Series([None] * len(df), index=df.index)
    return artist.astype(object).where(artist.notna(), "track:" + df["track_id"].astype(str)).to_numpy()


def artist_split(df: pd.DataFrame, size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rest, part)`` with whole artists on one side only: ``part`` holds about ``size`` of the rows."""
    groups = artist_groups(df)
    if len(set(groups)) < 2:
        raise ValueError("an artist-grouped split needs at least two artists")
    rest_idx, part_idx = next(GroupShuffleSplit(1, test_size=size, random_state=seed).split(df, groups=groups))
    return df.iloc[rest_idx].reset_index(drop=True), df.iloc[part_idx].reset_index(drop=True)


SPLITS = ("stratified", "artist")


def split_part(df: pd.DataFrame, size: float, cfg: TrainConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One cut of ``cfg.split``'s kind: stratified on popularity, or by artist."""
    if cfg.split == "artist":
        return artist_split(df, size, cfg.seed)
    if cfg.split != "stratified":
        raise ValueError(f"unknown split {cfg.split!r}; choose {' or '.join(SPLITS)}")
    return stratified_split(df, size, cfg.seed, cfg.strat_bins)


def split_rows(table: pd.DataFrame, cfg: TrainConfig) -> Splits:
    """Test first (``test_size`` of all rows), then calibration and validation out of the rest; with
    ``cfg.split == "artist"`` every cut keeps each artist on one side (SPD's artist popularity is derived from
    its tracks' popularity, so a stratified split lets artist identity leak from training into test)."""
    rest, test = split_part(table, cfg.test_size, cfg)
    rest, calib = split_part(rest, cfg.calib_size, cfg) if cfg.calib_size > 0 else (rest, rest.iloc[:0])
    fit, val = split_part(rest, cfg.val_size, cfg)
    return Splits(fit, val, calib, test)


def retrain_rows(table: pd.DataFrame, cfg: TrainConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(fit, stop, calib)`` of a retraining after tuning: the trials' fit and validation rows together, a
    slice of them held back for early stopping (none for a family that does not early-stop), and the
    calibration rows. The test rows are not among them."""
    s = split_rows(table, cfg)
    fit, stop = split_part(pd.concat([s.fit, s.val], ignore_index=True), 0.1, cfg)
    fit, stop = fitting_rows(families.get(cfg.family), fit, stop)
    return fit, stop, s.calib


def fitting_rows(family, fit: pd.DataFrame, val: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(fit, val)`` as ``family`` uses them: a family that does not early-stop would leave the validation
    rows unused, so it fits on them too."""
    if family.early_stops:
        return fit, val
    return pd.concat([fit, val], ignore_index=True), val.iloc[:0]


def score(truth: np.ndarray, out: pd.DataFrame, thresholds: tuple[float, float], median: float,
          top_fraction: float = 0.1) -> dict[str, float]:
    """Every metric a model's output frame allows, against true popularity (0-100).

    ``out`` may hold ``popularity`` (regression, ranking and, when there is no ``class``, the class of the
    predicted popularity), ``popularity_lower``/``popularity_upper`` (coverage, width), ``class`` (3-class
    metrics) and ``above_median`` (2-class metrics; derived from ``popularity`` when absent). The two
    classes are popularity at or above the training median vs. below it.
    """
    truth = np.asarray(truth, float)
    m: dict[str, float] = {}
    if "popularity" in out:
        pop = out["popularity"].to_numpy(float)
        m.update(regression_metrics(truth, pop))
        m.update(ranking_metrics(truth, pop, top_fraction))
        m.update({f"thr_{k}": v for k, v in class_metrics(truth, pop, thresholds).items()})
    if "class" in out:
        m.update(label_metrics(popularity_class(truth, thresholds), out["class"].to_numpy(), list(CLASS_NAMES)))
        if "popularity" in out:  # how often the class head agrees with the class of the predicted popularity
            agree = out["class"].to_numpy() == popularity_class(out["popularity"].to_numpy(float), thresholds)
            m["class_agreement"] = float(agree.mean()) if len(agree) else 1.0
    elif "popularity" in out:
        m.update({k: m[f"thr_{k}"] for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro")})
    binary = out["above_median"].to_numpy(bool) if "above_median" in out else \
        out["popularity"].to_numpy(float) >= median if "popularity" in out else None
    if binary is not None:
        m.update({f"bin_{k}": v for k, v in label_metrics(truth >= median, binary, [False, True]).items()})
    if "popularity_lower" in out:
        m.update(interval_metrics(truth, out["popularity_lower"], out["popularity_upper"]))
    return m


def dataset_fingerprint(table: pd.DataFrame) -> str:
    """Hash of the model table's content and the feature schema version (row order does not matter)."""
    # a family's own input (log-mel segments) is not the table's content: the same table, the same fingerprint
    table = table.drop(columns=[MEL_COLUMN], errors="ignore")
    h = pd.util.hash_pandas_object(table.sort_values("track_id").reset_index(drop=True), index=False)
    return f"v{FEATURE_SCHEMA_VERSION}-{int(h.sum()) & 0xFFFFFFFFFFFF:012x}"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pip_requirements() -> list[str]:
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"pandas=={pd.__version__}", f"numpy=={np.__version__}",
            f"mlflow=={mlflow.__version__}"]


def train(table: pd.DataFrame, cfg: TrainConfig = TrainConfig(), tracking_uri: str | None = None,
          initialiser: str | None = None, family: str | None = None,
          parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> TrainResult:
    """Fit ``family`` (default ``cfg.family``) on a model table, log the run and register the model as a new
    version of ``cfg.model_name``. ``initialiser`` overrides ``cfg.initialiser`` (HitMusicNet) when given."""
    if initialiser is not None:
        cfg = replace(cfg, initialiser=initialiser)
    if family is not None:
        cfg = replace(cfg, family=family)
    fam = families.get(cfg.family)
    fam.check(cfg)
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    feature_config = feature_config_of(table)
    table = fam.prepare(training_rows(table), cfg)
    columns = feature_columns(table)
    if len(table) < 20:
        raise ValueError(f"model table has {len(table)} rows; at least 20 are needed to split and train")
    s = split_rows(table, cfg)
    with _run(cfg, parent_run_id) as run:
        mlflow.set_tag("mlflow.runName", f"{fam.name}-{cfg.name}")
        fit_rows, val_rows = fitting_rows(fam, s.fit, s.val)
        fitted = fam.fit(fit_rows, val_rows, s.calib, columns, cfg, log=True)
        with tempfile.TemporaryDirectory() as tmp:
            write_bundle(Path(tmp), fitted.model, feature_config)
            result = register_bundle(Path(tmp), table, cfg, tracking_uri, tags={
                **(tags or {}), "fit_seconds": f"{fitted.seconds:.2f}"},
                counts={"train": len(fit_rows), "val": len(val_rows), "calib": len(s.calib)})
        mlflow.log_metric("fit_seconds", fitted.seconds)
        return replace(result, run_id=run.info.run_id, seconds=fitted.seconds)


def _run(cfg: TrainConfig, parent_run_id: str | None):
    """The active MLflow run, or a new one (nested under ``parent_run_id`` when given)."""
    if mlflow.active_run() is not None:
        return contextlib.nullcontext(mlflow.active_run())
    if parent_run_id is not None:  # beside its parent, e.g. the tuning job or leaderboard that chose it
        return ended_run(lambda: mlflow.start_run(parent_run_id=parent_run_id,
                                                  experiment_id=mlflow.get_run(parent_run_id).info.experiment_id))
    mlflow.set_experiment(cfg.experiment)
    return ended_run(mlflow.start_run)  # FAILED, not RUNNING forever, when the server goes away meanwhile


def split_settings(cfg: TrainConfig) -> dict:
    """The settings that decide the split and the calibration: the same for every family."""
    return {k: getattr(cfg, k) for k in ("split", "test_size", "val_size", "calib_size", "strat_bins", "seed",
                                         "coverage", "class_scheme")}


def description(family_text: str, metrics: dict[str, float], fingerprint: str, n: dict[str, int],
                metric: str) -> str:
    """The version's description in the MLflow UI: what it is, how it scored, on what data."""
    cov = metrics.get("test_coverage")
    return (f"{family_text}. Test rows ({n['test']}, never fitted on): MAE {metrics['test_mae']:.4f} "
            f"(popularity / 100; predicting the mean: {metrics['test_mae_predict_mean']:.4f}), "
            f"R² {metrics['test_r2']:.3f}, Spearman {metrics['test_spearman']:.3f}, "
            f"Kendall@10% {metrics.get('test_kendall_top10', float('nan')):.3f}"
            + (f", interval coverage {cov:.0%}" if cov is not None else "")
            + f". Fitted on {n['train']} rows ({n['val']} more for validation, {n['calib']} for calibration) of dataset "
            f"{fingerprint} (feature schema v{FEATURE_SCHEMA_VERSION}). Selected and promoted on test {metric}.")


def register_bundle(bundle: Path, table: pd.DataFrame, cfg: TrainConfig, tracking_uri: str | None = None,
                    parent_run_id: str | None = None, tags: dict[str, str] | None = None,
                    counts: dict[str, int] | None = None) -> TrainResult:
    """Score a saved bundle on the test rows of ``split_rows(table, cfg)`` (rows it never saw when it was
    fitted with the same ``cfg``), log parameters, metrics, the test rows' track ids and the pyfunc model,
    and register it as a new version of ``cfg.model_name``. Logs into the active MLflow run, or a new one
    (nested under ``parent_run_id`` when given). ``counts`` gives the rows it was fitted on where that was
    not ``split_rows``' fit / validation / calibration (a retraining after tuning)."""
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    model = load_bundle(bundle)
    fam = families.get(model.family)
    table = training_rows(table)
    if MEL_COLUMN not in table:  # rows as the family fitted them (a retraining hands over the raw table)
        table = fam.prepare(table, cfg)
    s = split_rows(table, cfg)
    with _run(cfg, parent_run_id) as run:
        fingerprint = dataset_fingerprint(table)
        n = {"train": len(s.fit), "val": len(s.val), "calib": len(s.calib), **(counts or {}), "test": len(s.test)}
        mlflow.log_params({"family": fam.name, "config": cfg.name, **split_settings(cfg),
                           **fam.params(cfg, n["train"]),
                           "n_features": len(model.columns), **{f"n_{k}": v for k, v in n.items()}})
        all_tags = {"dataset_fingerprint": fingerprint, "feature_schema_version": FEATURE_SCHEMA_VERSION,
                    "git_commit": git_commit(), "model_family": fam.name, "input_kind": fam.input_kind,
                    "config": cfg.name, "selection_metric": fam.metric, **(tags or {})}
        mlflow.set_tags(all_tags)
        truth = s.test["popularity"].to_numpy(float)
        train_pop = s.fit["popularity"].to_numpy(float)
        metrics = {f"test_{k}": v for k, v in score(truth, model.predict(None, s.test), tuple(model.thresholds),
                                                    float(np.median(train_pop))).items()}
        metrics["test_mae_predict_mean"] = regression_metrics(truth, np.full_like(truth, train_pop.mean()))["mae"]
        if model.conformal:
            metrics["conformal_halfwidth"] = model.conformal["halfwidth"]
        mlflow.log_metrics(metrics)
        mlflow.log_dict({"dataset_fingerprint": fingerprint, "feature_schema_version": FEATURE_SCHEMA_VERSION,
                         "columns": list(model.columns),
                         "test_track_ids": s.test["track_id"].astype(str).tolist()}, SPLIT_ARTIFACT)
        example = s.test[model.columns].head(3)
        # models-from-code: the pyfunc class lives in the package, the version holds weights + JSON only
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).with_name("pyfunc_code.py")),
            artifacts=bundle_artifacts(bundle),
            signature=infer_signature(example, model.predict(None, example)), input_example=example,
            pip_requirements=pip_requirements(),
        )
        # One request creates the version with every tag promotion reads (fingerprint, test rows' metric):
        # a server lost between separate requests would leave a version that cannot be compared or promoted
        version = str(mlflow.register_model(info.model_uri, cfg.model_name, tags={
            **all_tags, "test_mae": f"{metrics['test_mae']:.5f}", "run_id": run.info.run_id,
            "n_test_rows": str(n["test"])}).version)
        try:  # the UI's text only: a version without it is still whole
            mlflow.MlflowClient().update_model_version(
                cfg.model_name, version, description=description(fam.describe(cfg), metrics, fingerprint, n,
                                                                 fam.metric))
        except Exception as exc:
            if not is_outage(exc):
                raise
            print(f"train: version {version} registered without its description: {outage_message()}",
                  file=sys.stderr)
        return TrainResult(run.info.run_id, cfg.model_name, version, metrics, fam.name)
