"""Where, on how many threads and on how many data-parallel workers torch fits: shared by every torch family."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn


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


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when this process can use a GPU, else the CPU; ``"cpu"``/``"cuda"`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but torch sees no GPU here (is this the CPU build of torch?)")
    return torch.device(name)


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

    def average_buffers(self, module: nn.Module) -> None:
        """Average ``module``'s floating-point buffers over the workers (batch norm's running statistics:
        DDP hands rank 0's to every worker before each forward pass, but each worker's last pass updates its
        own, so without this the workers would end with different models)."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        for buf in module.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf /= self.world_size

    def gather(self, value: float) -> list[float]:
        """``value`` of every worker, in rank order."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        out = [torch.zeros(1, dtype=torch.float64, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(out, torch.tensor([value], dtype=torch.float64, device=self.device))
        return [float(t.item()) for t in out]


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
