"""A fitted HitMusicNet as a registered model: weights as a torch state dict (read with ``weights_only``), the
architecture and calibration as JSON, the preprocessing as JSON. No pickles."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hitmodels import torch_bundle
from hitmodels.kernels import Program
from hitmodels.predict import MetaRowModel, Preprocessor

from .network import ARCH_VERSION, HitMusicNet

FILES = torch_bundle.FILES


@dataclass
class ModelMeta:
    """Everything besides weights and preprocessing that a registered version needs to answer."""

    d: int
    delta: float
    dropout: float
    alphas: list[float]
    classifier: bool
    class_scheme: str
    thresholds: list[float]
    conformal: dict | None = None
    config: str = "custom"
    arch_version: int = ARCH_VERSION
    # the small-table variant's switches (absent, i.e. off, in bundles of the paper's configurations)
    standardise: bool = False
    skip_linear: bool = False
    min_width: int = 1

    def build(self) -> HitMusicNet:
        return HitMusicNet(self.d, self.delta, self.dropout, tuple(self.alphas), self.classifier, self.standardise,
                           self.skip_linear, self.min_width)


def save_bundle(directory: Path, net: HitMusicNet, pre: Preprocessor, meta: ModelMeta) -> list[str]:
    """Write weights, architecture/calibration and preprocessing into ``directory``; returns the file names."""
    return torch_bundle.save(directory, net, pre, meta)


def load_bundle(directory: Path) -> tuple[HitMusicNet, Preprocessor, ModelMeta]:
    """Read what :func:`save_bundle` wrote."""
    return torch_bundle.load(directory, ModelMeta, ARCH_VERSION)


class HitMusicPyfunc(MetaRowModel):
    """HitMusicNet behind :class:`~hitmodels.predict.RowModel`: one encoder pass feeds both heads (the
    encoder is most of the model's arithmetic). ``precision="bf16"`` runs the layers in bfloat16 (about 3x
    faster on CPUs with AVX512-BF16 or AMX; popularity moves by ~0.3 points on average and up to ~2),
    ``"fp32"`` (default) is the precision it was trained in."""

    family = "hitmusicnet"
    precisions = ("fp32", "bf16")

    def __init__(self, net: HitMusicNet, pre: Preprocessor, meta: ModelMeta):
        self.net = net
        super().__init__(pre, meta)

    @property
    def has_classes(self) -> bool:
        return self.net.cls is not None

    def scoring(self, precision: str):
        low = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(low)
        return stack

    def scores(self, x: np.ndarray, precision: str) -> tuple[np.ndarray, np.ndarray | None]:
        x = torch.from_numpy(x)
        code = self.net.code(x)
        pop = self.net.head(code, x)[:, 0].float().numpy()
        proba = torch.softmax(self.net.cls(code).float(), 1).numpy() if self.net.cls is not None else None
        return pop, proba

    def score_program(self) -> Program:
        """The encoder (inputs standardised first in the small-table variant), the code's min-max scaling,
        MusicPopNet with its sigmoid (or, in the variant, linear output plus the linear path from the inputs)
        and the 3-class head's softmax: what :meth:`scores` computes, as NumPy steps in float32."""
        net, arrays = self.net, {}
        steps: list[tuple[str, ...]] = []
        x = "x"
        if net.standardised:
            arrays.update({"in_mean": net.in_mean.numpy().copy(), "in_std": net.in_std.numpy().copy()})
            steps.append(("standardise", "xi", "x", "in_mean", "in_std"))
            x = "xi"
        enc, encoded = torch_bundle.dense_steps(net.ae.encoder, x, "enc", arrays)
        arrays.update({"code_lo": net.code_lo.numpy().copy(), "code_span": net.code_span.numpy().copy()})
        steps += enc + [("standardise", "code", encoded, "code_lo", "code_span")]
        pop, out = torch_bundle.dense_steps(net.pop.net, "code", "pop", arrays)
        steps += pop
        if net.pop.n_out == 1 and not net.pop.linear_out:
            steps.append(("sigmoid", "popularity", out))
            out = "popularity"
        if net.skip is not None:
            skip, skipped = torch_bundle.dense_steps(net.skip, x, "skip", arrays)
            steps += skip + [("add", "popularity+skip", out, skipped)]
            out = "popularity+skip"
        proba = None
        if net.cls is not None:
            cls, logits = torch_bundle.dense_steps(net.cls.net, "code", "cls", arrays)
            steps += cls + [("softmax", "proba", logits)]
            proba = "proba"
        return Program(steps, arrays, out, proba)

    def code(self, rows) -> np.ndarray:
        """The scaled autoencoder code ``(n_rows, c)`` MusicPopNet sees, of feature rows (a DataFrame)."""
        with torch.inference_mode():
            return self.net.code(torch.from_numpy(self.pre.transform(rows))).numpy()
