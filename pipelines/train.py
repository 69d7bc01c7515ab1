"""Train a model family on a model table and register it in MLflow.

    python -m pipelines.train TABLE [--family hitmusicnet|lasso|hgb] [--config 1-A] [--epochs 100]
    python -m pipelines.train TABLE --family hgb --param learning_rate=0.05 --param max_leaf_nodes=15
    ray job submit --working-dir . -- python -m pipelines.train TABLE

``--family`` picks the model (a folder of ``hitmodels/families/``): ``hitmusicnet`` (default; the paper's
autoencoder + MLP), ``lasso`` (MLR + Lasso, with a logistic 3-class head) or ``hgb`` (HistGradientBoosting
regressor + classifier). Every family registers a version of the same registered model (``--model-name``),
with the same outputs, so any of them can become the champion. ``--param KEY=VALUE`` sets a family's own
settings (documented in its module, e.g. ``hgb``: learning_rate, max_iter, max_leaf_nodes,
min_samples_leaf, l2_regularization); the options below about networks are HitMusicNet's.

TABLE is the Parquet model table written by ``hitmusic build``. ``--config`` picks one of the paper's named
configurations (Table 2): the model number sets the autoencoder's code size δ (1: 1/5, 2: 1/4, 3: 1/7), the
letter MusicPopNet's optimiser and initialiser (A: Adadelta + Glorot uniform, B: Adam + Glorot uniform,
C: Adadelta + He normal, D: Adam + He normal, our reading of the authors' code). ``--delta``,
``--optimizer`` and ``--initialiser`` override single settings. Without ``--config`` the default is
``1-S``, our small-table variant of model 1 (standardised inputs, a sparse linear path beside MusicPopNet,
end-to-end fine-tuning with weight decay, early stopping on validation MAE; it sets its own dropout 0.1 and
patience 40, and up to 4x ``--epochs``): the paper's configurations answer close to the mean on tables of a
few hundred rows.

The run (parameters, per-epoch losses, test metrics, dataset fingerprint) is logged to
``$MLFLOW_TRACKING_URI`` and the model registered as a new version of ``--model-name``. The registered model
answers ``popularity`` (0-100), ``popularity_lower``/``popularity_upper`` (split conformal interval of
``--coverage``, calibrated on training rows held back from fitting), ``class`` (low/medium/high from the
3-class MusicPopNet) and ``p_low``, ``p_medium``, ``p_high``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from hitmodels.config import CONFIGS, TrainConfig, paper_config
from hitmodels import families
from hitmodels.train import train
from hitmodels.entry import module_main


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("table", type=Path, help="model table (Parquet) from hitmusic build")
    p.add_argument("--family", default=d.family, help=f"model family: {', '.join(families.names())} "
                                                       f"(default {d.family})")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a family setting (value parsed as JSON when it is JSON, e.g. 0.05 or true); repeatable")
    p.add_argument("--config", choices=CONFIGS, default=None,
                   help="a named configuration: the paper's 1-A ... 3-D, or 1-S, the small-table variant "
                        "(default: 1-S)")
    p.add_argument("--model-name", default=None,
                   help=f"registered model name (default: the family's, {d.model_name} for the families on "
                        "feature rows, siamese-cnn for the Siamese CNN)")
    p.add_argument("--mels", default=None,
                   help="mel store (hitmusic mels) of a family on log-mel input (--family siamese)")
    p.add_argument("--experiment", default=d.experiment, help=f"MLflow experiment (default {d.experiment})")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--delta", type=float, default=None, help="autoencoder code size / input size (overrides --config)")
    p.add_argument("--dropout", type=float, default=d.dropout, help=f"MLP dropout (default {d.dropout})")
    p.add_argument("--optimizer", default=None,
                   help="MusicPopNet's optimiser: sgd, adam, nadam or adadelta (overrides --config)")
    p.add_argument("--lr", type=float, default=None, help="MusicPopNet's learning rate (default: Keras' default "
                                                          "of the optimiser)")
    p.add_argument("--initialiser", default=None,
                   help="MusicPopNet's weight initialiser: glorot_uniform, glorot_normal, he_uniform or "
                        "he_normal (overrides --config)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"batch size (default {d.batch_size})")
    p.add_argument("--no-classifier", action="store_true",
                   help="skip the 3-class MusicPopNet (class then comes from the predicted popularity)")
    add_fit_arguments(p)


def add_fit_arguments(p: argparse.ArgumentParser, splits: tuple[str, ...] = ("stratified", "artist")) -> None:
    """Options of how every network is fitted, shared by ``train`` and ``evaluate``; see :func:`fit_settings`."""
    d = TrainConfig()
    p.add_argument("--epochs", type=int, default=d.mlp_epochs,
                   help=f"maximum epochs for the autoencoder and for each MLP (default {d.mlp_epochs})")
    p.add_argument("--patience", type=int, default=d.patience, help=f"early-stopping patience (default {d.patience})")
    p.add_argument("--class-scheme", choices=["fixed", "quartiles"], default=d.class_scheme,
                   help="classes by eq. (4) thresholds 25/65 (fixed, default) or training quartiles Q1/Q3")
    p.add_argument("--class-weight", choices=["none", "balanced"], default=d.class_weight,
                   help="3-class cross-entropy weights: none (default) or balanced (n / (3 * class count))")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device,
                   help="where the networks train: auto (default: CUDA when a GPU is visible), cpu or cuda")
    p.add_argument("--coverage", type=float, default=d.coverage,
                   help=f"target coverage of the conformal interval (default {d.coverage})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--split", choices=splits, default=d.split,
                   help="how rows are split: stratified on popularity (default), or by artist (no artist on "
                        "both sides of any cut; SPD's artist popularity is derived from its tracks' popularity, "
                        "so a stratified split lets artist identity leak into the test rows)"
                        + ("; both: one evaluation of each, reported side by side" if "both" in splits else ""))


def fit_settings(args: argparse.Namespace) -> dict:
    """The :class:`TrainConfig` fields set by :func:`add_fit_arguments`."""
    return {"ae_epochs": args.epochs, "mlp_epochs": args.epochs, "patience": args.patience,
            "class_scheme": args.class_scheme, "class_weight": args.class_weight, "device": args.device,
            "coverage": args.coverage, "seed": args.seed, "split": args.split}


def store_uri(text: str) -> str:
    """A store named on the command line: an ``s3://`` URI as given, a local path made absolute (trials and
    retraining tasks run in other working directories)."""
    return text if text.startswith("s3://") else str(Path(text).resolve())


def parse_params(items: list[str]) -> dict:
    """``KEY=VALUE`` strings as a dict; values that parse as JSON are taken as such, others as text."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {item!r}: expected KEY=VALUE")
        try:
            params[key.strip()] = json.loads(value)
        except ValueError:
            params[key.strip()] = value
    return params


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    family = getattr(args, "family", TrainConfig.family)
    fam = families.get(family)
    params = parse_params(getattr(args, "param", []))
    if getattr(args, "mels", None) is not None:
        if fam.input_kind != "mel":
            raise ValueError(f"--mels: the {family} family takes feature rows, not log-mel segments")
        params["mels"] = store_uri(args.mels)
    cfg = TrainConfig(dropout=args.dropout, batch_size=args.batch_size, lr=args.lr, classifier=not args.no_classifier,
                      model_name=args.model_name or fam.registered_model, experiment=args.experiment, family=family,
                      params=params,
                      name=family if family != "hitmusicnet" else TrainConfig.name, **fit_settings(args))
    network_options = {"--config": args.config, "--delta": args.delta, "--optimizer": args.optimizer,
                       "--initialiser": args.initialiser, "--lr": args.lr}
    given = [k for k, v in network_options.items() if v is not None]
    if family != "hitmusicnet" and given:
        raise ValueError(f"{', '.join(given)}: HitMusicNet's option(s), not the {family} family's "
                         "(its settings are --param KEY=VALUE)")
    if args.config:
        cfg = paper_config(args.config, cfg)
    else:  # the family's own default (HitMusicNet: the small-table variant 1-S)
        cfg = families.get(family).default_config(cfg)
    overrides = {k: v for k, v in {"delta": args.delta, "optimizer": args.optimizer,
                                   "initialiser": args.initialiser}.items() if v is not None}
    return replace(cfg, **overrides, name=f"{cfg.name}+custom") if overrides else cfg


def main_from_args(args: argparse.Namespace) -> int:
    # MLflow prints its registration messages on stdout: stdout is kept for the JSON result alone
    with contextlib.redirect_stdout(sys.stderr):
        result = train(pd.read_parquet(args.table), config_from_args(args), args.tracking_uri)
    print(json.dumps({"run_id": result.run_id, "model_name": result.model_name, "version": result.version,
                      "family": result.family,
                      **{k: round(v, 5) for k, v in result.metrics.items()}}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main(__doc__, "python -m pipelines.train", add_arguments, main_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
