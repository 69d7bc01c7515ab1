"""Fitting the Siamese family: the rating-only CNN or the multi-objective Siamese on pairs of training tracks.

The epoch loop is :func:`hitmodels.pair_training.train_pairs` (pairs drawn afresh from the fit rows every
epoch, early stopping on the validation objective over all validation pairs); ``sampling="none"`` is the
rating-only CNN (MSE on single tracks). ``sampling="ab+artist"`` fits an
A/B and an artist model and fuses their scores with the weight (0, 0.1, ..., 1) best on that same
validation objective.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd
import torch

from hitmodels.config import MelConfig, TrainConfig
from hitmodels.devices import resolve_device, shard_rows, torch_threads
from hitmodels.families.base import Fitted
from hitmodels.predict import Preprocessor, class_thresholds
from hitmodels.train import artist_groups
from hitmodels.pair_training import fusion_weight, train_pairs
from hitmodels.ranking import score_quantiles

from .model import SiameseMeta, SiameseModel, mel_array
from .network import SiameseNet

SAMPLINGS = ("none", "naive", "ab", "artist", "ab+artist")


def tag_columns(columns: list[str]) -> list[str]:
    """The tag branch's inputs among a table's columns: the tagger's ``tag_*`` activations when the table has
    them, else the catalogue's descriptors (the artist's genre families, ``genre_*``)."""
    from hitmodels.features import tagger_columns

    return tagger_columns(columns) or [c for c in columns if c.startswith("genre_")]


def band_stats(mels: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation ``(n_mels, 1)`` over segments ``(n, n_mels, n_frames)``."""
    s = np.zeros(mels.shape[1])
    s2 = np.zeros(mels.shape[1])
    for a in range(0, len(mels), chunk):
        x = mels[a:a + chunk].astype(np.float64)
        s += x.sum(axis=(0, 2))
        s2 += (x ** 2).sum(axis=(0, 2))
    n = len(mels) * mels.shape[2]
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-6))
    return mean[:, None].astype(np.float32), std[:, None].astype(np.float32)


def _scores(net: SiameseNet, mels: np.ndarray, tags: np.ndarray | None, dev, chunk: int = 128) -> np.ndarray:
    net.eval()
    out = []
    with torch.inference_mode():
        for a in range(0, len(mels), chunk):
            x = torch.from_numpy(mels[a:a + chunk].astype(np.float32)).to(dev)
            t = torch.from_numpy(tags[a:a + chunk]).to(dev) if tags is not None else None
            out.append(net(x, t).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def train_network(mels: np.ndarray, tags: np.ndarray | None, y: np.ndarray, artists: np.ndarray,
                  val_mels: np.ndarray, val_tags: np.ndarray | None, val_y: np.ndarray, p: dict, sampling: str,
                  dev, log: bool = False, on_epoch: Callable | None = None, stage: str = "siamese",
                  parallel=None) -> tuple[SiameseNet, list[dict]]:
    """One network fitted on segments ``mels`` ``(n, n_mels, n_frames)`` float16 with targets ``y`` (popularity /
    100), early-stopped on the validation objective; returns it (best epoch's weights) and the history."""
    torch.manual_seed(int(p["seed"]))
    net = SiameseNet(mels.shape[1], int(p["channels"]), int(p["fc"]), float(p["dropout"]),
                     0 if tags is None else tags.shape[1], float(p["mu"]))
    mean, std = band_stats(mels)
    net.audio.mean.copy_(torch.from_numpy(mean))
    net.audio.std.copy_(torch.from_numpy(std))
    net.to(dev)
    tags_t = torch.from_numpy(tags) if tags is not None else None

    def inputs(idx: np.ndarray) -> tuple:
        return torch.from_numpy(mels[idx].astype(np.float32)), tags_t[idx] if tags_t is not None else None

    return train_pairs(net, inputs, lambda n: _scores(n, val_mels, val_tags, dev), y, artists, val_y, p, sampling,
                       dev, log, on_epoch, stage, parallel=parallel)


def fit_siamese(fit_rows: pd.DataFrame, val_rows: pd.DataFrame, calib_rows: pd.DataFrame, columns: list[str],
                cfg: TrainConfig, defaults: dict, log: bool = False, on_epoch=None, parallel=None) -> Fitted:
    """Fit the Siamese family (``parallel``: this worker's place in a data-parallel retraining, see
    :func:`hitmodels.pair_training.train_pairs`)."""
    start = time.perf_counter()
    p = {**defaults, **cfg.params}
    sampling = str(p["sampling"])
    mel_cfg = MelConfig.from_dict(fit_rows.attrs.get("mel_config"))
    tag_cols = tag_columns(columns) if float(p["mu"]) > 0 else []
    if float(p["mu"]) > 0 and not tag_cols:
        raise ValueError("the tag branch (mu > 0) needs tag_* columns (hitmusic extract --tags) or the catalogue's "
                         "genre_* descriptors in the model table; this table has neither")
    pre = Preprocessor.fit(fit_rows, tag_cols)
    mels, val_mels = mel_array(fit_rows, mel_cfg), mel_array(val_rows, mel_cfg)
    tags = pre.transform(fit_rows) if tag_cols else None
    val_tags = pre.transform(val_rows) if tag_cols else None
    y = fit_rows["popularity"].to_numpy(float) / 100.0
    val_y = val_rows["popularity"].to_numpy(float) / 100.0
    artists = artist_groups(fit_rows)
    dev = parallel.device if parallel is not None else resolve_device(cfg.device)
    kinds = ["ab", "artist"] if sampling == "ab+artist" else [sampling]
    nets, history = [], {}
    with torch_threads(cfg.threads):
        for kind in kinds:
            net, hist = train_network(mels, tags, y, artists, val_mels, val_tags, val_y, p, kind, dev, log, on_epoch,
                                      stage=f"siamese-{kind}", parallel=parallel)
            nets.append(net)
            history[f"siamese-{kind}"] = hist
    fusion = [1.0]
    if len(nets) == 2:
        sa, sb = (_scores(n, val_mels, val_tags, "cpu") for n in nets)
        alpha = fusion_weight(sa, sb, val_y, float(p["w"]), float(p["margin"])) if len(val_y) else 0.5
        fusion = [alpha, 1.0 - alpha]
    meta = SiameseMeta(n_mels=mel_cfg.n_mels, channels=int(p["channels"]), fc=int(p["fc"]),
                       dropout=float(p["dropout"]), n_tags=len(tag_cols), mu=float(p["mu"]) if tag_cols else 0.0,
                       segment=str(p["segment"]), sampling=sampling, w=float(p["w"]), margin=float(p["margin"]),
                       fusion=fusion, thresholds=list(class_thresholds(cfg.class_scheme, y * 100)),
                       mel_config=fit_rows.attrs.get("mel_config") or {}, config=cfg.name)
    model = SiameseModel(torch.nn.ModuleList(nets), pre, meta)
    train_scores = model.hit_scores(mels, tags)
    meta.train_scores = score_quantiles(train_scores)
    model.calibrate(calib_rows, cfg.coverage)
    shard = shard_rows(len(y), parallel.rank, parallel.world_size, int(p["seed"])) if parallel is not None else None
    return Fitted(model, history, time.perf_counter() - start, shard)
