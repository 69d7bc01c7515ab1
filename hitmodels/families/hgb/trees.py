"""scikit-learn's HistGradientBoosting trees as plain arrays, and their prediction in NumPy.

A fitted ``HistGradientBoosting{Regressor,Classifier}`` keeps, per boosting iteration and per output, a tree
of nodes (``TreePredictor.nodes``: value, feature, threshold, missing-go-left, children, is-leaf). Those
arrays, concatenated over all trees, plus the baseline prediction are the whole model for numerical features:
saved with ``numpy.savez`` (``allow_pickle=False`` on load) they are data, unlike the estimator's pickle.

:func:`hitmodels.kernels.raw_predict` walks every tree for every row at once, one depth level per step, with the estimator's
own rule: NaN goes where ``missing_go_to_left`` says, otherwise ``x <= threshold`` goes left. Sums over trees
are in float64 like scikit-learn's, in another order, so results agree to about 1e-12.
"""

from __future__ import annotations

import numpy as np

from hitmodels.kernels import TREE_FIELDS as FIELDS
from hitmodels.kernels import raw_predict, tree_depth  # noqa: F401 (the walk is the kernels', shared with batch jobs)


def export_trees(estimator) -> dict[str, np.ndarray]:
    """The arrays of a fitted HistGradientBoosting estimator (numerical features only).

    Returns ``value`` (float64), ``feature``, ``left``, ``right`` (int64; children as indices into the
    concatenated nodes), ``threshold`` (float64), ``leaf``, ``missing_left`` (bool), one node per entry;
    ``roots`` (int64, one per tree, trees in iteration-major order: tree ``t`` adds to output ``t % K``) and
    ``baseline`` (float64, ``(K,)``)."""
    trees = [p for iteration in estimator._predictors for p in iteration]
    if not trees:
        raise ValueError("the estimator has no trees")
    parts, roots, offset = [], [], 0
    for tree in trees:
        nodes = tree.nodes
        if nodes["is_categorical"].any():
            raise ValueError("categorical splits are not supported by the array export")
        parts.append(nodes)
        roots.append(offset)
        offset += len(nodes)
    nodes = np.concatenate(parts)
    shift = np.repeat(np.asarray(roots, np.int64), [len(p) for p in parts])
    leaf = nodes["is_leaf"].astype(bool)
    # a leaf's children fields are 0; keep them pointing at the leaf itself so a walk can stay put
    here = np.arange(len(nodes), dtype=np.int64)
    return {
        "value": nodes["value"].astype(np.float64),
        "feature": nodes["feature_idx"].astype(np.int64),
        "threshold": nodes["num_threshold"].astype(np.float64),
        "left": np.where(leaf, here, nodes["left"].astype(np.int64) + shift),
        "right": np.where(leaf, here, nodes["right"].astype(np.int64) + shift),
        "leaf": leaf,
        "missing_left": nodes["missing_go_to_left"].astype(bool),
        "roots": np.asarray(roots, np.int64),
        "baseline": np.asarray(estimator._baseline_prediction, np.float64).reshape(-1),
    }


def check_trees(arrays: dict[str, np.ndarray], n_features: int) -> None:
    """Refuse arrays that could not have come from :func:`export_trees` (a corrupted or hand-made file):
    every child and feature index in range, one baseline per output."""
    missing = [f for f in FIELDS if f not in arrays]
    if missing:
        raise ValueError(f"tree arrays lack {missing}")
    n = len(arrays["value"])
    if any(len(arrays[f]) != n for f in ("feature", "threshold", "left", "right", "leaf", "missing_left")):
        raise ValueError("tree arrays have different lengths")
    for f in ("leaf", "missing_left"):
        if arrays[f].dtype != np.bool_:
            raise ValueError(f"tree array {f} is not boolean")
    for f in ("left", "right", "roots"):
        if len(arrays[f]) and (arrays[f].min() < 0 or arrays[f].max() >= n):
            raise ValueError(f"tree array {f} points outside the nodes")
    inner = ~arrays["leaf"]
    here = np.arange(n)
    # children come after their parent (scikit-learn's order), so every walk ends at a leaf
    if (arrays["left"][inner] <= here[inner]).any() or (arrays["right"][inner] <= here[inner]).any():
        raise ValueError("a tree's child comes before its parent")
    if n and (arrays["feature"].min() < 0 or arrays["feature"].max() >= n_features):
        raise ValueError("a tree splits on a feature the model does not have")
    k = len(arrays["baseline"])
    if k < 1 or len(arrays["roots"]) % k:
        raise ValueError("tree count is not a multiple of the outputs")
