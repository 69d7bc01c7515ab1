"""Train HitMusicNet on a model table and register it in MLflow.

    python -m pipelines.train TABLE [--config 1-A] [--epochs 100] [--class-scheme fixed]
    ray job submit --working-dir . -- python -m pipelines.train TABLE

TABLE is the Parquet model table written by ``hitmusic build``. ``--config`` picks one of the paper's named
configurations (Table 2): the model number sets the autoencoder's code size δ (1: 1/5, 2: 1/4, 3: 1/7), the
letter MusicPopNet's optimiser and initialiser (A: Adadelta + Glorot uniform, B: Adam + Glorot uniform,
C: Adadelta + He normal, D: Adam + He normal, our reading of the authors' code). ``--delta``,
``--optimizer`` and ``--initialiser`` override single settings. Without ``--config`` the default is δ 1/5
with Adam + Glorot uniform (configuration 1-B): Adadelta (A, C) learns slowly on small tables.

The run (parameters, per-epoch losses, test metrics, dataset fingerprint) is logged to
``$MLFLOW_TRACKING_URI`` and the model registered as a new version of ``--model-name``. The registered model
answers ``popularity`` (0-100), ``popularity_lower``/``popularity_upper`` (split conformal interval of
``--coverage``, calibrated on training rows held back from fitting), ``class`` (low/medium/high from the
3-class MusicPopNet) and ``p_low``, ``p_medium``, ``p_high``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from hitmodels.config import PAPER_CONFIGS, TrainConfig, paper_config
from hitmodels.models import INITIALISERS
from hitmodels.train import OPTIMISERS, train
from hitmodels.cli import module_main


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("table", type=Path, help="model table (Parquet) from hitmusic build")
    p.add_argument("--config", choices=PAPER_CONFIGS, default=None,
                   help="the paper's named configuration (default: δ 1/5, Adam, Glorot uniform = 1-B)")
    p.add_argument("--model-name", default=d.model_name, help=f"registered model name (default {d.model_name})")
    p.add_argument("--experiment", default=d.experiment, help=f"MLflow experiment (default {d.experiment})")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--delta", type=float, default=None, help="autoencoder code size / input size (overrides --config)")
    p.add_argument("--dropout", type=float, default=d.dropout, help=f"MLP dropout (default {d.dropout})")
    p.add_argument("--optimizer", choices=sorted(OPTIMISERS), default=None,
                   help="MusicPopNet's optimiser (overrides --config)")
    p.add_argument("--lr", type=float, default=None, help="MusicPopNet's learning rate (default: Keras' default "
                                                          "of the optimiser)")
    p.add_argument("--initialiser", choices=sorted(INITIALISERS), default=None,
                   help="MusicPopNet's weight initialiser (overrides --config)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"batch size (default {d.batch_size})")
    p.add_argument("--no-classifier", action="store_true",
                   help="skip the 3-class MusicPopNet (class then comes from the predicted popularity)")
    add_fit_arguments(p)


def add_fit_arguments(p: argparse.ArgumentParser) -> None:
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


def fit_settings(args: argparse.Namespace) -> dict:
    """The :class:`TrainConfig` fields set by :func:`add_fit_arguments`."""
    return {"ae_epochs": args.epochs, "mlp_epochs": args.epochs, "patience": args.patience,
            "class_scheme": args.class_scheme, "class_weight": args.class_weight, "device": args.device,
            "coverage": args.coverage, "seed": args.seed}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig(dropout=args.dropout, batch_size=args.batch_size, lr=args.lr, classifier=not args.no_classifier,
                      model_name=args.model_name, experiment=args.experiment, **fit_settings(args))
    if args.config:
        cfg = paper_config(args.config, cfg)
    overrides = {k: v for k, v in {"delta": args.delta, "optimizer": args.optimizer,
                                   "initialiser": args.initialiser}.items() if v is not None}
    return replace(cfg, **overrides, name=f"{cfg.name}+custom") if overrides else cfg


def main_from_args(args: argparse.Namespace) -> int:
    result = train(pd.read_parquet(args.table), config_from_args(args), args.tracking_uri)
    print(json.dumps({"run_id": result.run_id, "model_name": result.model_name, "version": result.version,
                      **{k: round(v, 5) for k, v in result.metrics.items()}}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main(__doc__, "python -m pipelines.train", add_arguments, main_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
