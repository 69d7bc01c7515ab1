"""Tuning HitMusicNet with Ray Tune, and retraining the chosen configuration with Ray Train.

The search space is the paper's grid (code size δ, MusicPopNet's optimiser, initialiser and dropout). A
trial fits on the split's fit rows and reports its validation loss after every MusicPopNet epoch, so ASHA
can stop weak trials early. The retraining runs on ``workers`` Ray Train workers (``TorchTrainer``);
N > 1 is data-parallel with DDP (each worker fits its own equal share of the rows, gradients averaged).
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from hitmodels.config import TrainConfig

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
    from hitmodels.train import dataset_fingerprint, git_commit, score, split_rows

    from .fit import fit_model

    ctx = config["context"]
    cfg = hitmusicnet_config(config, TrainConfig(**ctx["base"]))
    table = training_rows(pd.read_parquet(ctx["table"]))
    s = split_rows(table, cfg)
    columns = feature_columns(table)
    mlflow.set_tracking_uri(ctx["tracking_uri"])
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


def ray_parallel():
    """This Ray Train worker's :class:`~hitmodels.train.Parallel`: DDP through ``prepare_model`` over the
    process group Ray Train set up (gloo on CPU, nccl on GPUs)."""
    import ray.train
    import ray.train.torch

    from .fit import Parallel

    ctx = ray.train.get_context()
    return Parallel(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.prepare_model,
                    ray.train.torch.get_device())


def weights_checksum(net) -> str:
    h = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def rows_digest(track_ids) -> str:
    return hashlib.sha256("\n".join(sorted(map(str, track_ids))).encode()).hexdigest()


def retrain_loop(config: dict) -> None:
    """Ray Train worker: fit the chosen configuration on the whole training part (:func:`retrain_rows`),
    data-parallel over the workers (each trains on its shard of the fit rows, DDP averages gradients), and
    hand the bundle back as a checkpoint from rank 0. Test rows stay untouched until the driver registers
    the model. The metrics carry, per rank, its shard's size and digest and a checksum of its final weights."""
    import ray.train
    import torch.distributed as dist

    from hitmodels.bundle import feature_config_of, write_bundle
    from hitmodels.data import feature_columns, training_rows
    from hitmodels.train import retrain_rows

    from .fit import fit_model

    cfg = TrainConfig(**config["cfg"])
    raw = pd.read_parquet(config["table"])
    table = training_rows(raw)
    fit, stop, calib = retrain_rows(table, cfg)
    par = ray_parallel()
    fitted = fit_model(fit, stop, calib, feature_columns(table), cfg, parallel=par)
    mine = {"rank": par.rank, "shard_rows": len(fitted.shard),
            "shard_digest": rows_digest(fit["track_id"].iloc[fitted.shard]),
            "weights_checksum": weights_checksum(fitted.model.net)}
    ranks = [mine] * par.world_size
    if par.world_size > 1:
        dist.all_gather_object(ranks, mine)
    metrics = {"val_loss": min(r["val_loss"] for r in fitted.history["pop"]), "world_size": par.world_size,
               "device": str(par.device), "fit_seconds": fitted.seconds, "ranks": ranks}
    # Every worker must call report (it is a barrier in Ray Train V2); only rank 0's metrics are kept, and
    # its checkpoint alone is the bundle (the others' files would be merged into the same directory).
    if par.rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        write_bundle(Path(tmp), fitted.model, feature_config_of(raw))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def retrain(table_path: str, cfg: TrainConfig, storage: Path, workers: int, name: str, use_gpu: bool = False):
    """Run :func:`retrain_loop` on ``workers`` Ray Train workers (one GPU each with ``use_gpu``); returns
    Ray Train's Result (checkpoint: the bundle; metrics: rank 0's report)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(retrain_loop, train_loop_config={"cfg": asdict(cfg), "table": table_path},
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
                           run_config=RunConfig(name=name, storage_path=str(storage)))
    return trainer.fit()


def retrain_with_ray_train(table_path: str, cfg: TrainConfig, storage: Path, workers: int, name: str,
                           use_gpu: bool = False):
    """:func:`retrain`, checked (every worker must end with the same weights), as the family's ``retrain``:
    a context manager giving the bundle directory, and the version's tags."""
    result = retrain(table_path, cfg, storage, workers, name, use_gpu)
    m = result.metrics
    if len({r["weights_checksum"] for r in m["ranks"]}) > 1:  # DDP broke: no worker's model saw all the rows
        raise RuntimeError(f"the {m['world_size']} retraining workers ended with different weights")
    tags = {"train_workers": str(m["world_size"]), "train_device": m["device"],
            "train_shard_rows": ",".join(str(r["shard_rows"]) for r in m["ranks"])}
    return result.checkpoint.as_directory(), tags
