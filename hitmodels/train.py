"""Training HitMusicNet: MusicAENet on the scaled features, then MusicPopNet on its code, tracked in MLflow.

Two paths share one fitting routine (:func:`fit_model`):

- :func:`train` (``hitmusic train``, the demo): one stratified split into fit / validation / calibration /
  test rows, one model, registered as a new version. Quick.
- :func:`cross_validate` (``hitmusic evaluate``): the paper's procedure (section V-C): an 80/20 stratified
  train/test split, stratified k-fold CV on the training part, every configuration and baseline fitted on the
  same folds, validation metrics averaged over folds and each fold's model scored on the held-out test rows.

In both, everything that is fitted (imputation medians, min-max scaling, the code's scaling, class quartiles,
the conformal calibrator) sees training rows only: the test rows are split off first and never reach a fit.
Within a training part, ``calib_size`` of the rows are held back from fitting for the split conformal
calibrator, and the validation rows only drive early stopping.
"""

from __future__ import annotations

import contextlib
import copy
import math
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import infer_signature
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.utils.class_weight import compute_class_weight
from threadpoolctl import threadpool_limits
from torch import nn

from . import baselines as baseline_models
from .config import CLASS_NAMES, FEATURE_SCHEMA_VERSION, EvaluateConfig, TrainConfig, paper_config
from .config import tracking_uri as resolve_tracking_uri
from .data import feature_columns, training_rows
from .evaluate import class_metrics, interval_metrics, label_metrics, ranking_metrics, regression_metrics
from .models import HitMusicNet, initialise
from .predict import HitMusicPyfunc, ModelMeta, Preprocessor, SplitConformal, bundle_artifacts, \
    class_thresholds, load_bundle, popularity_class, save_bundle

# The paper trained with Keras; these are Keras' defaults for each optimiser (Adadelta's rho and epsilon
# too), used whenever TrainConfig.lr is None.
KERAS_LR = {"sgd": 0.01, "adam": 1e-3, "nadam": 2e-3, "adadelta": 1.0}
OPTIMISERS = {
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr, eps=1e-7),
    "nadam": lambda p, lr: torch.optim.NAdam(p, lr=lr, eps=1e-7),
    "adadelta": lambda p, lr: torch.optim.Adadelta(p, lr=lr, rho=0.95, eps=1e-7),
}


def make_optimizer(name: str, params, lr: float | None) -> torch.optim.Optimizer:
    if name not in OPTIMISERS:
        raise ValueError(f"unknown optimiser {name!r}; choose from {sorted(OPTIMISERS)}")
    return OPTIMISERS[name](params, KERAS_LR[name] if lr is None else lr)


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    version: str
    metrics: dict[str, float]


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


def split_rows(table: pd.DataFrame, cfg: TrainConfig) -> Splits:
    """Test first (``test_size`` of all rows), then calibration and validation out of the rest."""
    rest, test = stratified_split(table, cfg.test_size, cfg.seed, cfg.strat_bins)
    rest, calib = stratified_split(rest, cfg.calib_size, cfg.seed, cfg.strat_bins) if cfg.calib_size > 0 \
        else (rest, rest.iloc[:0])
    fit, val = stratified_split(rest, cfg.val_size, cfg.seed, cfg.strat_bins)
    return Splits(fit, val, calib, test)


def effective_batch_size(batch_size: int, n_train: int, min_steps: int = 10) -> int:
    """The configured batch size, reduced for small tables so that an epoch has at least ``min_steps``
    optimiser steps (never below 8). With the paper's 256 this only matters below 2,560 training rows: on a
    200-track sample one full batch per epoch would leave 100 epochs with 100 steps, too few to learn."""
    return max(1, min(batch_size, max(8, n_train // min_steps)))


# --------------------------------------------------------------------------------------------- fitting


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily use ``n`` intra-op threads (None: leave torch's setting alone)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _same_module(model: nn.Module) -> nn.Module:
    return model


@dataclass(frozen=True)
class Parallel:
    """This process's place in data-parallel training: ``rank`` of ``world_size`` workers, ``wrap`` turns a
    module into one whose gradients are averaged over the workers (DDP, e.g. Ray Train's ``prepare_model``),
    and ``device`` is where this worker computes. The default is plain single-process training."""

    rank: int = 0
    world_size: int = 1
    wrap: Callable[[nn.Module], nn.Module] = _same_module
    device: torch.device = torch.device("cpu")

    def mean(self, values: list[float]) -> list[float]:
        """The means of ``values`` over the workers, so that every worker takes the same early-stopping
        decision (a worker leaving the loop alone would leave the others waiting in the next all-reduce)."""
        if self.world_size == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world_size).tolist()


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when this process can use a GPU, else the CPU; ``"cpu"``/``"cuda"`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but torch sees no GPU here (is this the CPU build of torch?)")
    return torch.device(name)


def shard_rows(n: int, rank: int, world_size: int, seed: int) -> np.ndarray:
    """Sorted positions of this rank's share of ``n`` rows: one shuffle with ``seed`` (the same on every rank),
    then every ``world_size``-th row, cut to ``n // world_size`` so that every rank takes the same number of
    optimiser steps (DDP's all-reduce needs every rank in every step). Shards are disjoint; the
    ``n % world_size`` rows left over are not trained on. One worker keeps every row in order."""
    if world_size == 1:
        return np.arange(n)
    if n < world_size:
        raise ValueError(f"{n} rows cannot be shared among {world_size} workers")
    return np.sort(np.random.default_rng(seed).permutation(n)[rank::world_size][: n // world_size])


def fit_early_stopping(model: nn.Module, loss_fn, x_train: torch.Tensor, y_train: torch.Tensor,
                       x_val: torch.Tensor, y_val: torch.Tensor, cfg: TrainConfig, epochs: int,
                       params=None, log_prefix: str | None = None, optimizer: str | None = None,
                       lr: float | None = None, on_epoch: Callable[[int, dict], None] | None = None,
                       parallel: Parallel | None = None) -> list[dict]:
    """Mini-batch training with early stopping on validation loss (patience ``cfg.patience``); restores the
    best weights. Returns the per-epoch history (``train_loss``, ``val_loss``), also logged to the active
    MLflow run when ``log_prefix`` is given and passed to ``on_epoch(epoch, row)``.

    With ``parallel`` over several workers, ``x_train``/``y_train`` are this worker's shard and every worker
    passes the same validation rows; both losses in the history are means over the workers."""
    par = parallel or Parallel()
    trained = par.wrap(model)
    opt = make_optimizer(optimizer or cfg.optimizer, params if params is not None else model.parameters(),
                         cfg.lr if optimizer is None else lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, waited, history = float("inf"), copy.deepcopy(model.state_dict()), 0, []
    n = len(x_train)
    # Each worker takes its share of the batch one worker would take: the same steps per epoch and the same
    # gradient (a mean over the whole batch), so the tuned configuration means the same thing here.
    batch_size = max(1, effective_batch_size(cfg.batch_size, n * par.world_size) // par.world_size)
    for epoch in range(epochs):
        trained.train()
        total = 0.0
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            opt.zero_grad()
            loss = loss_fn(trained(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            total += loss.detach().item() * len(idx)
        trained.eval()
        with torch.no_grad():
            val = float(loss_fn(model(x_val), y_val))
        train_loss, val = par.mean([total / n, val])
        history.append({"train_loss": train_loss, "val_loss": val})
        if log_prefix is not None and mlflow.active_run():
            mlflow.log_metrics({f"{log_prefix}train_loss": train_loss, f"{log_prefix}val_loss": val}, step=epoch)
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
        if val < best - 1e-7:
            best, best_state, waited = val, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return history


@dataclass
class Fitted:
    """One trained HitMusicNet with its preprocessing, calibration and learning curves."""

    net: HitMusicNet
    pre: Preprocessor
    meta: ModelMeta
    history: dict[str, list[dict]] = field(default_factory=dict)
    seconds: float = 0.0
    shard: np.ndarray | None = None  # positions in the fit rows this worker trained on

    @property
    def pyfunc(self) -> HitMusicPyfunc:
        return HitMusicPyfunc(self.net, self.pre, self.meta)

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        return self.pyfunc.predict(None, rows)

    def code(self, rows: pd.DataFrame) -> np.ndarray:
        """The scaled autoencoder code ``(n_rows, c)`` MusicPopNet sees."""
        with torch.inference_mode():
            return self.net.code(torch.from_numpy(self.pre.transform(rows))).numpy()


def class_labels(popularity: np.ndarray, thresholds: tuple[float, float]) -> np.ndarray:
    """Class indices 0/1/2 (low/medium/high) of popularity values."""
    return np.digitize(np.asarray(popularity, float), thresholds)


def class_loss_weights(labels: np.ndarray, scheme: str) -> np.ndarray:
    """Cross-entropy weights of the three classes: ``"none"`` all 1; ``"balanced"`` n / (3 · count), as
    scikit-learn's ``compute_class_weight`` (classes absent from ``labels`` keep 1)."""
    weights = np.ones(len(CLASS_NAMES))
    if scheme == "balanced":
        present = np.unique(labels)
        weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    elif scheme != "none":
        raise ValueError(f"unknown class weighting {scheme!r}; choose 'none' or 'balanced'")
    return weights


def fit_model(fit_rows: pd.DataFrame, val_rows: pd.DataFrame, calib_rows: pd.DataFrame, columns: list[str],
              cfg: TrainConfig, log: bool = False,
              on_epoch: Callable[[str, int, dict], None] | None = None, parallel: Parallel | None = None) -> Fitted:
    """Preprocessing on ``fit_rows``; MusicAENet (Adam, MSE); then, on the frozen code, MusicPopNet for
    popularity / 100 (MSE) and, with ``cfg.classifier``, the 3-class MusicPopNet (cross-entropy, class weights
    per ``cfg.class_weight``); early stopping on ``val_rows``; the conformal calibrator on
    ``calib_rows``. ``log`` sends per-epoch losses to the active MLflow run; ``on_epoch(stage, epoch, row)``
    sees every epoch of every stage (``ae``, ``pop``, ``cls``).

    With ``parallel`` over several workers (each calling this with the same rows), every worker fits on its
    :func:`shard_rows` of ``fit_rows`` and gradients are averaged (data-parallel); everything else is fitted
    on all of ``fit_rows`` and validated on all of ``val_rows``, so every worker ends with the same model."""
    start = time.perf_counter()
    par = parallel or Parallel(device=resolve_device(cfg.device))
    dev = par.device
    own = shard_rows(len(fit_rows), par.rank, par.world_size, cfg.seed)
    mine = torch.from_numpy(own).to(dev)

    def share(t: torch.Tensor) -> torch.Tensor:
        return t if par.world_size == 1 else t[mine]

    def hook(stage: str):
        return None if on_epoch is None else (lambda epoch, row: on_epoch(stage, epoch, row))

    with torch_threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        pre = Preprocessor.fit(fit_rows, columns)
        xt, xv = (torch.from_numpy(pre.transform(rows)).to(dev) for rows in (fit_rows, val_rows))
        pop_t, pop_v = fit_rows["popularity"].to_numpy(float), val_rows["popularity"].to_numpy(float)
        thresholds = class_thresholds(cfg.class_scheme, pop_t)
        net = HitMusicNet(len(columns), cfg.delta, cfg.dropout, cfg.alphas, cfg.classifier)
        # The variants' initialiser is MusicPopNet's; the autoencoder keeps Keras' default (Glorot uniform).
        initialise(net.ae, "glorot_uniform")
        initialise(net.pop, cfg.initialiser)
        if net.cls is not None:
            initialise(net.cls, cfg.initialiser)
        net.to(dev)
        if par.world_size > 1:
            # Dropout masks should differ between shards; the starting weights are rank 0's anyway (DDP
            # broadcasts them when it wraps a module).
            torch.manual_seed(cfg.seed + par.rank)
        mse = nn.MSELoss()
        history = {"ae": fit_early_stopping(net.ae, mse, share(xt), share(xt), xv, xv, cfg, cfg.ae_epochs,
                                            log_prefix="ae_" if log else None, optimizer=cfg.ae_optimizer,
                                            lr=cfg.ae_lr, on_epoch=hook("ae"), parallel=par)}
        net.ae.requires_grad_(False)
        net.eval()
        net.fit_code_scaling(xt)
        # The encoder is frozen from here on, so its codes are computed once instead of every step.
        with torch.no_grad():
            ct, cv = net.code(xt), net.code(xv)
        yt = torch.tensor(pop_t / 100.0, dtype=torch.float32, device=dev)[:, None]
        yv = torch.tensor(pop_v / 100.0, dtype=torch.float32, device=dev)[:, None]
        history["pop"] = fit_early_stopping(net.pop, mse, share(ct), share(yt), cv, yv, cfg, cfg.mlp_epochs,
                                            log_prefix="pop_" if log else None, on_epoch=hook("pop"),
                                            parallel=par)
        if net.cls is not None:
            lt, lv = class_labels(pop_t, thresholds), class_labels(pop_v, thresholds)
            weights = class_loss_weights(lt, cfg.class_weight)
            # Validation uses the same (weighted) loss: unweighted, it would rise as soon as the weights pull
            # predictions towards the rare classes, and early stopping would halt at once.
            history["cls"] = fit_early_stopping(
                net.cls, nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=dev)),
                share(ct), share(torch.from_numpy(lt).to(dev)), cv, torch.from_numpy(lv).to(dev), cfg,
                cfg.mlp_epochs, log_prefix="cls_" if log else None, on_epoch=hook("cls"), parallel=par)
        net.eval().cpu()
        meta = ModelMeta(d=len(columns), delta=cfg.delta, dropout=cfg.dropout, alphas=list(cfg.alphas),
                         classifier=cfg.classifier, class_scheme=cfg.class_scheme, thresholds=list(thresholds),
                         config=cfg.name)
        fitted = Fitted(net, pre, meta, history, shard=own)
        if len(calib_rows):
            pred = fitted.predict(calib_rows)["popularity"].to_numpy()
            meta.conformal = asdict(SplitConformal.fit(calib_rows["popularity"].to_numpy(float), pred,
                                                       cfg.coverage))
    fitted.seconds = time.perf_counter() - start
    return fitted


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
    elif "popularity" in out:
        m.update({k: m[f"thr_{k}"] for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro")})
    binary = out["above_median"].to_numpy(bool) if "above_median" in out else \
        out["popularity"].to_numpy(float) >= median if "popularity" in out else None
    if binary is not None:
        m.update({f"bin_{k}": v for k, v in label_metrics(truth >= median, binary, [False, True]).items()})
    if "popularity_lower" in out:
        m.update(interval_metrics(truth, out["popularity_lower"], out["popularity_upper"]))
    return m


# --------------------------------------------------------------------------------------------- train()


def dataset_fingerprint(table: pd.DataFrame) -> str:
    """Hash of the model table's content and the feature schema version."""
    h = pd.util.hash_pandas_object(table.sort_values("track_id").reset_index(drop=True), index=False)
    return f"v{FEATURE_SCHEMA_VERSION}-{int(h.sum()) & 0xFFFFFFFFFFFF:012x}"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


PIP_REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", f"pandas=={pd.__version__}",
                    f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}"]


def train(table: pd.DataFrame, cfg: TrainConfig = TrainConfig(), tracking_uri: str | None = None,
          initialiser: str | None = None) -> TrainResult:
    """Train on a model table, log the run and register the model as a new version of ``cfg.model_name``.

    ``initialiser`` overrides ``cfg.initialiser`` when given.
    """
    if initialiser is not None:
        cfg = replace(cfg, initialiser=initialiser)
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    table = training_rows(table)
    columns = feature_columns(table)
    if len(table) < 20:
        raise ValueError(f"model table has {len(table)} rows; at least 20 are needed to split and train")
    s = split_rows(table, cfg)
    mlflow.set_experiment(cfg.experiment)
    with mlflow.start_run():
        fitted = fit_model(s.fit, s.val, s.calib, columns, cfg, log=True)
        with tempfile.TemporaryDirectory() as tmp:
            save_bundle(Path(tmp), fitted.net, fitted.pre, fitted.meta)
            return register_bundle(Path(tmp), table, cfg, tracking_uri)


def register_bundle(bundle: Path, table: pd.DataFrame, cfg: TrainConfig, tracking_uri: str | None = None,
                    parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> TrainResult:
    """Score a saved bundle on the test rows of ``split_rows(table, cfg)`` (rows it never saw when it was
    fitted with the same ``cfg``), log parameters, metrics and the pyfunc model, and register it as a new
    version of ``cfg.model_name``. Logs into the active MLflow run, or a new one (nested under
    ``parent_run_id`` when given)."""
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    table = training_rows(table)
    s = split_rows(table, cfg)
    net, pre, meta = load_bundle(bundle_artifacts(bundle))
    model = HitMusicPyfunc(net, pre, meta)
    if mlflow.active_run() is not None:
        opened = contextlib.nullcontext(mlflow.active_run())
    elif parent_run_id is not None:  # beside its parent, e.g. the tuning job that chose it
        opened = mlflow.start_run(parent_run_id=parent_run_id,
                                  experiment_id=mlflow.get_run(parent_run_id).info.experiment_id)
    else:
        mlflow.set_experiment(cfg.experiment)
        opened = mlflow.start_run()
    with opened as run:
        fingerprint = dataset_fingerprint(table)
        mlflow.log_params({**asdict(cfg), "n_features": len(pre.columns),
                           "effective_batch_size": effective_batch_size(cfg.batch_size, len(s.fit)),
                           "n_train": len(s.fit), "n_val": len(s.val), "n_calib": len(s.calib),
                           "n_test": len(s.test)})
        all_tags = {"dataset_fingerprint": fingerprint, "feature_schema_version": FEATURE_SCHEMA_VERSION,
                    "git_commit": git_commit(), "model_family": "hitmusicnet", "config": cfg.name, **(tags or {})}
        mlflow.set_tags(all_tags)
        truth = s.test["popularity"].to_numpy(float)
        train_pop = s.fit["popularity"].to_numpy(float)
        metrics = {f"test_{k}": v for k, v in score(truth, model.predict(None, s.test), tuple(meta.thresholds),
                                                    float(np.median(train_pop))).items()}
        metrics["test_mae_predict_mean"] = regression_metrics(truth, np.full_like(truth, train_pop.mean()))["mae"]
        if meta.conformal:
            metrics["conformal_halfwidth"] = meta.conformal["halfwidth"]
        mlflow.log_metrics(metrics)
        example = s.test[pre.columns].head(3)
        # models-from-code: the pyfunc class lives in the package, the version holds weights + JSON only
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).with_name("pyfunc_code.py")),
            artifacts=bundle_artifacts(bundle),
            signature=infer_signature(example, model.predict(None, example)), input_example=example,
            registered_model_name=cfg.model_name, pip_requirements=PIP_REQUIREMENTS,
        )
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        for k, v in {**all_tags, "test_mae": f"{metrics['test_mae']:.5f}", "run_id": run.info.run_id}.items():
            client.set_model_version_tag(cfg.model_name, version, k, v)
        return TrainResult(run.info.run_id, cfg.model_name, version, metrics)


# --------------------------------------------------------------------------------------------- CV


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
    table = training_rows(table)
    columns = feature_columns(table)
    min_rows = 4 * ecfg.n_folds
    if len(table) < min_rows:
        raise ValueError(f"model table has {len(table)} rows; {ecfg.n_folds}-fold CV needs at least {min_rows}")
    configs = [paper_config(n, base) if n != base.name else base for n in ecfg.configs]
    outer, test = stratified_split(table, base.test_size, base.seed, base.strat_bins)
    truth_test = test["popularity"].to_numpy(float)
    strat = popularity_bins(outer["popularity"].to_numpy(), min(base.strat_bins, len(outer) // ecfg.n_folds))
    folds = StratifiedKFold(ecfg.n_folds, shuffle=True, random_state=base.seed).split(outer, strat)
    rows: list[dict] = []
    histories: dict = {}
    codes: dict = {}
    thresholds = class_thresholds(base.class_scheme, outer["popularity"].to_numpy(float))
    for k, (tr_idx, va_idx) in enumerate(folds):
        train_part, val = outer.iloc[tr_idx].reset_index(drop=True), outer.iloc[va_idx].reset_index(drop=True)
        fit_rows, calib = stratified_split(train_part, base.calib_size, base.seed + k, base.strat_bins) \
            if base.calib_size > 0 else (train_part, train_part.iloc[:0])
        fold_pop = fit_rows["popularity"].to_numpy(float)
        median = float(np.median(fold_pop))
        fold_thr = class_thresholds(base.class_scheme, fold_pop)
        for cfg in configs:
            fitted = fit_model(fit_rows, val, calib, columns, replace(cfg, seed=base.seed + k))
            for split_name, rows_ in (("val", val), ("test", test)):
                m = score(rows_["popularity"].to_numpy(float), fitted.predict(rows_), fold_thr, median,
                          ecfg.top_fraction)
                rows.append({"model": cfg.name, "fold": k, "split": split_name, "seconds": fitted.seconds, **m})
            histories[(cfg.name, k)] = fitted.history
            if k == 0:
                sample = test.sample(min(len(test), ecfg.tsne_points), random_state=base.seed)
                codes[cfg.name] = (fitted.code(sample), popularity_class(sample["popularity"].to_numpy(float),
                                                                         fold_thr))
            say(f"fold {k + 1}/{ecfg.n_folds} {cfg.name}: val MAE {rows[-2]['mae']:.4f}, "
                f"test MAE {rows[-1]['mae']:.4f} ({fitted.seconds:.1f} s)")
        pre = Preprocessor.fit(fit_rows, columns)
        X_fit, X_val, X_test = pre.transform(fit_rows), pre.transform(val), pre.transform(test)
        for name in ecfg.baselines:
            start = time.perf_counter()
            with threadpool_limits(base.threads):
                model = baseline_models.make(name, base.seed + k).fit(X_fit, fold_pop, fold_thr, median)
            seconds = time.perf_counter() - start
            for split_name, X, truth in (("val", X_val, val["popularity"].to_numpy(float)),
                                         ("test", X_test, truth_test)):
                rows.append({"model": model.label, "fold": k, "split": split_name, "seconds": seconds,
                             **score(truth, model.predict(X), fold_thr, median, ecfg.top_fraction)})
            say(f"fold {k + 1}/{ecfg.n_folds} {model.label}: {seconds:.1f} s")
    return CVResult(scores=pd.DataFrame(rows), histories=histories, codes=codes,
                    train_popularity=outer["popularity"].to_numpy(float), thresholds=thresholds,
                    n_rows=len(table), n_features=len(columns), n_test=len(test),
                    settings={"base": asdict(base), "evaluate": asdict(ecfg)})
