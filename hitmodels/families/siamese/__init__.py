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

DEFAULTS = {"mels": "", "segment": "hl30", "sampling": "ab", "w": 0.5, "margin": 0.05, "mu": 0.0, "lr": 1e-3,
            "epochs": 60, "patience": 8, "batch_pairs": 16, "channels": 32, "fc": 64, "dropout": 0.1,
            "weight_decay": 1e-4}


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
        p = {**DEFAULTS, **cfg.params}
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

        p = {**DEFAULTS, **cfg.params}
        store = p["mels"] or table.attrs.get("mel_store", "")
        if not store:
            raise ValueError("the siamese family needs a mel store: make one with hitmusic mels MANIFEST DIR and "
                             "name it with --mels DIR (or --param mels=DIR)")
        return attach(table, store, p["segment"])

    def fit(self, fit_rows, val_rows, calib_rows, columns, cfg, log=False, on_epoch=None, parallel=None) -> Fitted:
        from dataclasses import replace

        from .fit import fit_siamese

        cfg = replace(cfg, params={**cfg.params, "seed": cfg.seed})
        return fit_siamese(fit_rows, val_rows, calib_rows, columns, cfg, {**DEFAULTS, "seed": 0}, log, on_epoch)

    def save(self, model: _model.SiameseModel, directory: Path) -> list[str]:
        return _model.save_bundle(Path(directory), model)

    def load(self, directory: Path) -> _model.SiameseModel:
        return _model.load_bundle(Path(directory))

    def params(self, cfg: TrainConfig, n_fit: int | None = None) -> dict:
        return {f"params.{k}": v for k, v in {**DEFAULTS, **cfg.params}.items()}

    def describe(self, cfg: TrainConfig) -> str:
        p = {**DEFAULTS, **cfg.params}
        objective = "rating only (MSE)" if p["sampling"] == "none" else \
            f"{p['sampling']} pairs, (1 - {p['w']}) MSE + {p['w']} hinge (margin {p['margin']})"
        tags = f", tag branch mu {p['mu']}" if p["mu"] > 0 else ""
        return f"{self.label} on {p['segment']} log-mel segments, {objective}{tags}"


FAMILY = SiameseFamily()
