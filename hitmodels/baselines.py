"""Classical baselines of the paper's Tables 5 and 6, plus gradient boosting as the strongest classical peer.

Every baseline is fitted on the same rows and the same scaled features (the training fold's imputation and
min-max scaling) as HitMusicNet, and answers with an output frame in the shape :func:`hitmodels.train.score`
reads:

- ``mean``: the floor every model must clear: the training rows' mean popularity for every track, and their
  most frequent class;
- ``mlr``: multiple linear regression on popularity / 100 (Table 5, "MLR");
- ``lasso``: linear regression with an L1 penalty chosen by 3-fold CV on the training rows ("MLR + Lasso"),
  and ``hgb``: HistGradientBoosting regressor (popularity) and classifier (the 3 classes, balanced weights):
  both are registrable model families (:mod:`hitmodels.families`), which ``hitmusic evaluate`` fits through
  the family interface, exactly as they are registered; the names here only label them;
- ``lda``: linear discriminant analysis, 2 classes (Table 6, "LDA 2-class");
- ``mlp``: scikit-learn's MLP classifier (one hidden layer of 100 ReLU units, Adam, early stopping), 2
  classes (Table 6, "MLP 2-class");

The paper does not define its two classes; ours are popularity at or above the training median vs. below,
which keeps them balanced. Regression outputs are clipped to the 0-100 range popularity lives in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.linear_model import LinearRegression
from sklearn.neural_network import MLPClassifier

from .config import CLASS_NAMES

FAMILY_BASELINES = ("lasso", "hgb")  # labelled here, fitted by their families
LABELS = {"mean": "Predict the mean", "mlr": "MLR", "lasso": "MLR + Lasso", "lda": "LDA (2 classes)", "mlp": "MLP (2 classes)",
          "hgb": "HistGradientBoosting"}


@dataclass
class Baseline:
    """A fitted baseline; ``predict`` returns the columns it can: ``popularity``, ``class``, ``above_median``."""

    name: str
    seed: int = 0
    models: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return LABELS[self.name]

    def fit(self, X: np.ndarray, popularity: np.ndarray, thresholds: tuple[float, float],
            median: float) -> "Baseline":
        pop = np.asarray(popularity, float)
        if self.name == "mean":
            self.models["popularity"] = DummyRegressor(strategy="mean").fit(X, pop / 100.0)
            self.models["class"] = DummyClassifier(strategy="most_frequent").fit(X, np.digitize(pop, thresholds))
        elif self.name == "mlr":
            self.models["popularity"] = LinearRegression().fit(X, pop / 100.0)
        elif self.name == "lda":
            self.models["above_median"] = LinearDiscriminantAnalysis().fit(X, pop >= median)
        elif self.name == "mlp":
            self.models["above_median"] = MLPClassifier(hidden_layer_sizes=(100,), early_stopping=True,
                                                        max_iter=200, random_state=self.seed).fit(X, pop >= median)
        return self

    def predict(self, X: np.ndarray) -> pd.DataFrame:
        out = {}
        if "popularity" in self.models:
            out["popularity"] = np.clip(self.models["popularity"].predict(X) * 100.0, 0.0, 100.0)
        if "class" in self.models:
            out["class"] = np.asarray(CLASS_NAMES, dtype=object)[self.models["class"].predict(X)]
        if "above_median" in self.models:
            out["above_median"] = self.models["above_median"].predict(X).astype(bool)
        return pd.DataFrame(out)


def make(name: str, seed: int = 0) -> Baseline:
    """An unfitted evaluation-only baseline by name (``mean``, ``mlr``, ``lda``, ``mlp``); ``lasso`` and ``hgb``
    are families (``hitmodels.families.get(name)``)."""
    if name not in LABELS:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(LABELS)}")
    if name in FAMILY_BASELINES:
        raise ValueError(f"{name!r} is a model family: fit it through hitmodels.families.get({name!r})")
    return Baseline(name, seed)
