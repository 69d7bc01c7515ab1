"""The training loop of every model fitted on sampled song pairs (the Siamese families).

Each epoch draws its pairs afresh from the fit rows (:func:`hitmodels.ranking.sample_pairs`; ``sampling="none"``
feeds single tracks, two per slot, with the ranking weight 0: a rating-only model), feeds both songs of each
pair through the one network (shared weights) and steps Adam on ``(1 - w) MSE + w hinge``. After each epoch
the network scores the validation rows; training stops ``patience`` epochs after the best validation objective
over *all* validation pairs (:func:`hitmodels.ranking.objective`, no sampling noise) and keeps that epoch's
weights. The family supplies the network, how a batch of row positions becomes its inputs, and how it scores
the validation rows.
"""

from __future__ import annotations

import copy
import sys
from typing import Callable

import numpy as np
import torch
from torch import nn

from .devices import Parallel, shard_rows
from .ranking import objective, sample_pairs, siamese_loss


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(stats.spearmanr(a, b).statistic)


def fusion_weight(a: np.ndarray, b: np.ndarray, truth: np.ndarray, w: float, margin: float) -> float:
    """The weight of ``a`` in ``alpha a + (1 - alpha) b`` (0, 0.1, ..., 1) of least validation objective."""
    grid = np.round(np.linspace(0, 1, 11), 2)
    losses = [objective(al * a + (1 - al) * b, truth, w, margin) for al in grid]
    return float(grid[int(np.argmin(losses))])


def epoch_pairs(sampling: str, y: np.ndarray, artists: np.ndarray, rng: np.random.Generator,
                mean: float | None = None) -> np.ndarray:
    """One epoch's ``(n_pairs, 2)`` positions; ``"none"``: a permutation of single tracks, two per slot.
    ``mean``: the training mean A/B sampling splits at (default: that of ``y``; a data-parallel worker passes
    that of all the fit rows, not of its shard)."""
    if sampling == "none":
        order = rng.permutation(len(y))
        return order[: 2 * (len(order) // 2)].reshape(-1, 2)
    pairs = sample_pairs(sampling, y, artists, rng, mean)
    if len(pairs) == 0:
        raise ValueError(f"{sampling} sampling finds no pairs in the {len(y)} fit rows (artist sampling needs "
                         "artists with two or more tracks)")
    return pairs


def train_pairs(net: nn.Module, inputs: Callable[[np.ndarray], tuple], val_scores: Callable[[nn.Module], np.ndarray],
                y: np.ndarray, artists: np.ndarray, val_y: np.ndarray, p: dict, sampling: str, dev,
                log: bool = False, on_epoch: Callable | None = None, stage: str = "pairs",
                parallel: Parallel | None = None) -> tuple[nn.Module, list[dict]]:
    """Fit ``net`` (already on ``dev``) on the fit rows' targets ``y`` (popularity / 100); ``inputs(positions)``
    gives the network's input tensors for those rows, ``val_scores(net)`` its scores of the validation rows.
    Settings from ``p``: lr, weight_decay, w, margin, batch_pairs, epochs, patience, seed. Returns the network
    at its best epoch (on the CPU, in eval mode) and the history per epoch.

    Data-parallel (``parallel`` of several workers, e.g. Ray Train's): each worker draws its pairs from its own
    shard of the fit rows (:func:`~hitmodels.devices.shard_rows`; A/B still splits at the mean of all of
    them), every worker takes the same number of steps per epoch (the fewest any shard's pairs give, since
    DDP's all-reduce needs every worker in every step), gradients are averaged by DDP, and the early-stopping
    decision uses the loss and validation objective averaged over the workers, so all stop together with the
    same weights."""
    par = parallel or Parallel()
    torch.manual_seed(int(p["seed"]))
    rng = np.random.default_rng(int(p["seed"]))
    shard = shard_rows(len(y), par.rank, par.world_size, int(p["seed"]))
    mean = float(np.mean(y))
    model = par.wrap(net) if par.world_size > 1 else net
    core = getattr(model, "module", model)  # DDP's wrapped network: what is scored, saved and returned
    opt = torch.optim.Adam(model.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
    w, margin = (0.0, 0.0) if sampling == "none" else (float(p["w"]), float(p["margin"]))
    yt = torch.tensor(y, dtype=torch.float32)
    batch = int(p["batch_pairs"])
    best, best_state, since, history = np.inf, copy.deepcopy(core.state_dict()), 0, []
    for epoch in range(int(p["epochs"])):
        model.train()
        pairs = shard[epoch_pairs(sampling, y[shard], artists[shard], rng, mean)]
        n_steps = -(-len(pairs) // batch)
        if par.world_size > 1:
            n_steps = int(min(par.gather(float(n_steps))))
        total, steps = 0.0, 0
        for a in range(0, n_steps * batch, batch):
            idx = pairs[a:a + batch].reshape(-1)
            s = model(*(t.to(dev) if t is not None else None for t in inputs(idx)))
            yy = yt[torch.from_numpy(idx)].to(dev)
            loss = siamese_loss(s[0::2], s[1::2], yy[0::2], yy[1::2], w, margin)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        par.average_buffers(core)
        entry = {"epoch": epoch, "loss": par.mean([total / steps])[0], "pairs": int(len(pairs))}
        if len(val_y):
            core.eval()
            with torch.inference_mode():
                sv = val_scores(core)
            entry.update(val_objective=par.mean([objective(sv, val_y, w, margin)])[0],
                         val_mse=float(np.mean((sv - val_y) ** 2)), val_spearman=spearman(sv, val_y))
        val = entry.get("val_objective", entry["loss"])
        history.append(entry)
        if on_epoch is not None:
            on_epoch(stage, epoch, entry)
        if log:
            print(f"{stage}: epoch {epoch} loss {entry['loss']:.5f} val {val:.5f}", file=sys.stderr)
        if val < best - 1e-7:
            best, best_state, since = val, copy.deepcopy(core.state_dict()), 0
        else:
            since += 1
            if since >= int(p["patience"]):
                break
    core.load_state_dict(best_state)
    core.cpu().eval()
    return core, history
