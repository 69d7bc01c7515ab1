"""Fitting the Siamese family: the rating-only CNN or the multi-objective Siamese on pairs of training tracks.

One epoch draws its pairs afresh from the fit rows (:mod:`hitmodels.ranking`), feeds both songs of each
pair through the one network (shared weights) and steps Adam on ``(1 - w) MSE + w hinge``; ``sampling="none"``
is the rating-only CNN (MSE on single tracks). After each epoch the model is scored on the validation rows
with the same objective over *all* their pairs (:func:`hitmodels.ranking.objective`, no sampling noise), and
training stops ``patience`` epochs after its best, keeping the best weights. ``sampling="ab+artist"`` fits an
A/B and an artist model and fuses their scores with the weight (0, 0.1, ..., 1) best on that same
validation objective.
"""

from __future__ import annotations

import copy
import sys
import time
from typing import Callable

import numpy as np
import pandas as pd
import torch

from hitmodels.config import MelConfig, TrainConfig
from hitmodels.devices import resolve_device, torch_threads
from hitmodels.families.base import Fitted
from hitmodels.predict import Preprocessor, class_thresholds
from hitmodels.ranking import objective, sample_pairs, siamese_loss

from .model import SiameseMeta, SiameseModel, mel_array
from .network import SiameseNet

SAMPLINGS = ("none", "naive", "ab", "artist", "ab+artist")


def tag_columns(columns: list[str]) -> list[str]:
    """The tag branch's inputs among a table's columns: the tagger's ``tag_*`` activations when the table has
    them, else the catalogue's descriptors (the artist's genre families, ``genre_*``)."""
    tags = [c for c in columns if c.startswith("tag_")]
    return tags or [c for c in columns if c.startswith("genre_")]


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


def artist_labels(rows: pd.DataFrame) -> np.ndarray:
    """Each row's artist (a row without one is an artist of its own, so it joins no artist pair)."""
    a = rows["artist_id"] if "artist_id" in rows else pd.Series([None] * len(rows), index=rows.index)
    return a.astype(object).where(a.notna(), "track:" + rows["track_id"].astype(str)).to_numpy()


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
                  dev, log: bool = False, on_epoch: Callable | None = None, stage: str = "siamese") -> tuple[SiameseNet, list[dict]]:
    """One network fitted on segments ``mels`` ``(n, n_mels, n_frames)`` float16 with targets ``y`` (popularity /
    100), early-stopped on the validation objective; returns it (best epoch's weights) and the history."""
    torch.manual_seed(int(p["seed"]))
    rng = np.random.default_rng(int(p["seed"]))
    net = SiameseNet(mels.shape[1], int(p["channels"]), int(p["fc"]), float(p["dropout"]),
                     0 if tags is None else tags.shape[1], float(p["mu"]))
    mean, std = band_stats(mels)
    net.audio.mean.copy_(torch.from_numpy(mean))
    net.audio.std.copy_(torch.from_numpy(std))
    net.to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
    w, margin = (0.0, 0.0) if sampling == "none" else (float(p["w"]), float(p["margin"]))
    yt = torch.tensor(y, dtype=torch.float32)
    tags_t = torch.from_numpy(tags) if tags is not None else None
    batch = int(p["batch_pairs"])
    best, best_state, since, history = np.inf, copy.deepcopy(net.state_dict()), 0, []
    for epoch in range(int(p["epochs"])):
        net.train()
        if sampling == "none":
            order = rng.permutation(len(y))
            pairs = order[: 2 * (len(order) // 2)].reshape(-1, 2)  # singles, two per "pair" slot
        else:
            pairs = sample_pairs(sampling, y, artists, rng)
        if len(pairs) == 0:
            raise ValueError(f"{sampling} sampling finds no pairs in the {len(y)} fit rows (artist sampling needs "
                             "artists with two or more tracks)")
        total, steps = 0.0, 0
        for a in range(0, len(pairs), batch):
            idx = torch.from_numpy(pairs[a:a + batch].reshape(-1))
            x = torch.from_numpy(mels[idx.numpy()].astype(np.float32)).to(dev)
            t = tags_t[idx].to(dev) if tags_t is not None else None
            s = net(x, t)
            yy = yt[idx].to(dev)
            loss = siamese_loss(s[0::2], s[1::2], yy[0::2], yy[1::2], w, margin)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        entry = {"epoch": epoch, "loss": total / steps, "pairs": int(len(pairs))}
        if len(val_y):
            sv = _scores(net, val_mels, val_tags, dev)
            entry.update(val_objective=objective(sv, val_y, w, margin), val_mse=float(np.mean((sv - val_y) ** 2)),
                         val_spearman=_spearman(sv, val_y))
        val = entry.get("val_objective", entry["loss"])
        history.append(entry)
        if on_epoch is not None:
            on_epoch(stage, epoch, history[-1])
        if log:
            print(f"{stage}: epoch {epoch} loss {total / steps:.5f} val {val:.5f}", file=sys.stderr)
        if val < best - 1e-7:
            best, best_state, since = val, copy.deepcopy(net.state_dict()), 0
        else:
            since += 1
            if since >= int(p["patience"]):
                break
    net.load_state_dict(best_state)
    net.cpu().eval()
    return net, history


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(stats.spearmanr(a, b).statistic)


def fusion_weight(a: np.ndarray, b: np.ndarray, truth: np.ndarray, w: float, margin: float) -> float:
    """The weight of ``a`` in ``alpha a + (1 - alpha) b`` (0, 0.1, ..., 1) of least validation objective."""
    grid = np.round(np.linspace(0, 1, 11), 2)
    losses = [objective(al * a + (1 - al) * b, truth, w, margin) for al in grid]
    return float(grid[int(np.argmin(losses))])


def fit_siamese(fit_rows: pd.DataFrame, val_rows: pd.DataFrame, calib_rows: pd.DataFrame, columns: list[str],
                cfg: TrainConfig, defaults: dict, log: bool = False, on_epoch=None) -> Fitted:
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
    artists = artist_labels(fit_rows)
    dev = resolve_device(cfg.device)
    kinds = ["ab", "artist"] if sampling == "ab+artist" else [sampling]
    nets, history = [], {}
    with torch_threads(cfg.threads):
        for kind in kinds:
            net, hist = train_network(mels, tags, y, artists, val_mels, val_tags, val_y, p, kind, dev, log, on_epoch,
                                      stage=f"siamese-{kind}")
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
    meta.train_scores = np.quantile(train_scores, np.linspace(0, 1, min(1001, len(train_scores)))).tolist()
    model.calibrate(calib_rows, cfg.coverage)
    return Fitted(model, history, time.perf_counter() - start)
