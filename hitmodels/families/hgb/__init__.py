"""HistGradientBoosting (scikit-learn): a regressor on popularity / 100 and a 3-class classifier (balanced class
weights), on the same preprocessed rows as HitMusicNet (training medians imputed, min-max scaled). The
strongest classical peer in the paper comparisons (``hitmusic evaluate``).

The bundle is data: ``model.json`` (preprocessing, settings, classes, calibration) and ``trees.npz`` (every
tree's nodes as arrays, :mod:`.trees`); scoring walks the trees in NumPy, so no estimator is unpickled and
scikit-learn is not needed to answer.

Settings (``TrainConfig.params``, and the Tune space): ``learning_rate`` (0.1), ``max_iter`` (100),
``max_leaf_nodes`` (31), ``min_samples_leaf`` (20), ``l2_regularization`` (0), ``class_weight``
("balanced").
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from hitmodels.config import TrainConfig
from hitmodels.families.base import Family, Fitted
from hitmodels.kernels import Program, tree_arrays
from hitmodels.predict import Preprocessor, RowModel, check_classes, class_labels, class_thresholds

from .trees import check_trees, export_trees

DEFAULTS = {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 31, "min_samples_leaf": 20,
            "l2_regularization": 0.0, "class_weight": "balanced"}


class HGBModel(RowModel):
    family = "hgb"

    def __init__(self, pre: Preprocessor, reg: dict[str, np.ndarray], cls: dict[str, np.ndarray] | None,
                 classes: list[int], thresholds, conformal=None, config="hgb", params: dict | None = None):
        super().__init__(pre, thresholds, conformal, config)
        self.reg, self.cls, self.classes, self.params = reg, cls, list(classes), dict(params or {})
        if cls is not None:
            check_classes(self.classes, len(cls["baseline"]))

    @property
    def has_classes(self) -> bool:
        return self.cls is not None

    def score_program(self) -> Program:
        """The regressor's trees (and the classifier's, their raw scores to probabilities); what
        :meth:`scores` runs."""
        arrays = tree_arrays("reg.", self.reg)
        steps = [("trees", "pop", "x", "reg."), ("column", "popularity", "pop")]
        if self.cls is not None:
            arrays.update(tree_arrays("cls.", self.cls), classes=np.asarray(self.classes, np.int64))
            steps += [("trees", "raw", "x", "cls."), ("classes", "proba", "raw", "classes")]
        return Program(steps, arrays, "popularity", "proba" if self.cls is not None else None)

    def scores(self, x: np.ndarray, precision: str):
        if getattr(self, "_program", None) is None:
            self._program = self.score_program()
        return self._program.run(x)


def _fit_reg_cls(X, pop, thresholds, cfg: TrainConfig):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    p = {**DEFAULTS, **cfg.params}
    tree = {k: p[k] for k in ("learning_rate", "max_iter", "max_leaf_nodes", "min_samples_leaf",
                              "l2_regularization")}
    labels = class_labels(pop, thresholds)
    with threadpool_limits(cfg.threads):
        reg = HistGradientBoostingRegressor(random_state=cfg.seed, **tree).fit(X, pop / 100.0)
        cls = None
        if cfg.classifier and len(np.unique(labels)) > 1:
            cls = HistGradientBoostingClassifier(random_state=cfg.seed, class_weight=None if p["class_weight"] in (None, "none") else "balanced",
                                                 **tree).fit(X, labels)
    return reg, cls, p


class HGBFamily(Family):
    name = "hgb"
    label = "HistGradientBoosting"
    defaults = DEFAULTS
    files = ("model.json", "trees.npz")

    def check(self, cfg: TrainConfig) -> None:
        super().check(cfg)
        if cfg.params.get("class_weight", "balanced") not in ("balanced", "none", None):
            raise ValueError(f"hgb setting class_weight must be 'balanced' or 'none', got {cfg.params['class_weight']!r}")

    def fit(self, fit_rows, val_rows, calib_rows, columns, cfg, log=False, on_epoch=None, parallel=None) -> Fitted:
        start = time.perf_counter()
        pre = Preprocessor.fit(fit_rows, columns)
        pop = fit_rows["popularity"].to_numpy(float)
        thresholds = class_thresholds(cfg.class_scheme, pop)
        reg, cls, p = _fit_reg_cls(pre.transform(fit_rows), pop, thresholds, cfg)
        model = HGBModel(pre, export_trees(reg), export_trees(cls) if cls is not None else None,
                         [int(c) for c in cls.classes_] if cls is not None else [], thresholds,
                         config=cfg.name if cfg.name != "custom" else "hgb", params=p)
        model.calibrate(calib_rows, cfg.coverage)
        return Fitted(model, seconds=time.perf_counter() - start)

    def save(self, model: HGBModel, directory: Path) -> list[str]:
        arrays = {f"reg.{k}": v for k, v in model.reg.items()}
        if model.cls is not None:
            arrays.update({f"cls.{k}": v for k, v in model.cls.items()})
        np.savez(Path(directory) / "trees.npz", **arrays)
        (Path(directory) / "model.json").write_text(json.dumps({
            "preprocess": json.loads(model.pre.to_json()), "classes": model.classes, "thresholds": model.thresholds,
            "conformal": model.conformal, "config": model.config, "params": model.params}))
        return list(self.files)

    def load(self, directory: Path) -> HGBModel:
        meta = json.loads((Path(directory) / "model.json").read_text())
        pre = Preprocessor(**meta["preprocess"])
        with np.load(Path(directory) / "trees.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        parts = {}
        for part in ("reg", "cls"):
            got = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{part}.")}
            if got:
                check_trees(got, len(pre.columns))
                parts[part] = got
        if "reg" not in parts:
            raise ValueError("trees.npz holds no regression trees")
        return HGBModel(pre, parts["reg"], parts.get("cls"), meta["classes"], meta["thresholds"],
                        meta.get("conformal"), meta.get("config", "hgb"), meta.get("params"))

    def params(self, cfg: TrainConfig, n_fit: int | None = None) -> dict:
        return {f"hgb.{k}": v for k, v in {**DEFAULTS, **cfg.params}.items()}

    def describe(self, cfg: TrainConfig) -> str:
        p = {**DEFAULTS, **cfg.params}
        return (f"HistGradientBoosting (learning rate {p['learning_rate']}, {p['max_iter']} iterations, "
                f"{p['max_leaf_nodes']} leaves, min {p['min_samples_leaf']} rows per leaf, "
                f"L2 {p['l2_regularization']})")

    def space(self, search: str) -> dict:
        from ray import tune

        grid = {"learning_rate": [0.03, 0.1, 0.3], "max_leaf_nodes": [7, 15, 31],
                "min_samples_leaf": [5, 20, 50], "l2_regularization": [0.0, 1.0]}
        pick = tune.grid_search if search == "grid" else tune.choice
        return {k: pick(v) for k, v in grid.items()}


FAMILY = HGBFamily()
