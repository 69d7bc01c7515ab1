"""Training HitMusicNet: MusicAENet on the scaled features, then MusicPopNet on its code, tracked in MLflow.

Procedure: a stratified (popularity bins) train/test split; a validation part of the training rows for
early stopping; the preprocessing (median imputation, min-max scaling) fitted on the training rows only;
the autoencoder trained to reconstruct, then frozen while MusicPopNet learns popularity / 100 with MSE;
early stopping with patience on validation loss, best weights restored. Test metrics are computed once, on
rows neither model nor scaler saw, and logged with the model, which is registered as a new version.
"""

from __future__ import annotations

import copy
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import infer_signature
from sklearn.model_selection import train_test_split
from torch import nn

from .config import FEATURE_SCHEMA_VERSION, TrainConfig
from .config import tracking_uri as resolve_tracking_uri
from .data import feature_columns, training_rows
from .evaluate import class_metrics, regression_metrics
from .models import HitMusicNet, initialise
from .predict import HitMusicPyfunc, Preprocessor, save_bundle

OPTIMISERS = {
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr * 10, momentum=0.9),
    "adadelta": lambda p, lr: torch.optim.Adadelta(p, lr=1.0),
    "nadam": lambda p, lr: torch.optim.NAdam(p, lr=lr),
}


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    version: str
    metrics: dict[str, float]


def popularity_bins(pop: np.ndarray, n_bins: int = 5) -> np.ndarray:
    """Quantile bins of popularity for stratified splits (fewer bins when there are few distinct values)."""
    ranks = pd.Series(pop).rank(method="first")
    return pd.qcut(ranks, q=min(n_bins, max(1, len(pop) // 4)), labels=False).to_numpy()


def split(table: pd.DataFrame, test_size: float, val_size: float, seed: int):
    """Train / validation / test frames, stratified on popularity bins."""
    train, test = train_test_split(table, test_size=test_size, random_state=seed,
                                   stratify=popularity_bins(table["popularity"].to_numpy()))
    train, val = train_test_split(train, test_size=val_size, random_state=seed,
                                  stratify=popularity_bins(train["popularity"].to_numpy()))
    return train.reset_index(drop=True), val.reset_index(drop=True), test.reset_index(drop=True)


def effective_batch_size(batch_size: int, n_train: int, min_steps: int = 10) -> int:
    """The configured batch size, reduced for small tables so that an epoch has at least ``min_steps``
    optimiser steps (never below 8). With the paper's 256 this only matters below 2,560 training rows: on a
    200-track sample one full batch per epoch would leave 100 epochs with 100 steps, too few to learn."""
    return max(1, min(batch_size, max(8, n_train // min_steps)))


def fit_early_stopping(model: nn.Module, loss_fn, x_train: torch.Tensor, y_train: torch.Tensor,
                       x_val: torch.Tensor, y_val: torch.Tensor, cfg: TrainConfig, epochs: int,
                       params=None, log_prefix: str = "") -> list[dict]:
    """Mini-batch training with early stopping on validation loss; restores the best weights.

    Returns the per-epoch history (``train_loss``, ``val_loss``), also logged to the active MLflow run.
    """
    opt = OPTIMISERS[cfg.optimizer](params if params is not None else model.parameters(), cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, waited, history = float("inf"), copy.deepcopy(model.state_dict()), 0, []
    n = len(x_train)
    batch_size = effective_batch_size(cfg.batch_size, n)
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            opt.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            total += loss.detach().item() * len(idx)
        model.eval()
        with torch.no_grad():
            val = float(loss_fn(model(x_val), y_val))
        history.append({"train_loss": total / n, "val_loss": val})
        if mlflow.active_run():
            mlflow.log_metrics({f"{log_prefix}train_loss": total / n, f"{log_prefix}val_loss": val}, step=epoch)
        if val < best - 1e-7:
            best, best_state, waited = val, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return history


def fit_hitmusicnet(train: pd.DataFrame, val: pd.DataFrame, columns: list[str], cfg: TrainConfig,
                    initialiser: str = "glorot_uniform") -> tuple[HitMusicNet, Preprocessor]:
    """Fit preprocessing on ``train``, then MusicAENet, then MusicPopNet on the frozen encoder's code."""
    torch.manual_seed(cfg.seed)
    pre = Preprocessor.fit(train, columns)
    xt, xv = torch.from_numpy(pre.transform(train)), torch.from_numpy(pre.transform(val))
    yt = torch.tensor(train["popularity"].to_numpy() / 100.0, dtype=torch.float32)[:, None]
    yv = torch.tensor(val["popularity"].to_numpy() / 100.0, dtype=torch.float32)[:, None]
    net = HitMusicNet(len(columns), cfg.delta, cfg.dropout)
    initialise(net, initialiser)
    mse = nn.MSELoss()
    fit_early_stopping(net.ae, mse, xt, xt, xv, xv, cfg, cfg.ae_epochs, log_prefix="ae_")
    for p in net.ae.parameters():
        p.requires_grad_(False)
    fit_early_stopping(net, mse, xt, yt, xv, yv, cfg, cfg.mlp_epochs, params=net.pop.parameters(),
                       log_prefix="pop_")
    net.eval()
    return net, pre


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
          initialiser: str = "glorot_uniform") -> TrainResult:
    """Train on a model table, log the run and register the model as a new version of ``cfg.model_name``."""
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    table = training_rows(table)
    columns = feature_columns(table)
    if len(table) < 20:
        raise ValueError(f"model table has {len(table)} rows; at least 20 are needed to split and train")
    train_df, val_df, test_df = split(table, cfg.test_size, cfg.val_size, cfg.seed)
    mlflow.set_experiment(cfg.experiment)
    with mlflow.start_run() as run:
        mlflow.log_params({**asdict(cfg), "initialiser": initialiser, "n_features": len(columns),
                           "effective_batch_size": effective_batch_size(cfg.batch_size, len(train_df)),
                           "n_train": len(train_df), "n_val": len(val_df), "n_test": len(test_df)})
        fingerprint = dataset_fingerprint(table)
        mlflow.set_tags({"dataset_fingerprint": fingerprint, "feature_schema_version": FEATURE_SCHEMA_VERSION,
                         "git_commit": git_commit(), "model_family": "hitmusicnet"})
        net, pre = fit_hitmusicnet(train_df, val_df, columns, cfg, initialiser)
        model = HitMusicPyfunc()
        model.pre, model.net = pre, net
        pred = model.predict(None, test_df)["popularity"].to_numpy()
        truth = test_df["popularity"].to_numpy()
        metrics = {f"test_{k}": v for k, v in {**regression_metrics(truth, pred),
                                                **class_metrics(truth, pred)}.items()}
        metrics["test_mae_predict_mean"] = regression_metrics(
            truth, np.full_like(truth, train_df["popularity"].mean(), dtype=float))["mae"]
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            arch = {"d": len(columns), "delta": cfg.delta, "dropout": cfg.dropout}
            artifacts = save_bundle(Path(tmp), net, pre, arch)
            example = test_df[columns].head(3)
            info = mlflow.pyfunc.log_model(
                name="model", python_model=HitMusicPyfunc(), artifacts=artifacts,
                signature=infer_signature(example, model.predict(None, example)), input_example=example,
                registered_model_name=cfg.model_name, pip_requirements=PIP_REQUIREMENTS,
            )
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        for k, v in {"dataset_fingerprint": fingerprint, "git_commit": git_commit(),
                     "test_mae": f"{metrics['test_mae']:.5f}", "run_id": run.info.run_id}.items():
            client.set_model_version_tag(cfg.model_name, version, k, v)
        return TrainResult(run.info.run_id, cfg.model_name, version, metrics)

