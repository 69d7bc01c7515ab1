"""MLR + Lasso (the paper's Table 5 "MLR + Lasso"): linear regression of popularity / 100 with an L1 penalty
chosen by 3-fold cross-validation on the fit rows (scikit-learn's ``LassoCV``, 20 penalties), plus a
multinomial logistic regression for the three classes, on the same preprocessed rows as HitMusicNet
(training medians imputed, min-max scaled).

The bundle is one JSON file: preprocessing, coefficients, intercepts, classes and calibration. Scoring is two
matrix products in NumPy.

Settings (``TrainConfig.params``): ``n_alphas`` (20), ``cv`` (3), ``C`` of the logistic regression (1.0).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from hitmodels.config import TrainConfig
from hitmodels.families.base import Family, Fitted
from hitmodels.kernels import Program
from hitmodels.predict import Preprocessor, RowModel, check_classes, class_labels, class_thresholds

DEFAULTS = {"n_alphas": 20, "cv": 3, "C": 1.0}


class LassoModel(RowModel):
    family = "lasso"

    def __init__(self, pre: Preprocessor, coef, intercept: float, alpha: float, cls: dict | None, thresholds,
                 conformal=None, config="lasso"):
        super().__init__(pre, thresholds, conformal, config)
        self.coef, self.intercept, self.alpha = np.asarray(coef, np.float64), float(intercept), float(alpha)
        if len(self.coef) != len(pre.columns):
            raise ValueError(f"lasso model has {len(self.coef)} coefficients for {len(pre.columns)} columns")
        self.cls = None if cls is None else {"classes": [int(c) for c in cls["classes"]],
                                             "coef": np.asarray(cls["coef"], np.float64).reshape(-1, len(self.coef)),
                                             "intercept": np.asarray(cls["intercept"], np.float64).reshape(-1)}
        if self.cls is not None:
            check_classes(self.cls["classes"], len(self.cls["coef"]))
            if len(self.cls["intercept"]) != len(self.cls["coef"]):
                raise ValueError("lasso classifier has a different number of intercepts and coefficient rows")

    @property
    def has_classes(self) -> bool:
        return self.cls is not None

    def score_program(self) -> Program:
        """Two affine maps in float64 (the classifier's logits to probabilities); what :meth:`scores` runs."""
        arrays = {"coef": self.coef[:, None], "intercept": np.asarray([self.intercept])}
        steps = [("affine", "pop", "x", "coef", "intercept")]
        if self.cls is not None:
            arrays.update(cls_coef=np.ascontiguousarray(self.cls["coef"].T), cls_intercept=self.cls["intercept"],
                          classes=np.asarray(self.cls["classes"], np.int64))
            steps += [("affine", "z", "x", "cls_coef", "cls_intercept"), ("classes", "proba", "z", "classes")]
        return Program(steps, arrays, "pop", "proba" if self.cls is not None else None)

    def scores(self, x: np.ndarray, precision: str):
        if getattr(self, "_program", None) is None:
            self._program = self.score_program()
        return self._program.run(np.asarray(x, np.float64))


class LassoFamily(Family):
    name = "lasso"
    label = "MLR + Lasso"
    defaults = DEFAULTS
    files = ("model.json",)

    def fit(self, fit_rows, val_rows, calib_rows, columns, cfg, log=False, on_epoch=None, parallel=None) -> Fitted:
        from sklearn.linear_model import LassoCV, LogisticRegression
        from threadpoolctl import threadpool_limits

        start = time.perf_counter()
        p = {**DEFAULTS, **cfg.params}
        pre = Preprocessor.fit(fit_rows, columns)
        X = pre.transform(fit_rows).astype(np.float64)
        pop = fit_rows["popularity"].to_numpy(float)
        thresholds = class_thresholds(cfg.class_scheme, pop)
        labels = class_labels(pop, thresholds)
        with threadpool_limits(cfg.threads):
            reg = LassoCV(alphas=int(p["n_alphas"]), cv=int(p["cv"]), max_iter=5000,
                          random_state=cfg.seed).fit(X, pop / 100.0)
            cls = None
            if cfg.classifier and len(np.unique(labels)) > 1:
                lr = LogisticRegression(C=float(p["C"]), max_iter=2000,
                                        class_weight=None if cfg.class_weight == "none" else "balanced").fit(X, labels)
                cls = {"classes": lr.classes_.tolist(), "coef": lr.coef_.tolist(), "intercept": lr.intercept_.tolist()}
        model = LassoModel(pre, reg.coef_, float(reg.intercept_), float(reg.alpha_), cls, thresholds,
                           config=cfg.name if cfg.name != "custom" else "lasso")
        model.calibrate(calib_rows, cfg.coverage)
        return Fitted(model, seconds=time.perf_counter() - start)

    def save(self, model: LassoModel, directory: Path) -> list[str]:
        cls = None if model.cls is None else {k: np.asarray(v).tolist() for k, v in model.cls.items()}
        (Path(directory) / "model.json").write_text(json.dumps({
            "preprocess": json.loads(model.pre.to_json()), "coef": model.coef.tolist(), "intercept": model.intercept,
            "alpha": model.alpha, "classifier": cls, "thresholds": model.thresholds, "conformal": model.conformal,
            "config": model.config}))
        return list(self.files)

    def load(self, directory: Path) -> LassoModel:
        m = json.loads((Path(directory) / "model.json").read_text())
        return LassoModel(Preprocessor(**m["preprocess"]), m["coef"], m["intercept"], m["alpha"], m["classifier"],
                          m["thresholds"], m.get("conformal"), m.get("config", "lasso"))

    def params(self, cfg: TrainConfig, n_fit: int | None = None) -> dict:
        return {f"lasso.{k}": v for k, v in {**DEFAULTS, **cfg.params}.items()}

    def describe(self, cfg: TrainConfig) -> str:
        p = {**DEFAULTS, **cfg.params}
        return f"MLR + Lasso (penalty by {p['cv']}-fold CV over {p['n_alphas']} values; logistic classes, C {p['C']})"


FAMILY = LassoFamily()
