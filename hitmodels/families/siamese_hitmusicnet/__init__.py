"""Siamese HitMusicNet: Yu et al.'s rating + ranking objective over HitMusicNet's feature rows, so a catalogue
without audio (or without a mel store) can use the ranking objective too.

The scoring network is an MLP in HitMusicNet's shape: the feature row (training medians imputed, min-max
scaled) compressed to ``ceil(delta * d)`` units (at least 16), then half that, dropout, and one sigmoid unit:
the hit score, regressed on popularity / 100. It is trained as the Siamese CNN is
(:func:`hitmodels.pair_training.train_pairs`: ``(1 - w) MSE + w hinge`` on pairs drawn from the fit rows by
``sampling``, early stopping on the validation objective; ``ab+artist`` fuses an A/B and an artist model with
the weight best on validation). It takes feature rows, so it competes for the same champion as HitMusicNet,
the Lasso and the trees, on the same metric (test MAE).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hitmodels.config import TrainConfig
from hitmodels.families.base import Family, Fitted
from hitmodels.predict import MetaRowModel, Preprocessor

# epochs and patience: --epochs and --patience (TrainConfig.mlp_epochs, .patience) unless --param sets them
DEFAULTS = {"sampling": "ab", "w": 0.5, "margin": 0.05, "lr": 1e-3, "epochs": TrainConfig.mlp_epochs,
            "patience": TrainConfig.patience, "batch_pairs": 32, "delta": 0.2, "dropout": 0.1, "weight_decay": 1e-4}


def settings(cfg: TrainConfig) -> dict:
    return {**DEFAULTS, "epochs": cfg.mlp_epochs, "patience": cfg.patience, **cfg.params}
FILES = ("weights.pt", "arch.json", "preprocess.json")  # hitmodels.torch_bundle's
SAMPLINGS = ("none", "naive", "ab", "artist", "ab+artist")
ARCH_VERSION = 1


def build_net(d: int, delta: float, dropout: float):
    """The scoring MLP; its first module z-scores the (min-max scaled) inputs with the fit rows' means and
    deviations (buffers set by :func:`standardise`, saved with the weights)."""
    import torch
    from torch import nn

    class Standardise(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.zeros(d))
            self.register_buffer("std", torch.ones(d))

        def forward(self, x):
            return (x - self.mean) / self.std

    c = max(16, math.ceil(delta * d))
    return nn.Sequential(Standardise(), nn.Linear(d, c), nn.ReLU(), nn.Linear(c, max(8, c // 2)), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(max(8, c // 2), 1), nn.Sigmoid(), nn.Flatten(0))


def standardise(net, X) -> None:
    """Set the network's input standardisation from the fit rows ``X`` ``(n, d)`` (scaled)."""
    import torch

    net[0].mean.copy_(X.mean(0))
    net[0].std.copy_(torch.clamp(X.std(0), min=1e-3))


@dataclass
class Meta:
    d: int
    delta: float
    dropout: float
    sampling: str
    w: float
    margin: float
    fusion: list[float]
    thresholds: list[float]
    train_scores: list[float] = field(default_factory=list)
    conformal: dict | None = None
    config: str = "custom"
    arch_version: int = ARCH_VERSION

    def build(self):
        from torch import nn

        return nn.ModuleList(build_net(self.d, self.delta, self.dropout) for _ in self.fusion)


class SiameseRowModel(MetaRowModel):
    family = "siamese-hitmusicnet"

    def __init__(self, nets, pre: Preprocessor, meta: Meta):
        self.nets = nets
        super().__init__(pre, meta)

    @property
    def has_classes(self) -> bool:
        return False

    @property
    def outputs(self) -> list[str]:
        return [*super().outputs, "percentile"]

    def scoring(self, precision: str):
        import torch

        return torch.inference_mode()

    def scores(self, x: np.ndarray, precision: str) -> tuple[np.ndarray, None]:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return sum(w * net.eval()(t).double().numpy() for w, net in zip(self.meta.fusion, self.nets)), None

    def score_program(self):
        """Each fused network's steps (standardise, two ReLU layers, sigmoid) and their weighted sum."""
        from hitmodels import torch_bundle
        from hitmodels.kernels import Program

        steps, arrays, total = [], {}, None
        for i, (w, net) in enumerate(zip(self.meta.fusion, self.nets)):
            part, out = torch_bundle.dense_steps(net, "x", f"net{i}", arrays)
            arrays[f"w{i}"] = np.asarray(w, np.float64)  # summed in float64, as scores() sums them
            steps += part + [("scale", f"weighted{i}", out, f"w{i}")]
            if total is not None:
                steps.append(("add", f"sum{i}", total, f"weighted{i}"))
            total = f"sum{i}" if total is not None else f"weighted{i}"
        return Program(steps, arrays, total)

    def kernel(self):
        kernel = super().kernel()
        kernel.percentile_of = list(self.meta.train_scores)
        return kernel

    def predict_array(self, X, scaled=False, chunk_rows=2048, precision="fp32"):
        out = super().predict_array(X, scaled, chunk_rows, precision)
        from hitmodels.ranking import percentile

        # the clipped popularity is 100 x the hit score (a sigmoid's, always within 0-100)
        out["percentile"] = percentile(out["popularity"] / 100.0, self.meta.train_scores)
        return out


class SiameseHitMusicNetFamily(Family):
    name = "siamese-hitmusicnet"
    label = "Siamese HitMusicNet (ranking objective on feature rows)"
    files = FILES
    early_stops = True
    defaults = DEFAULTS

    def check(self, cfg: TrainConfig) -> None:
        super().check(cfg)
        p = settings(cfg)
        if p["sampling"] not in SAMPLINGS:
            raise ValueError(f"unknown sampling {p['sampling']!r}; choose from {', '.join(SAMPLINGS)}")
        if not 0 <= p["w"] <= 1 or p["margin"] < 0 or not 0 < p["delta"] <= 1 or p["lr"] <= 0:
            raise ValueError("siamese-hitmusicnet settings out of range: 0 <= w <= 1, margin >= 0, 0 < delta <= 1, "
                             "lr > 0")

    def variants(self, tags: bool = False) -> dict[str, dict]:
        if tags:
            raise ValueError("siamese-hitmusicnet has no tag branch: tag or genre columns are among its feature rows")
        return {"rating-only": {"sampling": "none"}, "naive": {"sampling": "naive"}, "artist": {"sampling": "artist"},
                "ab": {"sampling": "ab"}, "ab+artist": {"sampling": "ab+artist"}}

    def fit(self, fit_rows, val_rows, calib_rows, columns, cfg, log=False, on_epoch=None, parallel=None) -> Fitted:
        import torch

        from hitmodels.devices import resolve_device, torch_threads
        from hitmodels.pair_training import fusion_weight, train_pairs
        from hitmodels.ranking import score_quantiles
        from hitmodels.train import artist_groups
        from hitmodels.predict import class_thresholds

        start = time.perf_counter()
        p = {**settings(cfg), "seed": cfg.seed}
        pre = Preprocessor.fit(fit_rows, columns)
        X = torch.from_numpy(pre.transform(fit_rows))
        Xv = torch.from_numpy(pre.transform(val_rows))
        y = fit_rows["popularity"].to_numpy(float) / 100.0
        val_y = val_rows["popularity"].to_numpy(float) / 100.0
        artists = artist_groups(fit_rows)
        dev = resolve_device(cfg.device)
        kinds = ["ab", "artist"] if p["sampling"] == "ab+artist" else [p["sampling"]]
        nets, history = [], {}
        with torch_threads(cfg.threads):
            for kind in kinds:
                torch.manual_seed(cfg.seed)
                net = build_net(X.shape[1], float(p["delta"]), float(p["dropout"]))
                standardise(net, X)
                net = net.to(dev)
                Xd, Xvd = X.to(dev), Xv.to(dev)
                net, hist = train_pairs(net, lambda idx: (Xd[torch.from_numpy(idx).to(dev)],),
                                        lambda n: n(Xvd).double().cpu().numpy(), y, artists, val_y, p, kind, dev,
                                        log, on_epoch, stage=f"siamese-hitmusicnet-{kind}")
                nets.append(net)
                history[f"siamese-hitmusicnet-{kind}"] = hist
        fusion = [1.0]
        if len(nets) == 2:
            with torch.inference_mode():
                sa, sb = (n(Xv).double().numpy() for n in nets)
            alpha = fusion_weight(sa, sb, val_y, float(p["w"]), float(p["margin"])) if len(val_y) else 0.5
            fusion = [alpha, 1.0 - alpha]
        meta = Meta(d=X.shape[1], delta=float(p["delta"]), dropout=float(p["dropout"]), sampling=p["sampling"],
                    w=float(p["w"]), margin=float(p["margin"]), fusion=fusion,
                    thresholds=list(class_thresholds(cfg.class_scheme, y * 100)), config=cfg.name)
        model = SiameseRowModel(torch.nn.ModuleList(nets), pre, meta)
        train_scores = model.predict_array(X.numpy(), scaled=True)["popularity"] / 100.0
        meta.train_scores = score_quantiles(train_scores)
        model.calibrate(calib_rows, cfg.coverage)
        return Fitted(model, history, time.perf_counter() - start)

    def network(self, model: SiameseRowModel):
        return model.nets

    def save(self, model: SiameseRowModel, directory: Path) -> list[str]:
        from hitmodels import torch_bundle

        return torch_bundle.save(directory, model.nets, model.pre, model.meta)

    def load(self, directory: Path) -> SiameseRowModel:
        from hitmodels import torch_bundle

        return SiameseRowModel(*torch_bundle.load(directory, Meta, ARCH_VERSION, "siamese-hitmusicnet model"))

    def params(self, cfg: TrainConfig, n_fit: int | None = None) -> dict:
        return {f"params.{k}": v for k, v in settings(cfg).items()}

    def describe(self, cfg: TrainConfig) -> str:
        from hitmodels.ranking import describe_objective

        p = settings(cfg)
        return f"{self.label}, code δ {p['delta']}, {describe_objective(p)}"

    def space(self, search: str) -> dict:
        from ray import tune

        grid = {"sampling": ["none", "naive", "ab", "artist"], "w": [0.3, 0.7], "margin": [0.02, 0.1],
                "lr": [1e-3, 3e-4]}
        pick = tune.grid_search if search == "grid" else tune.choice
        return {k: pick(v) for k, v in grid.items()}


FAMILY = SiameseHitMusicNetFamily()
