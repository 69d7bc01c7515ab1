"""A fitted Siamese model as a registered model: the weights of its network(s) as a torch state dict (read with
``weights_only``), everything else as JSON. No pickles.

Input rows carry ``mel``: the segment the model was trained on (``meta.segment``), float16 ``(n_mels,
n_frames)`` C-order bytes as the mel store keeps them (:func:`hitmodels.melstore.encode`), plus the tag columns
when the tag branch is on (missing values imputed with the training medians). Outputs: the common ones of
:class:`~hitmodels.predict.RowModel` (``popularity`` 0-100 from the rating head, interval, classes) and
``percentile``: the hit score's percentile among the training tracks' scores (0-100).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from hitmodels.config import MelConfig
from hitmodels.melstore import MEL_COLUMN, decode
from hitmodels import torch_bundle
from hitmodels.predict import MetaRowModel, Preprocessor
from hitmodels.ranking import percentile

from .network import ARCH_VERSION, SiameseNet

FILES = torch_bundle.FILES


@dataclass
class SiameseMeta:
    """The architecture, the objective it was trained with and what answering needs besides weights."""

    n_mels: int
    channels: int
    fc: int
    dropout: float
    n_tags: int
    mu: float
    segment: str
    sampling: str
    w: float
    margin: float
    fusion: list[float]  # weight of each network's score (one network: [1.0])
    thresholds: list[float]
    mel_config: dict = field(default_factory=lambda: asdict(MelConfig()))
    train_scores: list[float] = field(default_factory=list)  # sorted quantiles of the training tracks' scores
    conformal: dict | None = None
    config: str = "custom"
    arch_version: int = ARCH_VERSION

    def build(self) -> nn.ModuleList:
        return nn.ModuleList(SiameseNet(self.n_mels, self.channels, self.fc, self.dropout, self.n_tags, self.mu)
                             for _ in self.fusion)


def mel_array(rows: pd.DataFrame, cfg: MelConfig) -> np.ndarray:
    """The ``mel`` column of ``rows`` as ``(n, n_mels, n_frames)`` float16; a missing column or a segment of
    the wrong size is an error naming it."""
    if MEL_COLUMN not in rows:
        raise ValueError(f"missing input column {MEL_COLUMN!r}: this model scores log-mel segments "
                         "(hitmusic mels), not feature rows")
    out = np.empty((len(rows), cfg.n_mels, cfg.n_frames), dtype=np.float16)
    for i, data in enumerate(rows[MEL_COLUMN]):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"row {i}: {MEL_COLUMN!r} must be the segment's float16 bytes, got {type(data).__name__}")
        try:
            out[i] = decode(bytes(data), cfg)
        except ValueError as exc:
            raise ValueError(f"row {i}: {MEL_COLUMN!r}: {exc}") from None
    return out


class SiameseModel(MetaRowModel):
    family = "siamese"

    def __init__(self, nets: nn.ModuleList, pre: Preprocessor, meta: SiameseMeta):
        self.nets = nets
        super().__init__(pre, meta)

    @property
    def mel_config(self) -> MelConfig:
        return MelConfig.from_dict(self.meta.mel_config)

    @property
    def segment(self) -> str:
        """The segment (``hl30`` or ``mid30``) its inputs are."""
        return self.meta.segment

    @property
    def columns(self) -> list[str]:
        return [MEL_COLUMN, *self.pre.columns]

    @property
    def has_classes(self) -> bool:
        return False

    @property
    def outputs(self) -> list[str]:
        return [*super().outputs, "percentile"]

    def hit_scores(self, mels: np.ndarray, tags: np.ndarray | None, chunk: int = 64) -> np.ndarray:
        """Hit scores ``(n,)`` in (0, 1): the fusion-weighted networks' scores of segments ``(n, n_mels,
        n_frames)`` (dB) and scaled tags ``(n, n_tags)``."""
        out = np.zeros(len(mels))
        with torch.inference_mode():
            for net in self.nets:
                net.eval()
            for a in range(0, len(mels), chunk):
                x = torch.from_numpy(np.asarray(mels[a:a + chunk], np.float32))
                t = torch.from_numpy(np.asarray(tags[a:a + chunk], np.float32)) if tags is not None else None
                out[a:a + chunk] = sum(wt * net(x, t).double().numpy() for wt, net in zip(self.meta.fusion, self.nets))
        return out

    def percentile(self, scores: np.ndarray) -> np.ndarray:
        """Percentile (0-100) of each score among the training tracks' scores."""
        return percentile(scores, self.meta.train_scores)

    def tag_matrix(self, rows: pd.DataFrame) -> np.ndarray | None:
        return self.pre.transform(rows) if self.pre.columns else None

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        scores = self.hit_scores(mel_array(model_input, self.mel_config), self.tag_matrix(model_input))
        out = self.answer(100.0 * scores, None)
        out["percentile"] = self.percentile(scores)
        return pd.DataFrame(out)

    def predict_array(self, X, scaled=False, chunk_rows=2048, precision="fp32"):
        raise ValueError("a siamese model scores log-mel segments, not feature rows: send audio "
                         "(/predict/audio, hitmusic score of an audio manifest) or rows with a 'mel' column")


def save_bundle(directory: Path, model: SiameseModel) -> list[str]:
    return torch_bundle.save(directory, model.nets, model.pre, model.meta)


def load_bundle(directory: Path) -> SiameseModel:
    nets, pre, meta = torch_bundle.load(directory, SiameseMeta, ARCH_VERSION, "siamese model")
    return SiameseModel(nets, pre, meta)
