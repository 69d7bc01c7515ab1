"""Tuning HitMusicNet with Ray Tune, and retraining the chosen configuration with Ray Train.

The search space is the paper's grid (code size δ, MusicPopNet's optimiser, initialiser and dropout). A
trial fits on the split's fit rows and reports its validation loss after every MusicPopNet epoch, so ASHA
can stop weak trials early. The retraining runs on ``workers`` Ray Train workers (``TorchTrainer``);
N > 1 is data-parallel with DDP (each worker fits its own equal share of the rows, gradients averaged).
"""

from __future__ import annotations

from dataclasses import asdict, replace

from hitmodels.config import TrainConfig, tracking_uri


def hitmusicnet_space(search: str) -> dict:
    from ray import tune

    grid = {"delta": [1 / 4, 1 / 5, 1 / 7], "optimizer": ["sgd", "adam", "adadelta", "nadam"],
            "initialiser": ["glorot_normal", "glorot_uniform", "he_normal", "he_uniform"],
            "dropout": [0.25, 0.5, 0.75]}
    pick = tune.grid_search if search == "grid" else tune.choice
    return {k: pick(v) for k, v in grid.items()}


def hitmusicnet_config(trial: dict, base: TrainConfig) -> TrainConfig:
    return replace(base, delta=float(trial["delta"]), optimizer=trial["optimizer"],
                   initialiser=trial["initialiser"], dropout=float(trial["dropout"]),
                   name=f"d{trial['delta']:.3f}-{trial['optimizer']}-{trial['initialiser']}-p{trial['dropout']}")


def hitmusicnet_trial(config: dict) -> None:
    """One Tune trial: fit on the training rows, early-stop and report on the validation rows."""
    import mlflow
    from ray import tune

    from hitmodels.data import feature_columns, training_rows
    from hitmodels.storage import read_parquet
    from hitmodels.train import dataset_fingerprint, git_commit, score, split_rows

    from .fit import fit_model

    ctx = config["context"]
    cfg = hitmusicnet_config(config, TrainConfig(**ctx["base"]))
    table = training_rows(read_parquet(ctx["table"]))
    s = split_rows(table, cfg)
    columns = feature_columns(table)
    mlflow.set_tracking_uri(tracking_uri(ctx["tracking_uri"]))  # bounds this worker's waits on the server too
    trial_name = tune.get_context().get_trial_name()

    history: dict[str, list[dict]] = {}

    def report(stage: str, epoch: int, row: dict) -> None:
        history.setdefault(stage, []).append(row)
        if stage != "pop":
            return
        # ASHA may stop the trial inside tune.report, and nothing after it would run: the MLflow run gets
        # its metric and learning curve now, every epoch.
        best = min(r["val_loss"] for r in history["pop"])
        mlflow.log_metric("val_loss", best, step=epoch)
        mlflow.log_figure(learning_curve_figure(history, cfg.name), "learning_curve.png")
        tune.report({"val_loss": best, "train_loss": row["train_loss"], "epoch": epoch})

    with mlflow.start_run(experiment_id=ctx["experiment_id"], run_name=trial_name,
                          parent_run_id=ctx["parent_run_id"]):
        # every setting of the trial's TrainConfig, so that the run alone reproduces it
        settings = {f"train.{k}": v for k, v in asdict(cfg).items()}
        mlflow.log_params({**{k: v for k, v in config.items() if k != "context"}, "config": cfg.name,
                           "family": "hitmusicnet", "max_epochs": cfg.mlp_epochs, "seed": cfg.seed, **settings})
        mlflow.set_tags({"dataset_fingerprint": dataset_fingerprint(table), "model_family": "hitmusicnet",
                         "tune_trial": trial_name, "git_commit": git_commit()})
        fitted = fit_model(s.fit, s.val, s.fit.iloc[:0], columns, cfg, log=True, on_epoch=report)
        # reached only when early stopping ended the trial before ASHA did
        truth = s.val["popularity"].to_numpy(float)
        val = score(truth, fitted.predict(s.val), tuple(fitted.model.thresholds),
                    float(s.fit["popularity"].median()))
        mlflow.log_metrics({f"val_{k}": v for k, v in val.items()})


def learning_curve_figure(history: dict[str, list[dict]], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(history), figsize=(4 * len(history), 3), squeeze=False)
    for ax, (stage, rows) in zip(axes[0], history.items()):
        ax.plot([r["train_loss"] for r in rows], label="train")
        ax.plot([r["val_loss"] for r in rows], label="validation")
        ax.set_title(f"{stage}: {title}", fontsize=8)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig


# the Ray Train retraining is every torch family's (hitmodels/ray_retrain.py); these names stay importable here
from hitmodels.ray_retrain import (ray_parallel, retrain, retrain_loop, retrain_with_ray_train,  # noqa: E402,F401
                                   rows_digest, weights_checksum)
