"""Models on feature rows as arrays, and their forward pass in NumPy: what a batch job's workers run.

A fresh Ray worker that imports torch and mlflow and loads a model from the registry spends seconds of a core
before its first row, and a scoring job gets fresh workers. So the job loads the model once, on the driver,
and hands its tasks a :class:`RowKernel`: the preprocessing arrays, the family's scoring function as a
:class:`Program` of generic steps over arrays, and how scores become the output columns. This module needs
NumPy only (and :mod:`hitmodels.ranking`, NumPy too); unpickling a kernel imports nothing else.

Each family on feature rows exports its model as a program (:meth:`hitmodels.predict.RowModel.score_program`):
dense networks (``affine``, ``relu``, ``sigmoid``, ``softmax``, ``standardise``, ``add``, ``scale``), linear
models (``affine``) and gradient-boosted trees (``trees``, the arrays of :mod:`hitmodels.families.hgb.trees`).
The functions here are also what :class:`hitmodels.predict.RowModel` answers with, so the two paths build
their outputs from the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import CLASS_NAMES, CLASS_THRESHOLDS

TREE_FIELDS = ("value", "feature", "threshold", "left", "right", "leaf", "missing_left", "roots", "baseline")


def scale_rows(X: np.ndarray, medians: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Raw feature rows ``(n, d)`` -> float32 rows imputed (NaN or infinity -> the training median) and min-max
    scaled, ``(X - lo) * scale``; ``medians``, ``lo``, ``scale`` are ``(d,)`` float32."""
    X = np.asarray(X, dtype=np.float32)
    bad = ~np.isfinite(X)
    if bad.any():
        X = np.where(bad, medians, X)
    return (X - lo) * scale


def popularity_class(popularity: np.ndarray, thresholds: tuple[float, float] = CLASS_THRESHOLDS) -> np.ndarray:
    """Class names for popularity 0-100: below ``thresholds[0]`` low, below ``thresholds[1]`` medium, else high."""
    return np.asarray(CLASS_NAMES, dtype=object)[np.digitize(popularity, thresholds)]


def class_probabilities(raw: np.ndarray, classes) -> np.ndarray:
    """``(n, 3)`` low/medium/high probabilities from a classifier's raw scores over the ``classes`` it saw
    (indices into low/medium/high): ``(n, 1)`` is the log-odds of the second of two classes (a binary
    model), ``(n, K)`` the logits of K; classes it never saw get probability 0."""
    raw = np.asarray(raw, np.float64)
    if raw.shape[1] == 1:
        p1 = 1.0 / (1.0 + np.exp(-raw[:, 0]))
        present = np.stack([1.0 - p1, p1], axis=1)
    else:
        e = np.exp(raw - raw.max(axis=1, keepdims=True))
        present = e / e.sum(axis=1, keepdims=True)
    proba = np.zeros((len(raw), len(CLASS_NAMES)))
    proba[:, np.asarray(classes, dtype=np.int64)] = present
    return proba


def interval(popularity: np.ndarray, halfwidth: float) -> tuple[np.ndarray, np.ndarray]:
    """``popularity ± halfwidth``, clipped to the 0-100 range popularity lives in."""
    p = np.asarray(popularity, float)
    return np.clip(p - halfwidth, 0.0, 100.0), np.clip(p + halfwidth, 0.0, 100.0)


def answer(pop: np.ndarray, proba: np.ndarray | None, thresholds, halfwidth: float | None) -> dict[str, np.ndarray]:
    """The output columns from popularity 0-100 ``(n,)`` float64 (clipped in place) and the class
    probabilities ``(n, 3)`` (``None`` without a class head); ``halfwidth``: the conformal interval's, or
    None when uncalibrated. See :class:`hitmodels.predict.RowModel` for the columns."""
    # a linear or tree model can leave the range popularity lives in; a sigmoid output never does
    np.clip(pop, 0.0, 100.0, out=pop)
    out = {"popularity": pop}
    if halfwidth is not None:
        out["popularity_lower"], out["popularity_upper"] = interval(pop, halfwidth)
    # two answers that can differ: the class head's most probable class, and the class that the predicted
    # popularity falls in; both are given, named apart, so that no answer contradicts itself
    of_popularity = popularity_class(pop, tuple(thresholds))
    out["class"] = np.asarray(CLASS_NAMES, dtype=object)[proba.argmax(1)] if proba is not None else of_popularity
    out["popularity_class"] = of_popularity
    if proba is not None:
        out.update({f"p_{name}": proba[:, i] for i, name in enumerate(CLASS_NAMES)})
    return out


def tree_depth(arrays: dict[str, np.ndarray], prefix: str = "") -> int:
    """Steps from any root to its deepest leaf (an upper bound for the walk) of the trees ``prefix + field``."""
    leaf, left, right = arrays[prefix + "leaf"], arrays[prefix + "left"], arrays[prefix + "right"]
    depth = np.zeros(len(leaf), dtype=np.int64)
    # children always come after their parent in scikit-learn's node order
    for i in range(len(depth)):
        if not leaf[i]:
            depth[left[i]] = depth[right[i]] = depth[i] + 1
    return int(depth.max()) if len(depth) else 0


def raw_predict(arrays: dict[str, np.ndarray], X: np.ndarray, depth: int | None = None, prefix: str = "") -> np.ndarray:
    """Raw scores ``(n_rows, K)``: the baseline plus the sum of every tree's leaf value for ``X``
    ``(n_rows, n_features)`` (any float dtype, compared in float64 as scikit-learn does). NaN goes where
    ``missing_left`` says, otherwise ``x <= threshold`` goes left; a leaf's children are itself."""
    a = {f: arrays[prefix + f] for f in TREE_FIELDS}
    X = np.asarray(X, dtype=np.float64)
    roots, k = a["roots"], len(a["baseline"])
    idx = np.broadcast_to(roots, (len(X), len(roots))).copy()
    for _ in range(tree_depth(arrays, prefix) if depth is None else depth):
        if a["leaf"][idx].all():
            break
        x = np.take_along_axis(X, a["feature"][idx], axis=1)
        go_left = np.where(np.isnan(x), a["missing_left"][idx], x <= a["threshold"][idx])
        idx = np.where(go_left, a["left"][idx], a["right"][idx])
    values = a["value"][idx]
    return a["baseline"][None, :] + values.reshape(len(X), -1, k).sum(axis=1)


def _affine(env, arrays, inp, w, b):
    return env[inp] @ arrays[w] + arrays[b]


def _relu(env, arrays, inp):
    return np.maximum(env[inp], 0)


def _sigmoid(env, arrays, inp):
    x = env[inp]
    return 1 / (1 + np.exp(-x))


def _softmax(env, arrays, inp):
    x = env[inp]
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _standardise(env, arrays, inp, shift, div):
    return (env[inp] - arrays[shift]) / arrays[div]


def _add(env, arrays, a, b):
    return env[a] + env[b]


def _scale(env, arrays, inp, factor):
    return env[inp] * arrays[factor]


def _trees(env, arrays, inp, prefix):
    return raw_predict(arrays, env[inp], int(arrays[prefix + "depth"]), prefix)


def _classes(env, arrays, inp, classes):
    return class_probabilities(env[inp], arrays[classes])


def _column(env, arrays, inp):
    return env[inp][:, 0]


# op -> (function, number of arguments after the output name)
OPS = {"affine": (_affine, 3), "relu": (_relu, 1), "sigmoid": (_sigmoid, 1), "softmax": (_softmax, 1),
       "standardise": (_standardise, 3), "add": (_add, 2), "scale": (_scale, 2), "trees": (_trees, 2),
       "classes": (_classes, 2), "column": (_column, 1)}


@dataclass
class Program:
    """A family's scoring function: ``steps`` over named values, starting from ``"x"`` (preprocessed rows
    ``(n, d)`` float32), each ``(op, out, *args)`` with args naming values or ``arrays``; ``popularity`` names
    the value holding popularity / 100 (``(n,)`` or ``(n, 1)``), ``proba`` the ``(n, 3)`` low/medium/high
    probabilities (None without a class head).

    Ops: ``affine (inp, W, b)``: ``inp @ W + b`` (W ``(in, out)``); ``relu``, ``sigmoid``, ``softmax`` (rows)
    of ``inp``; ``standardise (inp, shift, div)``: ``(inp - shift) / div``; ``add (a, b)``; ``scale (inp,
    factor)``; ``trees (inp, prefix)``: :func:`raw_predict` of the arrays ``prefix + field`` (and ``prefix +
    "depth"``); ``classes (inp, classes)``: :func:`class_probabilities`; ``column (inp)``: its first column.
    Arithmetic is in the arrays' dtype (float32 for the networks, float64 for the linear models)."""

    steps: list[tuple[str, ...]]
    arrays: dict[str, np.ndarray]
    popularity: str
    proba: str | None = None

    def __post_init__(self):
        for step in self.steps:
            if step[0] not in OPS or len(step) != 2 + OPS[step[0]][1]:
                raise ValueError(f"unknown program step {step!r}")

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Popularity / 100 ``(n,)`` float64 and the class probabilities ``(n, 3)`` or None, of scaled rows."""
        env = {"x": x}
        for op, out, *args in self.steps:
            env[out] = OPS[op][0](env, self.arrays, *args)
        pop = env[self.popularity]
        pop = np.asarray(pop[:, 0] if pop.ndim == 2 else pop, np.float64)
        return pop, (np.asarray(env[self.proba], np.float64) if self.proba else None)


def tree_arrays(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tree arrays (:data:`TREE_FIELDS`) under ``prefix``, with their walk depth, for a ``trees`` step."""
    out = {prefix + f: np.asarray(arrays[f]) for f in TREE_FIELDS}
    out[prefix + "depth"] = np.asarray(tree_depth(arrays))
    return out


@dataclass
class RowKernel:
    """Everything a task needs to score feature rows: the training columns and preprocessing arrays, the
    family's :class:`Program`, class boundaries, the conformal interval's half-width, and the output
    columns in order (``percentile_of``: the training scores' quantiles, for a ranking model's
    ``percentile`` output). :meth:`predict_array` gives what the model's own ``predict_array`` gives."""

    columns: list[str]
    medians: np.ndarray
    lo: np.ndarray
    scale: np.ndarray
    program: Program
    thresholds: tuple[float, float]
    halfwidth: float | None
    outputs: list[str]
    percentile_of: list[float] | None = None
    family: str = ""

    def predict_array(self, X: np.ndarray, chunk_rows: int = 2048, precision: str = "fp32") -> dict[str, np.ndarray]:
        """The output columns for raw rows ``(n, len(columns))``, in chunks of ``chunk_rows`` (each chunk's
        intermediate values stay in the CPU cache, memory stays flat whatever the input size)."""
        if precision != "fp32":
            raise ValueError(f"a kernel scores in fp32 only, not {precision}")
        n = len(X)
        pop = np.empty(n, dtype=np.float64)
        proba = np.empty((n, len(CLASS_NAMES)), dtype=np.float64) if self.program.proba else None
        for a in range(0, n, chunk_rows):
            p, q = self.program.run(scale_rows(X[a:a + chunk_rows], self.medians, self.lo, self.scale))
            pop[a:a + chunk_rows] = p
            if proba is not None:
                proba[a:a + chunk_rows] = q
        pop *= 100.0
        out = answer(pop, proba, self.thresholds, self.halfwidth)
        if self.percentile_of is not None:
            from .ranking import percentile

            out["percentile"] = percentile(out["popularity"] / 100.0, self.percentile_of)
        return {k: out[k] for k in self.outputs}
