"""Ray Tune over model variants, every trial an MLflow run, the best one retrained and registered.

    python -m pipelines.tune TABLE [--family hitmusicnet] [--search random --num-samples 8] [--epochs 30]
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 -- python -m pipelines.tune TABLE

How it works:

- A model *family* is a plug-in (:data:`FAMILIES`): its search space, its trial function and how its best
  configuration is retrained. ``hitmusicnet`` covers the paper's grid: code size δ, MusicPopNet's optimiser,
  initialiser and dropout. ``--search grid`` enumerates the grid, ``--search random`` samples
  ``--num-samples`` points of it.
- Each trial reports its validation loss after every MusicPopNet epoch; ASHA stops weak trials early.
  Selection uses validation only: the documented metric is ``val_loss``, the MSE of popularity / 100 on
  the validation rows (the loss early stopping also watches). Test rows are never seen by a trial.
- Every trial is an MLflow run nested under one parent run per tuning job, with its parameters, per-epoch
  losses, a learning-curve plot and the dataset fingerprint (hash of the model table + feature schema
  version): enough to reproduce it from the run alone.
- The best configuration is retrained on the whole training part with Ray Train (``TorchTrainer``):
  ``--train-workers N`` > 1 trains data-parallel with DDP (each worker fits its own equal share of the rows,
  gradients averaged over the workers; gloo on CPU, nccl when GPUs are used). It is then registered as a
  new version with signature, input example, held-out test metrics, conformal calibration and tags
  (fingerprint, git commit, configuration, workers).
- Resources per trial are configurable (``--cpus-per-trial 1 --gpus-per-trial 0.25``); without a GPU in
  the cluster the GPU request is dropped. A trial granted a GPU (fraction) trains on it (``TrainConfig.device``
  ``auto``: Ray makes the granted GPU the only one the trial sees). An interrupted job resumes from ``--storage``/``--name``:
  finished trials are not repeated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import pandas as pd

from hitmodels.cli import module_main
from hitmodels.config import TrainConfig, default_home
from hitmodels.config import tracking_uri as resolve_tracking_uri
from hitmodels.services import init_ray

# ---------------------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Family:
    """What Tune needs to know about a model family."""

    name: str
    space: Callable[[str], dict]  # search kind ("grid" or "random") -> Tune param space
    trial: Callable[[dict], None]  # one trial; reports val_loss per epoch through ray.tune.report
    config: Callable[[dict, TrainConfig], TrainConfig]  # trial config -> training config


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
    from hitmodels.train import dataset_fingerprint, fit_model, git_commit, score, split_rows

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
        val = score(truth, fitted.predict(s.val), tuple(fitted.meta.thresholds),
                    float(s.fit["popularity"].median()))
        mlflow.log_metrics({f"val_{k}": v for k, v in val.items()})


def close_stopped_trial_runs(client, experiment_id: str, parent_run_id: str, results) -> list[str]:
    """Close the trial runs Tune ended inside ``tune.report`` (``sys.exit`` or by killing the trial's actor),
    which MLflow would show RUNNING or FAILED although nothing went wrong: FINISHED if the trial had used its
    whole epoch budget (Tune ends every trial that way at ``max_t``), KILLED if ASHA stopped it earlier; tag
    ``tune_stopped_early`` says which. Runs of trials that raised keep FAILED. Returns the run ids closed."""
    by_dir = {Path(r.path).name: r for r in results if r.path}
    closed = []
    for run in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'"):
        trial = run.data.tags.get("tune_trial")
        if trial is None or run.info.status == "FINISHED":
            continue
        result = next((r for d, r in by_dir.items() if d.startswith(trial)), None)
        if result is None or result.error is not None:
            continue
        used = int((result.metrics or {}).get("epoch", -1)) + 1  # epochs are counted from 0
        early = used < int(run.data.params.get("max_epochs", used))
        client.set_tag(run.info.run_id, "tune_stopped_early", str(early).lower())
        client.set_terminated(run.info.run_id, status="KILLED" if early else "FINISHED")
        closed.append(run.info.run_id)
    return closed


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


FAMILIES: dict[str, Family] = {
    "hitmusicnet": Family("hitmusicnet", hitmusicnet_space, hitmusicnet_trial, hitmusicnet_config),
}

# ---------------------------------------------------------------------------------------- retraining


def retrain_rows(table: pd.DataFrame, cfg: TrainConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(fit, stop, calib)`` of the retraining: the trials' fit and validation rows together, a slice of
    them held back for early stopping, and the calibration rows. The test rows are not among them."""
    from hitmodels.train import split_rows, stratified_split

    s = split_rows(table, cfg)
    fit, stop = stratified_split(pd.concat([s.fit, s.val], ignore_index=True), 0.1, cfg.seed, cfg.strat_bins)
    return fit, stop, s.calib


def ray_parallel():
    """This Ray Train worker's :class:`~hitmodels.train.Parallel`: DDP through ``prepare_model`` over the
    process group Ray Train set up (gloo on CPU, nccl on GPUs)."""
    import ray.train
    import ray.train.torch

    from hitmodels.train import Parallel

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

    from hitmodels.data import feature_columns, training_rows
    from hitmodels.predict import save_bundle
    from hitmodels.train import fit_model

    cfg = TrainConfig(**config["cfg"])
    table = training_rows(pd.read_parquet(config["table"]))
    fit, stop, calib = retrain_rows(table, cfg)
    par = ray_parallel()
    fitted = fit_model(fit, stop, calib, feature_columns(table), cfg, parallel=par)
    mine = {"rank": par.rank, "shard_rows": len(fitted.shard),
            "shard_digest": rows_digest(fit["track_id"].iloc[fitted.shard]),
            "weights_checksum": weights_checksum(fitted.net)}
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
        save_bundle(Path(tmp), fitted.net, fitted.pre, fitted.meta)
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


def retrain_and_register(table_path: str, cfg: TrainConfig, tracking_uri: str, parent_run_id: str,
                         storage: Path, workers: int, extra_tags: dict[str, str], use_gpu: bool = False):
    """Retrain with Ray Train and register the result; returns the TrainResult."""
    from hitmodels.train import register_bundle

    result = retrain(table_path, cfg, storage, workers, f"retrain-{parent_run_id[:8]}", use_gpu)
    m = result.metrics
    if len({r["weights_checksum"] for r in m["ranks"]}) > 1:  # DDP broke: no worker's model saw all the rows
        raise RuntimeError(f"the {m['world_size']} retraining workers ended with different weights")
    tags = {**extra_tags, "train_workers": str(m["world_size"]), "train_device": m["device"],
            "train_shard_rows": ",".join(str(r["shard_rows"]) for r in m["ranks"])}
    with result.checkpoint.as_directory() as bundle:
        return register_bundle(Path(bundle), pd.read_parquet(table_path), cfg, tracking_uri,
                               parent_run_id=parent_run_id, tags=tags)

# ---------------------------------------------------------------------------------------- the job


def run(table: str | Path, family: str = "hitmusicnet", search: str = "random", num_samples: int = 8,
        epochs: int = 30, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, name: str = "tune",
        storage: str | Path | None = None, base: TrainConfig = TrainConfig(), tracking_uri: str | None = None,
        train_workers: int = 1, grace_period: int = 5):
    """Run (or resume) a tuning job; returns (ResultGrid, TrainResult of the registered best model)."""
    import mlflow
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from hitmodels.data import training_rows
    from hitmodels.train import dataset_fingerprint

    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
    fam = FAMILIES[family]
    init_ray()
    table = str(Path(table).resolve())
    storage = Path(storage or default_home() / "ray_results").resolve()
    tracking_uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    base = replace(base, ae_epochs=epochs, mlp_epochs=epochs)
    experiment = mlflow.set_experiment(f"{base.experiment}-tune")
    exp_dir = storage / name
    state_file = exp_dir / "hitmusic_tune.json"
    if state_file.exists():  # resuming: keep the parent run of the interrupted job
        state = json.loads(state_file.read_text())
        parent_run_id = state["parent_run_id"]
    else:
        parent = mlflow.MlflowClient().create_run(experiment.experiment_id, run_name=f"tune-{name}",
                                                  tags={"model_family": family, "tune_name": name})
        parent_run_id = parent.info.run_id
        exp_dir.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps({"parent_run_id": parent_run_id}))

    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus_per_trial and not gpus:
        print("tune: no GPU in the cluster; trials run on CPU only", file=sys.stderr)
        gpus_per_trial = 0.0
    # NCCL wants a GPU of its own per worker; short of that the retraining stays on CPU (gloo).
    retrain_gpu = bool(gpus_per_trial) and gpus >= train_workers
    if gpus_per_trial and not retrain_gpu:
        print(f"tune: {gpus:g} GPU(s) for {train_workers} retraining workers; retraining on CPU", file=sys.stderr)
    context = {"table": table, "tracking_uri": tracking_uri, "parent_run_id": parent_run_id,
               "experiment_id": experiment.experiment_id, "base": asdict(base)}
    trainable = tune.with_resources(fam.trial, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    if tune.Tuner.can_restore(str(exp_dir)):
        print(f"tune: resuming {exp_dir}", file=sys.stderr)
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True)
    else:
        scheduler = ASHAScheduler(max_t=epochs, grace_period=min(grace_period, epochs), reduction_factor=3)
        tuner = tune.Tuner(
            trainable,
            param_space={**fam.space(search), "context": context},
            tune_config=tune.TuneConfig(metric="val_loss", mode="min", scheduler=scheduler,
                                        num_samples=1 if search == "grid" else num_samples),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=1),
        )
    results = tuner.fit()
    best = results.get_best_result(metric="val_loss", mode="min")
    cfg = fam.config(best.config, base)
    client = mlflow.MlflowClient()
    close_stopped_trial_runs(client, experiment.experiment_id, parent_run_id, results)
    client.set_tag(parent_run_id, "best_config", cfg.name)
    client.log_metric(parent_run_id, "best_val_loss", float(best.metrics["val_loss"]))
    fingerprint = dataset_fingerprint(training_rows(pd.read_parquet(table)))
    registered = retrain_and_register(table, cfg, tracking_uri, parent_run_id, storage, train_workers,
                                      {"tune_name": name, "dataset_fingerprint": fingerprint}, retrain_gpu)
    client.set_terminated(parent_run_id)
    return results, registered


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", type=Path, help="model table (Parquet) from hitmusic build")
    p.add_argument("--family", choices=sorted(FAMILIES), default="hitmusicnet", help="model family to tune")
    p.add_argument("--search", choices=["grid", "random"], default="random",
                   help="grid: every point of the family's grid; random: --num-samples points (default)")
    p.add_argument("--num-samples", type=int, default=8, help="trials for random search (default 8)")
    p.add_argument("--epochs", type=int, default=30, help="maximum epochs per trial (ASHA's max_t, default 30)")
    p.add_argument("--grace-period", type=int, default=5, help="epochs before ASHA may stop a trial (default 5)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs per trial, fractions allowed (e.g. 0.25); ignored without a GPU (default 0)")
    p.add_argument("--train-workers", type=int, default=1,
                   help="Ray Train workers for the final retraining (default 1). N > 1 is data-parallel (DDP): "
                        "each worker trains on its own 1/N of the training rows and gradients are averaged "
                        "over the workers, gloo on CPU, nccl on GPUs (one GPU per worker, used when "
                        "--gpus-per-trial > 0 and the cluster has N GPUs; CPU otherwise)")
    p.add_argument("--name", default="tune", help="job name: MLflow parent run and resume directory")
    p.add_argument("--storage", type=Path, default=None, help="Tune storage (default $HITMUSIC_HOME/ray_results)")
    p.add_argument("--model-name", default=TrainConfig.model_name, help="registered model name")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--seed", type=int, default=TrainConfig.seed, help="seed of splits and initialisation")


def main_from_args(args: argparse.Namespace) -> int:
    base = TrainConfig(model_name=args.model_name, experiment=args.model_name, seed=args.seed)
    results, reg = run(args.table, args.family, args.search, args.num_samples, args.epochs, args.cpus_per_trial,
                       args.gpus_per_trial, args.name, args.storage, base, args.tracking_uri, args.train_workers,
                       args.grace_period)
    print(json.dumps({"trials": len(results), "model_name": reg.model_name, "version": reg.version,
                      "run_id": reg.run_id, **{k: round(v, 5) for k, v in reg.metrics.items()
                                               if k in ("test_mae", "test_mse", "test_r2", "test_spearman")}},
                     indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main(__doc__, "python -m pipelines.tune", add_arguments, main_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
