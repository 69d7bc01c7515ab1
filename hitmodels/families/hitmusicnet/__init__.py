"""HitMusicNet (Martín-Gutiérrez et al., IEEE Access 2020): MusicAENet compresses the feature row, MusicPopNet
predicts popularity (and, with ``TrainConfig.classifier``, the three classes) from the code.

- :mod:`.network`: the networks; :mod:`.fit`: fitting (early stopping, data-parallel);
- :mod:`.model`: the registered model and its bundle; :mod:`.tune`: Ray Tune space, trials and Ray Train
  retraining.

The configuration is :class:`~hitmodels.config.TrainConfig`'s own fields (δ, optimiser, initialiser, ...).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from hitmodels.config import TrainConfig
from hitmodels.families.base import Family, Fitted

from . import model as _model


class HitMusicNetFamily(Family):
    name = "hitmusicnet"
    label = "HitMusicNet"
    files = _model.FILES
    early_stops = True

    def default_config(self, base: TrainConfig) -> TrainConfig:
        """The small-table variant 1-S: on generated tables of 200, 1,000 and 5,000 rows it was far better than
        the paper's configurations at 200 and 1,000 and close to 1-B at 5,000 (README, "Model")."""
        from hitmodels.config import small_table_config

        return small_table_config(base)

    def check(self, cfg: TrainConfig) -> None:
        from hitmodels.predict import class_thresholds

        from .fit import OPTIMISERS, class_loss_weights
        from .network import INITIALISERS

        if cfg.params:
            raise ValueError(f"the hitmusicnet family takes no --param settings (got {sorted(cfg.params)}); its "
                             "settings are train's own options (--delta, --optimizer, ...)")
        for what, value, known in (("optimiser", cfg.optimizer, OPTIMISERS), ("optimiser", cfg.ae_optimizer, OPTIMISERS),
                                   ("initialiser", cfg.initialiser, INITIALISERS)):
            if value not in known:
                raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(sorted(known))}")
        class_loss_weights(np.zeros(1, int), cfg.class_weight)
        if cfg.skip_linear and not cfg.end_to_end:
            raise ValueError("skip_linear needs end_to_end: the linear path is trained with the encoder")
        if cfg.skip_init not in ("zero", "lasso"):
            raise ValueError(f"unknown skip_init {cfg.skip_init!r}; choose 'zero' or 'lasso'")
        class_thresholds(cfg.class_scheme, np.array([50.0]))

    def fit(self, fit_rows, val_rows, calib_rows, columns, cfg, log=False, on_epoch=None, parallel=None) -> Fitted:
        from .fit import fit_model

        return fit_model(fit_rows, val_rows, calib_rows, columns, cfg, log=log, on_epoch=on_epoch, parallel=parallel)

    def save(self, model: _model.HitMusicPyfunc, directory: Path) -> list[str]:
        return _model.save_bundle(Path(directory), model.net, model.pre, model.meta)

    def network(self, model: _model.HitMusicPyfunc):
        return model.net

    def load(self, directory: Path) -> _model.HitMusicPyfunc:
        return _model.HitMusicPyfunc(*_model.load_bundle(Path(directory)))

    def params(self, cfg: TrainConfig, n_fit: int | None = None) -> dict:
        from .fit import effective_batch_size

        return {**{k: v for k, v in asdict(cfg).items() if k not in ("family", "params")},
                **({"effective_batch_size": effective_batch_size(cfg.batch_size, n_fit)} if n_fit else {})}

    def describe(self, cfg: TrainConfig) -> str:
        extra = (f"; small-table variant: standardised inputs, linear path ({cfg.skip_init} start, L1 "
                 f"{cfg.skip_l1}), end-to-end fine-tuning, weight decay {cfg.weight_decay}") if cfg.end_to_end else ""
        return (f"HitMusicNet {cfg.name} (code δ {cfg.delta:.3f}, MusicPopNet {cfg.optimizer} + "
                f"{cfg.initialiser}, dropout {cfg.dropout}{extra})")

    def space(self, search: str) -> dict:
        from .tune import hitmusicnet_space

        return hitmusicnet_space(search)

    def configure(self, trial: dict, base: TrainConfig) -> TrainConfig:
        from .tune import hitmusicnet_config

        return hitmusicnet_config(trial, base)

    def trial(self, config: dict) -> None:
        from .tune import hitmusicnet_trial

        hitmusicnet_trial(config)

    def retrain(self, table_path, cfg, storage, workers, name, use_gpu=False):
        from hitmodels.ray_retrain import retrain_with_ray_train

        return retrain_with_ray_train(table_path, cfg, storage, workers, name, use_gpu)


FAMILY = HitMusicNetFamily()
