"""The contract a model family implements (in the spirit of scikit-learn's estimators: ``fit`` returns a
fitted model, the fitted model predicts; everything else is data).

A family owns:

- its **input kind**: ``"rows"`` (the model table's feature columns; every family so far) or, for families to
  come, e.g. ``"mel"`` (log-mel segments of the audio);
- **fitting**: :meth:`Family.fit` on the fit / validation / calibration rows of one split, returning a
  :class:`Fitted` whose ``model`` is a :class:`~hitmodels.predict.RowModel`;
- the **bundle**: :meth:`Family.save` writes its files (weights and JSON/arrays, never pickles) and
  :meth:`Family.load` reads them back; :mod:`hitmodels.bundle` adds the manifest that names the family;
- **tuning**: :meth:`Family.space` (a Ray Tune search space), :meth:`Family.configure` (a trial's point ->
  a :class:`~hitmodels.config.TrainConfig`) and :meth:`Family.retrain` (the chosen point on the whole
  training part, on Ray);
- the **metric** it is selected and promoted on (:attr:`Family.metric`, lower is better unless
  :attr:`Family.higher_is_better`).

Stages (registry, promotion, Serve, batch scoring, leaderboard) see only this interface.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from hitmodels.config import TrainConfig, tracking_uri
from hitmodels.predict import RowModel


@dataclass
class Fitted:
    """One fitted model with what fitting measured: learning curves per stage and wall time."""

    model: RowModel
    history: dict[str, list[dict]] = field(default_factory=dict)
    seconds: float = 0.0
    shard: np.ndarray | None = None  # positions in the fit rows this worker trained on (data-parallel)

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        return self.model.predict(None, rows)


class Family:
    """Base class of the families; subclasses set the attributes and implement fit/save/load."""

    name: str = ""
    label: str = ""  # how tables and descriptions name it
    input_kind: str = "rows"
    files: tuple[str, ...] = ()  # what save() writes, besides the manifest: the only files load() reads
    metric: str = "mae"  # test metric of popularity / 100 it is selected and promoted on
    higher_is_better: bool = False
    defaults: dict = {}  # the family's own settings (``TrainConfig.params``) and their defaults
    early_stops: bool = False  # whether fit() uses the validation rows (else they may be fitted on)
    # the registered model its versions go to by default: the families on feature rows compete for one
    # champion; a family on other input has a registered model (and a champion) of its own
    registered_model: str = "hitmusicnet"
    # what Ray Tune's trials of this family are compared and stopped on: (reported metric, "min" or "max")
    tune_metric: tuple[str, str] = ("val_loss", "min")

    def default_config(self, base: TrainConfig) -> TrainConfig:
        """The configuration ``hitmusic train`` and the leaderboard use when none is named."""
        return replace(base, family=self.name)

    def check(self, cfg: TrainConfig) -> None:
        """Refuse a configuration this family cannot fit, before any work (``ValueError`` naming it)."""
        unknown = sorted(set(cfg.params) - set(self.defaults))
        if unknown:
            known = ", ".join(self.defaults) or "none"
            raise ValueError(f"the {self.name} family has no setting(s) {unknown}; its settings: {known}")
        for key, value in cfg.params.items():
            default = self.defaults[key]
            if isinstance(default, (int, float)) and not isinstance(default, bool) and (
                    isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{self.name} setting {key} must be a number, got {value!r}")
        if cfg.class_weight not in ("none", "balanced"):
            raise ValueError(f"unknown class weighting {cfg.class_weight!r}; choose 'none' or 'balanced'")

    def prepare(self, table: pd.DataFrame, cfg: TrainConfig) -> pd.DataFrame:
        """The model table's training rows as :meth:`fit` takes them, before any split: a family on another
        input than feature rows joins it here (the Siamese family adds each track's log-mel segment, leaving
        out tracks without one). Feature-row families take the rows as they are."""
        return table

    def fit(self, fit_rows: pd.DataFrame, val_rows: pd.DataFrame, calib_rows: pd.DataFrame, columns: list[str],
            cfg: TrainConfig, log: bool = False, on_epoch: Callable[[str, int, dict], None] | None = None,
            parallel=None) -> Fitted:
        """Fit on ``fit_rows`` (``val_rows`` may drive early stopping or model selection), calibrate the
        interval on ``calib_rows``; nothing else may be seen."""
        raise NotImplementedError

    def save(self, model: RowModel, directory: Path) -> list[str]:
        raise NotImplementedError

    def network(self, model: RowModel):
        """A torch family's network(s) as one ``nn.Module`` (what data-parallel retraining checks is equal on
        every worker)."""
        raise NotImplementedError(f"the {self.name} family has no torch network")

    def load(self, directory: Path) -> RowModel:
        raise NotImplementedError

    def params(self, cfg: TrainConfig, n_fit: int | None = None) -> dict:
        """The settings that define this family's model, as MLflow logs them (``n_fit``: rows fitted on)."""
        return {f"params.{k}": v for k, v in cfg.params.items()}

    def describe(self, cfg: TrainConfig) -> str:
        """One line naming the configuration, for the registry's description."""
        extra = ", ".join(f"{k}={v}" for k, v in sorted(cfg.params.items()))
        return f"{self.label}" + (f" ({extra})" if extra else "")

    def variants(self, tags: bool = False) -> dict[str, dict]:
        """Named variants of this family (``name -> settings``) that ``hitmusic evaluate --family`` compares
        (``tags``: also those with the tag branch); none by default."""
        raise ValueError(f"the {self.name} family has no named variants to evaluate")

    # ----------------------------------------------------------------------------------------- tuning

    def space(self, search: str) -> dict:
        """Ray Tune's search space (``search`` is ``"grid"`` or ``"random"``)."""
        raise ValueError(f"the {self.name} family has nothing to tune")

    def configure(self, trial: dict, base: TrainConfig) -> TrainConfig:
        """A trial's point of :meth:`space` as the training configuration."""
        params = {k: v for k, v in trial.items() if k != "context"}
        name = "-".join(f"{k}{v}" for k, v in sorted(params.items()))
        return replace(base, family=self.name, params={**base.params, **params}, name=name or base.name)

    def retrain(self, table_path: str, cfg: TrainConfig, storage: str, workers: int, name: str,
                use_gpu: bool = False) -> tuple[contextlib.AbstractContextManager[Path], dict[str, str]]:
        """Fit ``cfg`` on the whole training part on the cluster; returns a context manager giving the
        saved bundle directory, and tags for the registered version. This default fits in one Ray task
        (the classical families are single-process)."""
        import ray

        from hitmodels.bundle import feature_config_of, read_bundle_files, write_bundle

        @ray.remote(num_cpus=1)
        def fit_remotely(table_path: str, cfg: TrainConfig) -> dict[str, bytes]:
            from hitmodels.data import feature_columns, training_rows
            from hitmodels.storage import read_parquet
            from hitmodels.train import retrain_rows

            raw = read_parquet(table_path)
            table = self.prepare(training_rows(raw), cfg)
            fit, stop, calib = retrain_rows(table, cfg)
            fitted = self.fit(fit, stop, calib, feature_columns(table), cfg)
            with tempfile.TemporaryDirectory() as tmp:
                write_bundle(Path(tmp), fitted.model, feature_config_of(raw))
                return read_bundle_files(Path(tmp))

        start = time.perf_counter()
        files = ray.get(fit_remotely.remote(table_path, cfg))

        @contextlib.contextmanager
        def bundle() -> Iterator[Path]:
            with tempfile.TemporaryDirectory() as tmp:
                for rel, data in files.items():
                    (Path(tmp) / rel).write_bytes(data)
                yield Path(tmp)

        return bundle(), {"train_workers": "1", "train_device": "cpu",
                          "retrain_seconds": f"{time.perf_counter() - start:.1f}"}

    @contextlib.contextmanager
    def trial_run(self, config: dict, extra_params: dict | None = None):
        """What every trial does around its fit: the trial's configuration, the family's prepared rows and
        their split, inside the trial's MLflow run (nested under the tuning job's) with its parameters and tags.
        Yields ``(cfg, table, splits)``."""
        import mlflow
        from ray import tune

        from hitmodels.data import training_rows
        from hitmodels.storage import read_parquet
        from hitmodels.train import dataset_fingerprint, git_commit, split_rows

        ctx = config["context"]
        cfg = self.configure(config, TrainConfig(**ctx["base"]))
        table = self.prepare(training_rows(read_parquet(ctx["table"])), cfg)
        s = split_rows(table, cfg)
        mlflow.set_tracking_uri(tracking_uri(ctx["tracking_uri"]))  # bounds this worker's waits on the server too
        with mlflow.start_run(experiment_id=ctx["experiment_id"], run_name=tune.get_context().get_trial_name(),
                              parent_run_id=ctx["parent_run_id"]):
            mlflow.log_params({"family": self.name, "config": cfg.name, **self.params(cfg, len(s.fit)),
                               **(extra_params or {})})
            mlflow.set_tags({"model_family": self.name, "tune_trial": tune.get_context().get_trial_name(),
                             "dataset_fingerprint": dataset_fingerprint(table), "git_commit": git_commit()})
            yield cfg, table, s

    def trial(self, config: dict) -> None:
        """One Ray Tune trial: fit the point on the fit rows, report ``val_loss`` (MSE of popularity / 100 on
        the validation rows, the metric every family's trials are compared on) once."""
        import mlflow
        from ray import tune

        from hitmodels.data import feature_columns
        from hitmodels.evaluate import regression_metrics

        with self.trial_run(config) as (cfg, table, s):
            fitted = self.fit(s.fit, s.val, s.fit.iloc[:0], feature_columns(table), cfg)
            m = regression_metrics(s.val["popularity"].to_numpy(float),
                                   fitted.predict(s.val)["popularity"].to_numpy(float))
            mlflow.log_metrics({"val_loss": m["mse"], "val_mae": m["mae"]})
            tune.report({"val_loss": m["mse"], "val_mae": m["mae"], "epoch": 0})
