"""The Siamese CNN with ranking loss (Yu et al., ICASSP 2018) on log-mel segments of the audio.

- :mod:`.network`: the simple CNN, the tag branch and their mix (our reading of their Fig. 1 and eq. 4);
- :mod:`.fit`: rating-only or Siamese training on sampled pairs (:mod:`hitmodels.ranking`), early stopping,
  A/B + artist fusion; :mod:`.model`: the registered model and its bundle.

Its input is a mel store (``hitmusic mels``): ``--param mels=DIR`` names it (or ``--mels`` of train, tune and
evaluate), the table's rows are joined to their segment (``segment``: ``hl30`` or ``mid30``) by track id, and
tracks without one are left out. Settings (``--param K=V``): ``sampling`` (none = the rating-only CNN, naive,
ab, artist, ab+artist), ``w`` (weight of the ranking loss), ``margin`` (its hinge margin, in hit-score
units: popularity / 100), ``mu`` (weight of the tag branch; 0 turns it off), ``lr``, ``epochs``,
``patience``, ``batch_pairs``, ``channels``, ``fc``, ``dropout``, ``weight_decay``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hitmodels.config import TrainConfig
from hitmodels.families.base import Family, Fitted

from . import model as _model

# epochs and patience: train's and evaluate's --epochs and --patience (TrainConfig.mlp_epochs, .patience) unless
# --param sets them; the values here are those defaults, for the manual
DEFAULTS = {"mels": "", "segment": "hl30", "sampling": "ab", "w": 0.5, "margin": 0.05, "mu": 0.0, "lr": 1e-3,
            "epochs": TrainConfig.mlp_epochs, "patience": TrainConfig.patience, "batch_pairs": 16, "channels": 32,
            "fc": 64, "dropout": 0.1, "weight_decay": 1e-4}


def settings(cfg: TrainConfig) -> dict:
    """The family's settings of ``cfg``: its ``params`` over the defaults, epochs and patience from ``cfg``."""
    return {**DEFAULTS, "epochs": cfg.mlp_epochs, "patience": cfg.patience, **cfg.params}
# The tag branch's weight in the +tag variants of the evaluation (their mu; not given in the paper).
TAG_MU = 0.3


class SiameseFamily(Family):
    name = "siamese"
    label = "Siamese CNN (Yu et al. 2018)"
    input_kind = "mel"
    files = _model.FILES
    early_stops = True
    defaults = DEFAULTS
    registered_model = "siamese-cnn"

    def check(self, cfg: TrainConfig) -> None:
        from hitmodels.mel import SEGMENTS

        from .fit import SAMPLINGS

        super().check(cfg)
        p = settings(cfg)
        if p["sampling"] not in SAMPLINGS:
            raise ValueError(f"unknown sampling {p['sampling']!r}; choose from {', '.join(SAMPLINGS)}")
        if p["segment"] not in SEGMENTS:
            raise ValueError(f"unknown segment {p['segment']!r}; choose {' or '.join(SEGMENTS)}")
        if not 0 <= p["w"] <= 1 or not 0 <= p["mu"] < 1 or p["margin"] < 0:
            raise ValueError("siamese settings out of range: need 0 <= w <= 1, 0 <= mu < 1, margin >= 0")
        if p["epochs"] < 1 or p["patience"] < 1 or p["batch_pairs"] < 1 or p["lr"] <= 0:
            raise ValueError("siamese settings out of range: epochs, patience, batch_pairs >= 1 and lr > 0")

    def prepare(self, table: pd.DataFrame, cfg: TrainConfig) -> pd.DataFrame:
        from hitmodels.melstore import attach

        p = settings(cfg)
        if not p["mels"]:
            raise ValueError("the siamese family needs a mel store: make one with hitmusic mels MANIFEST DIR and "
                             "name it with --mels DIR (or --param mels=DIR)")
        return attach(table, p["mels"], p["segment"])

    def fit(self, fit_rows, val_rows, calib_rows, columns, cfg, log=False, on_epoch=None, parallel=None) -> Fitted:
        from dataclasses import replace

        from .fit import fit_siamese

        cfg = replace(cfg, params={**settings(cfg), "seed": cfg.seed})
        return fit_siamese(fit_rows, val_rows, calib_rows, columns, cfg, DEFAULTS, log, on_epoch, parallel)

    def variants(self, tags: bool = False) -> dict[str, dict]:
        """Yu et al.'s Table 1 rows on HL-30: rating-only CNN, naive, artist, A/B and A/B + artist sampling,
        and with ``tags`` each again with the tag branch (``mu`` :data:`TAG_MU`)."""
        plain = {"rating-only": {"sampling": "none"}, "naive": {"sampling": "naive"},
                 "artist": {"sampling": "artist"}, "ab": {"sampling": "ab"}, "ab+artist": {"sampling": "ab+artist"}}
        if not tags:
            return {k: {**v, "mu": 0.0} for k, v in plain.items()}
        return {**{k: {**v, "mu": 0.0} for k, v in plain.items()},
                **{f"{k}+tag": {**v, "mu": TAG_MU} for k, v in plain.items()}}

    # ---------------------------------------------------------------------------------------- tuning

    tune_metric = ("val_spearman", "max")

    def space(self, search: str) -> dict:
        """Sampling (A/B + artist is a fusion of two fitted samplers: evaluate compares it, Tune does not),
        ranking weight and margin, learning rate, tag weight and segment."""
        from ray import tune

        grid = {"sampling": ["none", "naive", "ab", "artist"], "w": [0.3, 0.7], "margin": [0.02, 0.1],
                "lr": [1e-3, 3e-4], "mu": [0.0, TAG_MU], "segment": ["hl30", "mid30"]}
        pick = tune.grid_search if search == "grid" else tune.choice
        return {k: pick(v) for k, v in grid.items()}

    def trial(self, config: dict) -> None:
        """One Ray Tune trial: the point fitted on the fit rows; after every epoch it reports ``val_spearman``
        and ``val_loss`` (MSE) on the validation rows of the epoch early stopping would keep so far (and
        ``epoch_val_spearman``, this epoch's), so ASHA can stop it early and the best trial is ranked on the
        weights it keeps."""
        from dataclasses import replace

        import mlflow
        from ray import tune

        from hitmodels.data import feature_columns

        # Tune's --epochs is every family's epoch budget (TrainConfig.mlp_epochs, which settings() reads)
        epochs = settings(self.configure(config, TrainConfig(**config["context"]["base"])))["epochs"]
        with self.trial_run(config, {"max_epochs": epochs}) as (cfg, table, s):
            kept = {"objective": float("inf")}

            def report(stage: str, epoch: int, entry: dict) -> None:
                # early stopping keeps the weights of the best validation objective: the trial is ranked on
                # that epoch's numbers, not on those of the last epoch it ran
                if entry.get("val_objective", float("inf")) < kept["objective"]:
                    kept.update(objective=entry["val_objective"], spearman=entry.get("val_spearman", 0.0),
                                mse=entry.get("val_mse", entry["loss"]))
                m = {"val_spearman": kept.get("spearman", 0.0), "val_loss": kept.get("mse", entry["loss"]),
                     "epoch_val_spearman": entry.get("val_spearman", 0.0), "train_loss": entry["loss"]}
                mlflow.log_metrics(m, step=epoch)
                tune.report({**m, "epoch": epoch})

            self.fit(s.fit, s.val, s.fit.iloc[:0], feature_columns(table), replace(cfg, threads=1), on_epoch=report)

    def network(self, model: _model.SiameseModel):
        return model.nets

    def retrain(self, table_path, cfg, storage, workers, name, use_gpu=False):
        """Ray Train, data-parallel with ``workers`` > 1 (each worker samples its pairs from its own shard of
        the fit rows; DDP averages the gradients), as HitMusicNet's retraining."""
        from hitmodels.ray_retrain import retrain_with_ray_train

        return retrain_with_ray_train(table_path, cfg, storage, workers, name, use_gpu)

    def save(self, model: _model.SiameseModel, directory: Path) -> list[str]:
        return _model.save_bundle(Path(directory), model)

    def load(self, directory: Path) -> _model.SiameseModel:
        return _model.load_bundle(Path(directory))

    def params(self, cfg: TrainConfig, n_fit: int | None = None) -> dict:
        return {f"params.{k}": v for k, v in settings(cfg).items()}

    def describe(self, cfg: TrainConfig) -> str:
        from hitmodels.ranking import describe_objective

        p = settings(cfg)
        tags = f", tag branch mu {p['mu']}" if p["mu"] > 0 else ""
        return f"{self.label} on {p['segment']} log-mel segments, {describe_objective(p)}{tags}"


FAMILY = SiameseFamily()
