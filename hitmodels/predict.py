"""The registered model: preprocessing + HitMusicNet weights behind MLflow's pyfunc interface.

A registered version takes raw feature rows (a DataFrame with the training columns, any order, extra
columns ignored) and returns ``popularity`` (0-100) and ``class`` (low/medium/high by eq. 4 thresholds of the
predicted popularity). Missing values (NaN) are imputed with the training medians, then min-max scaled with
the training minima and maxima, exactly as in training; missing *columns* are an error naming them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from .config import CLASS_NAMES, CLASS_THRESHOLDS
from .models import HitMusicNet


@dataclass
class Preprocessor:
    """Median imputation then min-max scaling to [0, 1], fitted on training rows only."""

    columns: list[str]
    medians: list[float]
    mins: list[float]
    maxs: list[float]

    @classmethod
    def fit(cls, df: pd.DataFrame, columns: list[str]) -> "Preprocessor":
        X = df[columns].astype(float)
        med = X.median().fillna(0.0)
        X = X.fillna(med)
        return cls(list(columns), med.tolist(), X.min().tolist(), X.max().tolist())

    def check_columns(self, df: pd.DataFrame) -> None:
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise ValueError(f"missing feature column(s): {shown}")

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """``(n_rows, n_columns)`` float32 in the training column order."""
        self.check_columns(df)
        X = df[self.columns].to_numpy(dtype=np.float64, na_value=np.nan)
        X = np.where(np.isfinite(X), X, np.asarray(self.medians))
        lo, hi = np.asarray(self.mins), np.asarray(self.maxs)
        return ((X - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Preprocessor":
        return cls(**json.loads(text))


def popularity_class(popularity: np.ndarray, thresholds: tuple[float, float] = CLASS_THRESHOLDS) -> np.ndarray:
    """Class names for popularity 0-100: below ``thresholds[0]`` low, below ``thresholds[1]`` medium, else high."""
    return np.asarray(CLASS_NAMES, dtype=object)[np.digitize(popularity, thresholds)]


def save_bundle(directory: Path, net: HitMusicNet, pre: Preprocessor, arch: dict) -> dict[str, str]:
    """Write weights, architecture and preprocessing; returns the pyfunc ``artifacts`` mapping."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), directory / "weights.pt")
    (directory / "arch.json").write_text(json.dumps(arch))
    (directory / "preprocess.json").write_text(pre.to_json())
    return {k: str(directory / f) for k, f in
            [("weights", "weights.pt"), ("arch", "arch.json"), ("preprocess", "preprocess.json")]}


class HitMusicPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper; the same object answers batch scoring and Serve, so both give identical numbers."""

    def load_context(self, context):
        arch = json.loads(Path(context.artifacts["arch"]).read_text())
        self.pre = Preprocessor.from_json(Path(context.artifacts["preprocess"]).read_text())
        self.net = HitMusicNet(arch["d"], arch["delta"], arch["dropout"])
        self.net.load_state_dict(torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True))
        self.net.eval()

    @property
    def columns(self) -> list[str]:
        return self.pre.columns

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        X = torch.from_numpy(self.pre.transform(model_input))
        with torch.inference_mode():
            pop = self.net(X)[:, 0].numpy().astype(np.float64) * 100.0
        return pd.DataFrame({"popularity": pop, "class": popularity_class(pop)})
