"""Fitting HitMusicNet: MusicAENet on the scaled features, then MusicPopNet on its frozen code.

:func:`fit_model` fits one model on the fit rows of a split (optionally data-parallel over Ray Train workers,
:class:`Parallel`), early-stopping on the validation rows and calibrating the interval on the calibration rows.
Everything that is fitted (imputation medians, min-max scaling, the code's scaling, class boundaries, the
conformal calibrator) sees those rows only.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import mlflow
import numpy as np
import pandas as pd
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from hitmodels.config import CLASS_NAMES, TrainConfig
from hitmodels.devices import Parallel, resolve_device, shard_rows, torch_threads  # noqa: F401 (re-exported)
from hitmodels.families.base import Fitted
from hitmodels.predict import Preprocessor, class_labels, class_thresholds
from hitmodels.tracking import EpochMetrics

from .model import HitMusicPyfunc, ModelMeta
from .network import HitMusicNet, initialise

# The paper trained with Keras; these are Keras' defaults for each optimiser (Adadelta's rho and epsilon
# too), used whenever TrainConfig.lr is None.
KERAS_LR = {"sgd": 0.01, "adam": 1e-3, "nadam": 2e-3, "adadelta": 1.0}
OPTIMISERS = {
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr, eps=1e-7),
    "nadam": lambda p, lr: torch.optim.NAdam(p, lr=lr, eps=1e-7),
    "adadelta": lambda p, lr: torch.optim.Adadelta(p, lr=lr, rho=0.95, eps=1e-7),
}


def make_optimizer(name: str, params, lr: float | None, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The named optimiser (Keras' learning rate unless ``lr``); with ``weight_decay`` > 0, Adam becomes
    AdamW (decoupled decay) and the others take it as their L2 penalty."""
    if name not in OPTIMISERS:
        raise ValueError(f"unknown optimiser {name!r}; choose from {sorted(OPTIMISERS)}")
    lr = KERAS_LR[name] if lr is None else lr
    if weight_decay > 0:
        if name == "adam":
            return torch.optim.AdamW(params, lr=lr, eps=1e-7, weight_decay=weight_decay)
        opt = OPTIMISERS[name](params, lr)
        for group in opt.param_groups:
            group["weight_decay"] = weight_decay
        return opt
    return OPTIMISERS[name](params, lr)


def effective_batch_size(batch_size: int, n_train: int, min_steps: int = 10) -> int:
    """The configured batch size, reduced for small tables so that an epoch has at least ``min_steps``
    optimiser steps (never below 8). With the paper's 256 this only matters below 2,560 training rows: on a
    200-track sample one full batch per epoch would leave 100 epochs with 100 steps, too few to learn."""
    return max(1, min(batch_size, max(8, n_train // min_steps)))


def fit_early_stopping(model: nn.Module, loss_fn, x_train: torch.Tensor, y_train: torch.Tensor,
                       x_val: torch.Tensor, y_val: torch.Tensor, cfg: TrainConfig, epochs: int,
                       params=None, log_prefix: str | None = None, optimizer: str | None = None,
                       lr: float | None = None, on_epoch: Callable[[int, dict], None] | None = None,
                       parallel: Parallel | None = None, val_loss_fn=None, weight_decay: float = 0.0,
                       keep_start: bool = False) -> list[dict]:
    """Mini-batch training with early stopping on validation loss (patience ``cfg.patience``); restores the
    best weights. Returns the per-epoch history (``train_loss``, ``val_loss``), also logged to the active
    MLflow run when ``log_prefix`` is given and passed to ``on_epoch(epoch, row)``.

    With ``parallel`` over several workers, ``x_train``/``y_train`` are this worker's shard and every worker
    passes the same validation rows; both losses in the history are means over the workers."""
    par = parallel or Parallel()
    trained = par.wrap(model)
    opt = make_optimizer(optimizer or cfg.optimizer, params if params is not None else model.parameters(),
                         cfg.lr if optimizer is None else lr, weight_decay)
    val_loss_fn = val_loss_fn or loss_fn
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, waited, history = float("inf"), copy.deepcopy(model.state_dict()), 0, []
    if keep_start:  # the starting weights compete too: training must beat them on validation to replace them
        model.eval()
        with torch.no_grad():
            best = par.mean([float(val_loss_fn(model(x_val), y_val))])[0]
    n = len(x_train)
    # Each worker takes its share of the batch one worker would take: the same steps per epoch and the same
    # gradient (a mean over the whole batch), so the tuned configuration means the same thing here.
    batch_size = max(1, effective_batch_size(cfg.batch_size, n * par.world_size) // par.world_size)
    epoch_log = EpochMetrics()  # a server restart mid-training costs no epoch and no metric
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
            val = float(val_loss_fn(model(x_val), y_val))
        train_loss, val = par.mean([total / n, val])
        history.append({"train_loss": train_loss, "val_loss": val})
        if log_prefix is not None and mlflow.active_run():
            epoch_log.log({f"{log_prefix}train_loss": train_loss, f"{log_prefix}val_loss": val}, epoch)
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
        if val < best - 1e-7:
            best, best_state, waited = val, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    model.load_state_dict(best_state)
    epoch_log.close()
    return history


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


def fit_end_to_end(net: HitMusicNet, x_fit: torch.Tensor, y_fit: torch.Tensor, x_val: torch.Tensor,
                   y_val: torch.Tensor, cfg: TrainConfig, log: bool, on_epoch, par: Parallel) -> list[dict]:
    """The small-table variant's second stage: the pre-trained encoder, MusicPopNet and the linear path trained
    together on MSE (+ ``skip_l1`` · |linear weights|₁, which keeps the linear path sparse as a Lasso is) with
    ``weight_decay``, early-stopped on validation MAE. MusicPopNet's output starts at the mean target."""
    last = net.pop.net[-1]
    with torch.no_grad():
        nn.init.zeros_(last.weight)
        last.bias.fill_(float(y_fit.mean()))
        if net.skip is not None and cfg.skip_init == "lasso":
            # the linear path starts where a Lasso on the same inputs ends (penalty by 3-fold CV), so the
            # network starts from the classical peer's answer and early stopping can only keep or improve it
            from sklearn.linear_model import LassoCV

            z = net.inputs(x_fit).cpu().numpy().astype(np.float64)
            y = y_fit[:, 0].cpu().numpy().astype(np.float64)
            lasso = LassoCV(alphas=20, cv=3, max_iter=5000, random_state=cfg.seed).fit(z, y)
            net.skip.weight.copy_(torch.tensor(lasso.coef_, dtype=net.skip.weight.dtype)[None])
            net.skip.bias.fill_(float(lasso.intercept_) - float(y_fit.mean()))
    net.ae.encoder.requires_grad_(True)
    if net.cls is not None:  # not part of this stage (DDP wants every trainable parameter used)
        net.cls.requires_grad_(False)
    params = [p for m in (net.ae.encoder, net.pop, net.skip) if m is not None for p in m.parameters()]
    mse = nn.MSELoss()

    def loss(pred, y):
        penalty = cfg.skip_l1 * net.skip.weight.abs().sum() if net.skip is not None and cfg.skip_l1 else 0.0
        return mse(pred, y) + penalty

    try:
        return fit_early_stopping(net, loss, x_fit, y_fit, x_val, y_val, cfg, cfg.mlp_epochs, params=params,
                                  log_prefix="pop_" if log else None, on_epoch=on_epoch, parallel=par,
                                  val_loss_fn=lambda pred, y: (pred - y).abs().mean(),
                                  weight_decay=cfg.weight_decay, keep_start=cfg.skip_init == "lasso")
    finally:
        net.ae.requires_grad_(False)
        if net.cls is not None:
            net.cls.requires_grad_(True)
        net.eval()


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
        net = HitMusicNet(len(columns), cfg.delta, cfg.dropout, cfg.alphas, cfg.classifier, cfg.standardise,
                          cfg.skip_linear, cfg.min_width)
        # The variants' initialiser is MusicPopNet's; the autoencoder keeps Keras' default (Glorot uniform).
        initialise(net.ae, "glorot_uniform")
        initialise(net.pop, cfg.initialiser)
        if net.cls is not None:
            initialise(net.cls, cfg.initialiser)
        if net.skip is not None:  # the linear path starts at zero: MusicPopNet alone at first
            nn.init.zeros_(net.skip.weight)
            nn.init.zeros_(net.skip.bias)
        net.to(dev)
        net.fit_input_scaling(xt)
        st, sv = net.inputs(xt), net.inputs(xv)  # what the autoencoder reconstructs (xt itself for the paper's)
        if par.world_size > 1:
            # Dropout masks should differ between shards; the starting weights are rank 0's anyway (DDP
            # broadcasts them when it wraps a module).
            torch.manual_seed(cfg.seed + par.rank)
        mse = nn.MSELoss()
        history = {"ae": fit_early_stopping(net.ae, mse, share(st), share(st), sv, sv, cfg, cfg.ae_epochs,
                                            log_prefix="ae_" if log else None, optimizer=cfg.ae_optimizer,
                                            lr=cfg.ae_lr, on_epoch=hook("ae"), parallel=par)}
        net.ae.requires_grad_(False)
        net.eval()
        net.fit_code_scaling(xt)
        yt = torch.tensor(pop_t / 100.0, dtype=torch.float32, device=dev)[:, None]
        yv = torch.tensor(pop_v / 100.0, dtype=torch.float32, device=dev)[:, None]
        if cfg.end_to_end:
            history["pop"] = fit_end_to_end(net, share(xt), share(yt), xv, yv, cfg, log, hook("pop"), par)
        else:
            # The encoder is frozen from here on, so its codes are computed once instead of every step.
            with torch.no_grad():
                ct, cv = net.code(xt), net.code(xv)
            history["pop"] = fit_early_stopping(net.pop, mse, share(ct), share(yt), cv, yv, cfg, cfg.mlp_epochs,
                                                log_prefix="pop_" if log else None, on_epoch=hook("pop"),
                                                parallel=par)
        with torch.no_grad():
            ct, cv = net.code(xt), net.code(xv)
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
                         config=cfg.name, standardise=cfg.standardise, skip_linear=cfg.skip_linear,
                         min_width=cfg.min_width)
        fitted = Fitted(HitMusicPyfunc(net, pre, meta), history, shard=own)
        fitted.model.calibrate(calib_rows, cfg.coverage)
    fitted.seconds = time.perf_counter() - start
    return fitted
