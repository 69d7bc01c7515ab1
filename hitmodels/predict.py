"""What every registered model on feature rows answers, whatever its family.

A registered version takes raw feature rows (a DataFrame with the training columns, any order, extra
columns ignored) and returns ``popularity`` (0-100), its conformal interval, ``class`` (low/medium/high) and
the class probabilities (see :class:`RowModel`). Missing values (NaN) are imputed with the training
medians, then min-max scaled with the training minima and maxima, exactly as in training; missing *columns*
are an error naming them. A family supplies only :meth:`RowModel.scores`, the part that differs.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass

import mlflow.pyfunc
import numpy as np
import pandas as pd

from .config import CLASS_NAMES, CLASS_THRESHOLDS, FeatureConfig
from .kernels import Program, RowKernel, answer, class_probabilities, interval, popularity_class, scale_rows
# (class_probabilities and popularity_class live in .kernels, shared with the batch path; imported from here too)

# Arithmetic at scoring time (RowModel.predict_array); each family says which it supports.
PRECISIONS = ("fp32", "bf16")


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
        return self.transform_array(df[self.columns].to_numpy(dtype=np.float32, na_value=np.nan))

    def transform_array(self, X: np.ndarray) -> np.ndarray:
        """The same for a ``(n_rows, n_columns)`` array already in the training column order (NaN or
        infinity imputed); float32 throughout, since a catalogue of millions of rows is scored this way."""
        return scale_rows(X, *self._arrays())

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if getattr(self, "_cache", None) is None:
            lo, hi = np.asarray(self.mins, np.float64), np.asarray(self.maxs, np.float64)
            self._cache = (np.asarray(self.medians, np.float32), lo.astype(np.float32),
                           (1.0 / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32))
        return self._cache

    def to_json(self) -> str:
        return json.dumps({k: getattr(self, k) for k in ("columns", "medians", "mins", "maxs")})

    @classmethod
    def from_json(cls, text: str) -> "Preprocessor":
        return cls(**json.loads(text))


def class_labels(popularity: np.ndarray, thresholds: tuple[float, float]) -> np.ndarray:
    """Class indices 0/1/2 (low/medium/high) of popularity values."""
    return np.digitize(np.asarray(popularity, float), thresholds)


def check_classes(classes: list[int], n_outputs: int) -> None:
    """Refuse a classifier whose saved classes do not match its outputs (1 output: two classes)."""
    if len(classes) != (2 if n_outputs == 1 else n_outputs) or len(set(classes)) != len(classes) \
            or not set(classes) <= set(range(len(CLASS_NAMES))):
        raise ValueError(f"classifier with {n_outputs} output(s) cannot be over classes {classes}")


def class_thresholds(scheme: str, train_popularity: np.ndarray | None = None) -> tuple[float, float]:
    """Class boundaries: ``"fixed"`` is eq. (4), (25, 65); ``"quartiles"`` is (Q1, Q3) of the training
    popularity, which gives classes of 25 / 50 / 25 % of the training rows whatever the dataset's scale."""
    if scheme == "fixed":
        return CLASS_THRESHOLDS
    if scheme == "quartiles":
        if train_popularity is None or len(train_popularity) == 0:
            raise ValueError("quartile classes need the training popularity")
        q1, q3 = np.percentile(np.asarray(train_popularity, float), [25, 75])
        return float(q1), float(q3)
    raise ValueError(f"unknown class scheme {scheme!r}; choose 'fixed' or 'quartiles'")


@dataclass
class SplitConformal:
    """Split conformal interval ``popularity ± halfwidth`` (Vovk et al.; Lei et al. 2018, JASA).

    ``halfwidth`` is the ceil((n + 1)·coverage)-th smallest absolute residual on n calibration rows the model
    never fitted, which guarantees at least ``coverage`` marginal coverage on exchangeable new rows. With too
    few calibration rows for that rank the interval is the whole 0-100 range.
    """

    coverage: float
    halfwidth: float
    n_calib: int

    @classmethod
    def fit(cls, y_true: np.ndarray, y_pred: np.ndarray, coverage: float) -> "SplitConformal":
        if not 0 < coverage < 1:
            raise ValueError(f"coverage must be between 0 and 1, got {coverage}")
        scores = np.sort(np.abs(np.asarray(y_true, float) - np.asarray(y_pred, float)))
        n = len(scores)
        rank = int(np.ceil((n + 1) * coverage - 1e-9))  # 100 * 0.55 is 55.00000000000001 in floats
        halfwidth = float(scores[rank - 1]) if 0 < rank <= n else 100.0
        return cls(float(coverage), halfwidth, n)

    def interval(self, popularity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds, clipped to the 0-100 range popularity lives in."""
        return interval(popularity, self.halfwidth)


class RowModel(mlflow.pyfunc.PythonModel):
    """A fitted model on feature rows: preprocessing, the family's scores, the conformal interval and classes.

    Output columns (:attr:`outputs`, in this order): ``popularity`` (0-100), ``popularity_lower`` and
    ``popularity_upper`` when calibrated, ``class`` (low/medium/high), ``popularity_class`` (the class the
    predicted popularity falls in) and, when the family has a 3-class head, ``p_low``, ``p_medium``,
    ``p_high``; ``class`` is then that head's most probable class (which can differ from
    ``popularity_class``: two models answer), otherwise it equals ``popularity_class``. The same object answers batch scoring and Serve, so both give
    identical numbers.
    """

    family = ""  # the family's name, set by each subclass
    precisions: tuple[str, ...] = ("fp32",)  # arithmetic :meth:`predict_array` supports

    def __init__(self, pre: Preprocessor, thresholds=CLASS_THRESHOLDS, conformal: dict | None = None,
                 config: str = "custom"):
        self.pre, self.thresholds, self.conformal, self.config = pre, list(thresholds), conformal, config
        # the extraction settings of its training features (set from the bundle's manifest when loaded)
        self.feature_config = FeatureConfig()

    @property
    def columns(self) -> list[str]:
        return self.pre.columns

    @property
    def has_classes(self) -> bool:
        """Whether :meth:`scores` gives class probabilities."""
        raise NotImplementedError

    @property
    def outputs(self) -> list[str]:
        """The output columns, in the order :meth:`predict_array` gives them."""
        return (["popularity"] + (["popularity_lower", "popularity_upper"] if self.conformal else [])
                + ["class", "popularity_class"] + ([f"p_{c}" for c in CLASS_NAMES] if self.has_classes else []))

    def scores(self, x: np.ndarray, precision: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The family's part: scaled features ``(n, n_columns)`` float32 -> popularity / 100 ``(n,)`` and
        class probabilities ``(n, 3)`` (``None`` without a class head)."""
        raise NotImplementedError

    def scoring(self, precision: str):
        """A context entered once around all of :meth:`predict_array`'s chunks (e.g. torch's inference mode)."""
        return contextlib.nullcontext()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame(self.predict_array(self.pre.transform(model_input), scaled=True))

    def predict_array(self, X: np.ndarray, scaled: bool = False, chunk_rows: int = 2048,
                      precision: str = "fp32") -> dict[str, np.ndarray]:
        """The output columns for ``(n_rows, n_columns)`` features in :attr:`columns` order (raw values, or
        already scaled with ``scaled=True``), as arrays: the hot path of Serve and batch scoring, which
        skips building a DataFrame of hundreds of columns per request.

        Rows go through in chunks of ``chunk_rows`` so each chunk's intermediate values stay in the CPU
        cache and memory stays flat whatever the input size. ``precision`` must be one of the family's
        :attr:`precisions` (HitMusicNet also runs in ``"bf16"``).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose {' or '.join(PRECISIONS)}")
        if precision not in self.precisions:
            raise ValueError(f"the {self.family} family scores in {', '.join(self.precisions)} only, not {precision}")
        n = len(X)
        pop = np.empty(n, dtype=np.float64)
        proba = np.empty((n, len(CLASS_NAMES)), dtype=np.float64) if self.has_classes else None
        with self.scoring(precision):
            for a in range(0, n, chunk_rows):
                x = X[a:a + chunk_rows]
                # column-major input (as the batch job builds it) stays so: BLAS reads it transposed
                x = np.asarray(x if scaled else self.pre.transform_array(x), dtype=np.float32)
                p, q = self.scores(x, precision)
                pop[a:a + chunk_rows] = p
                if proba is not None:
                    proba[a:a + chunk_rows] = q
        pop *= 100.0
        return self.answer(pop, proba)

    def answer(self, pop: np.ndarray, proba: np.ndarray | None) -> dict[str, np.ndarray]:
        """The output columns from popularity 0-100 ``(n,)`` float64 (clipped in place) and the class
        probabilities ``(n, 3)`` (``None`` without a class head)."""
        return answer(pop, proba, self.thresholds, self.conformal["halfwidth"] if self.conformal else None)

    def score_program(self) -> Program | None:
        """The family's :meth:`scores` as a :class:`hitmodels.kernels.Program` (fp32), or None where the family
        has none (the batch job then scores with the model itself)."""
        return None

    def kernel(self) -> RowKernel | None:
        """This model as arrays with a NumPy forward pass (:class:`hitmodels.kernels.RowKernel`), which a
        batch job's workers score with without importing torch or mlflow; None where the family exports no
        :meth:`score_program`."""
        program = self.score_program()
        if program is None:
            return None
        medians, lo, scale = self.pre._arrays()
        return RowKernel(list(self.columns), medians, lo, scale, program, tuple(self.thresholds),
                         self.conformal["halfwidth"] if self.conformal else None, list(self.outputs),
                         family=self.family)

    def calibrate(self, rows: pd.DataFrame, coverage: float) -> None:
        """Fit the split conformal interval on ``rows`` (rows the model was not fitted on)."""
        if len(rows):
            pred = self.predict(None, rows)["popularity"].to_numpy()
            self.conformal = asdict(SplitConformal.fit(rows["popularity"].to_numpy(float), pred, coverage))


class MetaRowModel(RowModel):
    """A :class:`RowModel` whose class boundaries, calibration and configuration name live in ``meta``, the
    dataclass its bundle saves as JSON (fields ``thresholds``, ``conformal``, ``config``): calibrating the model
    updates what is saved."""

    def __init__(self, pre: Preprocessor, meta):
        self.meta = meta
        super().__init__(pre, meta.thresholds, meta.conformal, meta.config)

    @property
    def conformal(self) -> dict | None:
        return self.meta.conformal

    @conformal.setter
    def conformal(self, value: dict | None) -> None:
        self.meta.conformal = value


def __getattr__(name: str):
    # Versions registered before families carry a code file doing `from hitmodels.predict import
    # HitMusicPyfunc; set_model(HitMusicPyfunc())`: MLflow's own load_model of them gets the bundle loader.
    if name == "HitMusicPyfunc":
        from .bundle import RegisteredModel

        return RegisteredModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
