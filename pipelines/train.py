"""Train HitMusicNet on a model table and register it in MLflow.

    python -m pipelines.train TABLE [--epochs 100] [--delta 0.2] [--optimizer adam]
    ray job submit --working-dir . -- python -m pipelines.train TABLE

TABLE is the Parquet model table written by ``hitmusic build``. The run (parameters, per-epoch losses, test
metrics, dataset fingerprint) is logged to ``$MLFLOW_TRACKING_URI`` and the model registered as a new
version of ``--model-name``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from hitmodels.config import TrainConfig
from hitmodels.models import INITIALISERS
from hitmodels.train import OPTIMISERS, train
from hitmodels.cli import module_main


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("table", type=Path, help="model table (Parquet) from hitmusic build")
    p.add_argument("--model-name", default=d.model_name, help=f"registered model name (default {d.model_name})")
    p.add_argument("--experiment", default=d.experiment, help=f"MLflow experiment (default {d.experiment})")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--epochs", type=int, default=d.mlp_epochs,
                   help=f"maximum epochs for the autoencoder and for the MLP (default {d.mlp_epochs})")
    p.add_argument("--patience", type=int, default=d.patience, help=f"early-stopping patience (default {d.patience})")
    p.add_argument("--delta", type=float, default=d.delta, help="autoencoder code size / input size (default 0.2)")
    p.add_argument("--dropout", type=float, default=d.dropout, help=f"MLP dropout (default {d.dropout})")
    p.add_argument("--optimizer", choices=sorted(OPTIMISERS), default=d.optimizer, help="optimiser (default adam)")
    p.add_argument("--initialiser", choices=sorted(INITIALISERS), default="glorot_uniform",
                   help="weight initialiser (default glorot_uniform)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"batch size (default {d.batch_size})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(delta=args.delta, dropout=args.dropout, batch_size=args.batch_size, ae_epochs=args.epochs,
                       mlp_epochs=args.epochs, patience=args.patience, optimizer=args.optimizer, seed=args.seed,
                       model_name=args.model_name, experiment=args.experiment)


def main_from_args(args: argparse.Namespace) -> int:
    result = train(pd.read_parquet(args.table), config_from_args(args), args.tracking_uri, args.initialiser)
    print(json.dumps({"run_id": result.run_id, "model_name": result.model_name, "version": result.version,
                      **{k: round(v, 5) for k, v in result.metrics.items()}}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main(__doc__, "python -m pipelines.train", add_arguments, main_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
