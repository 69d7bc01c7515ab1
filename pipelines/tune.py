"""Ray Tune over model variants, every trial an MLflow run, the best one retrained and registered.

    python -m pipelines.tune TABLE [--family hitmusicnet] [--search random --num-samples 8] [--epochs 30]
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 -- python -m pipelines.tune TABLE

How it works:

- ``--family`` names a model family (:mod:`hitmodels.families`): it brings its search space, its trial and
  how its best configuration is retrained. ``hitmusicnet`` covers the paper's grid: code size δ,
  MusicPopNet's optimiser, initialiser and dropout; ``hgb`` learning rate, leaves, leaf size and L2
  penalty; ``siamese`` pair sampling, the ranking weight w and margin m, learning rate, tag weight μ and
  segment (``--mels DIR`` names its mel store). ``--search grid`` enumerates the grid, ``--search random``
  samples ``--num-samples`` points of it.
- HitMusicNet's trials report their validation loss after every MusicPopNet epoch and ASHA stops weak ones
  early; a classical family's trial reports once. Selection uses validation only: the documented metric is
  ``val_loss``, the MSE of popularity / 100 on the validation rows (the Siamese family: ``val_spearman``,
  Spearman's rho between predicted and true popularity over all validation rows, higher is better, since its
  variants trade MSE for ranking). Test rows are never seen by a trial.
- Every trial is an MLflow run nested under one parent run per tuning job, with its parameters, per-epoch
  losses, a learning-curve plot and the dataset fingerprint (hash of the model table + feature schema
  version): enough to reproduce it from the run alone.
- The best configuration is retrained on the whole training part: HitMusicNet and the Siamese CNN with Ray Train
  (``TorchTrainer``; ``--train-workers N`` > 1 trains data-parallel with DDP, each worker fitting its own
  equal share of the rows, gradients averaged over the workers; gloo on CPU, nccl when GPUs are used), a
  classical family in one Ray task. It is then registered as a
  new version with signature, input example, held-out test metrics, conformal calibration and tags
  (fingerprint, git commit, configuration, workers).
- Resources per trial are configurable (``--cpus-per-trial 1 --gpus-per-trial 0.25``); without a GPU in
  the cluster the GPU request is dropped. A trial granted a GPU (fraction) trains on it (``TrainConfig.device``
  ``auto``: Ray makes the granted GPU the only one the trial sees). An interrupted job resumes from ``--storage``/``--name``:
  finished trials are not repeated.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pyarrow.fs as pafs

from hitmodels.entry import module_main
from hitmodels.config import TrainConfig, default_home
from hitmodels.config import tracking_uri as resolve_tracking_uri
from hitmodels.services import init_ray
from hitmodels.storage import exists, filesystem, location, read_parquet, read_text, write_text


def run_trial(config: dict) -> None:
    """Tune's trainable: the family named in the trial's context runs it."""
    from hitmodels import families

    families.get(config["context"]["family"]).trial(config)


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


def retrain_and_register(table_path: str, cfg: TrainConfig, tracking_uri: str, parent_run_id: str,
                         storage: str, workers: int, extra_tags: dict[str, str], use_gpu: bool = False):
    """Retrain the chosen configuration on the cluster (the family decides how: Ray Train for HitMusicNet, a
    Ray task for the classical families) and register the result; returns the TrainResult."""
    from hitmodels import families
    from hitmodels.data import training_rows
    from hitmodels.train import register_bundle, retrain_rows

    bundle, tags = families.get(cfg.family).retrain(table_path, cfg, storage, workers,
                                                    f"retrain-{parent_run_id[:8]}", use_gpu)
    table = read_parquet(table_path)
    fit, stop, calib = retrain_rows(families.get(cfg.family).prepare(training_rows(table), cfg), cfg)
    counts = {"train": len(fit), "val": len(stop), "calib": len(calib)}
    with bundle as directory:
        return register_bundle(Path(directory), table, cfg, tracking_uri, parent_run_id=parent_run_id,
                               tags={**extra_tags, **tags}, counts=counts)

STATE_FILE = "hitmusic_tune.json"  # in STORAGE/NAME: the job's parent run, settings and registered version
TUNE_PARENT_TAG = "tune_parent_run_id"  # on a version a tuning job registered: the job's parent run


def registered_by(client, cfg: TrainConfig, parent_run_id: str):
    """The TrainResult of the version the tuning job of ``parent_run_id`` registered, or None. A job that
    stopped between registering and recording it in its state file finds its version here on resume."""
    from hitmodels.train import TrainResult

    found = client.search_model_versions(f"name = '{cfg.model_name}' and tags.{TUNE_PARENT_TAG} = '{parent_run_id}'")
    if not found:
        return None
    version = max(found, key=lambda v: int(v.version))
    metrics = {k: v for k, v in client.get_run(version.run_id).data.metrics.items()
               if k.startswith("test_") or k == "conformal_halfwidth"}
    return TrainResult(version.run_id, cfg.model_name, str(version.version), metrics, cfg.family)

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

    from hitmodels import families

    fam = families.get(family)
    space = fam.space(search)  # before any work: a family with nothing to tune says so
    metric, mode = fam.tune_metric
    fam.check(replace(base, family=family))
    if fam.input_kind == "mel" and not base.params.get("mels"):
        raise ValueError(f"the {family} family trains on log-mel segments: name its mel store with --mels DIR "
                         "(hitmusic mels MANIFEST DIR makes one)")
    init_ray()
    table = location(table)
    storage = location(storage or default_home() / "ray_results")
    fs, root = filesystem(storage)
    tracking_uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    base = replace(base, ae_epochs=epochs, mlp_epochs=epochs)
    experiment = mlflow.set_experiment(f"{base.experiment}-tune")
    exp_dir = f"{root}/{name}"  # a path of fs: local, or bucket/prefix on S3
    state_file = f"{storage}/{name}/{STATE_FILE}"
    settings = job_settings(table, family=family, search=search, num_samples=num_samples, epochs=epochs,
                            grace_period=grace_period, cpus_per_trial=cpus_per_trial,
                            gpus_per_trial=gpus_per_trial, train_workers=train_workers, base=asdict(base))
    before = read_text(state_file)
    if before is not None:  # resuming: the same job, with the parent run of the interrupted one
        state = json.loads(before)
        check_resume(name, state.get("settings"), settings)
        parent_run_id = state["parent_run_id"]
    else:
        parent = mlflow.MlflowClient().create_run(experiment.experiment_id, run_name=f"tune-{name}",
                                                  tags={"model_family": family, "tune_name": name})
        parent_run_id = parent.info.run_id
        state = {"parent_run_id": parent_run_id, "settings": settings}
        write_text(state_file, json.dumps(state))

    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus_per_trial and not gpus:
        print("tune: no GPU in the cluster; trials run on CPU only", file=sys.stderr)
        gpus_per_trial = 0.0
    # NCCL wants a GPU of its own per worker; short of that the retraining stays on CPU (gloo).
    retrain_gpu = bool(gpus_per_trial) and gpus >= train_workers
    if gpus_per_trial and not retrain_gpu:
        print(f"tune: {gpus:g} GPU(s) for {train_workers} retraining workers; retraining on CPU", file=sys.stderr)
    base = replace(base, family=family)
    context = {"table": table, "tracking_uri": tracking_uri, "parent_run_id": parent_run_id,
               "experiment_id": experiment.experiment_id, "base": asdict(base), "family": family}
    trainable = tune.with_resources(run_trial, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    if state.get("registered"):  # a finished job run again: nothing to train, nothing new to register
        from hitmodels.train import TrainResult

        done = TrainResult(**state["registered"])
        print(f"tune: job {name} finished already: it registered {done.model_name} version {done.version}; "
              "nothing new is trained or registered (another --name starts a new job)", file=sys.stderr)
        return tune.Tuner.restore(exp_dir, trainable=trainable, storage_filesystem=fs).get_results(), done
    if tune.Tuner.can_restore(exp_dir, storage_filesystem=fs):
        print(f"tune: resuming {storage}/{name}", file=sys.stderr)
        tuner = tune.Tuner.restore(exp_dir, trainable=trainable, resume_errored=True, storage_filesystem=fs)
    else:
        scheduler = ASHAScheduler(max_t=epochs, grace_period=min(grace_period, epochs), reduction_factor=3)
        tuner = tune.Tuner(
            trainable,
            param_space={**space, "context": context},
            tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler,
                                        num_samples=1 if search == "grid" else num_samples),
            run_config=tune.RunConfig(name=name, storage_path=root, storage_filesystem=fs, verbose=1),
        )
    results = tuner.fit()
    best = results.get_best_result(metric=metric, mode=mode)
    cfg = fam.configure(best.config, base)
    client = mlflow.MlflowClient()
    close_stopped_trial_runs(client, experiment.experiment_id, parent_run_id, results)
    client.set_tag(parent_run_id, "best_config", cfg.name)
    client.log_metric(parent_run_id, f"best_{metric}", float(best.metrics[metric]))
    # the dataset fingerprint is register_bundle's, of the rows the family fitted on (a Siamese family leaves
    # out tracks without a segment)
    registered = registered_by(client, cfg, parent_run_id)
    if registered is not None:  # the job stopped after registering, before recording it: not a second version
        print(f"tune: job {name} registered {registered.model_name} version {registered.version} before it "
              "stopped; not registering again", file=sys.stderr)
    else:
        registered = retrain_and_register(table, cfg, tracking_uri, parent_run_id, storage, train_workers,
                                          {"tune_name": name, TUNE_PARENT_TAG: parent_run_id}, retrain_gpu)
    # replaced whole: a crash mid-write would otherwise lose the parent run's id too
    write_text(state_file, json.dumps({**state, "registered": asdict(registered)}))
    client.set_terminated(parent_run_id)
    return results, registered


def job_settings(table: str, **settings) -> dict:
    """What a tuning job is: its settings and its table's content (SHA-256 of its file(s)), as JSON stores
    them. A resume must match them (:func:`check_resume`)."""
    import hashlib

    fs, path = filesystem(table)
    digest = hashlib.sha256()
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        # a directory's data files only, as Arrow discovers them: not _lock, _staging/ or _quarantine/, whose
        # bytes change without the table changing
        found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        files = sorted(f.path for f in found if f.type == pafs.FileType.File and f.path.endswith(".parquet")
                       and not any(p.startswith(("_", ".")) for p in f.path[len(path):].strip("/").split("/")))
    else:
        files = [path] if exists(fs, path) else []
    for f in files:
        with fs.open_input_stream(f) as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return json.loads(json.dumps({**settings, "table": table, "table_sha256": digest.hexdigest()}))


def check_resume(name: str, before: dict | None, now: dict) -> None:
    """Refuse to resume tuning job ``name`` with other settings or another table than it was started with:
    its finished trials would then be ranked beside trials of another job, and the best retrained on data it
    was not chosen on."""
    if before is None:  # a job started before its settings were recorded
        raise ValueError(f"tuning job {name!r} was started by a version that did not record its settings: start "
                         "a new job (another --name)")
    changed = {k: (before.get(k), now.get(k)) for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)}
    if changed:
        shown = {k: ("(changed)" if k == "table_sha256" else v) for k, v in changed.items()}
        raise ValueError(f"tuning job {name!r} was started with other settings or another table {shown} (before, "
                         "now): resume it with the same ones, or start a new job with another --name")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", help="model table (Parquet) from hitmusic build: a local path or s3:// URI")
    p.add_argument("--family", default="hitmusicnet",
                   help="model family to tune: hitmusicnet (default) or hgb; any folder of hitmodels/families/ "
                        "with a search space")
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
    p.add_argument("--storage", default=None,
                   help="Tune storage, where trials' state and checkpoints go and an interrupted job resumes from: a "
                        "directory every node sees, or an s3:// URI (default $HITMUSIC_HOME/ray_results)")
    p.add_argument("--model-name", default=None,
                   help="registered model name (default: the family's: hitmusicnet, or siamese-cnn for siamese)")
    p.add_argument("--mels", default=None, help="mel store of a family on log-mel input (siamese)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a family setting every trial shares (e.g. siamese's channels=16); repeatable")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--seed", type=int, default=TrainConfig.seed, help="seed of splits and initialisation")


def main_from_args(args: argparse.Namespace) -> int:
    from hitmodels import families
    from pipelines.train import parse_params, store_uri

    fam = families.get(args.family)
    params = parse_params(args.param)
    if args.mels is not None:
        if fam.input_kind != "mel":
            raise ValueError(f"--mels: the {fam.name} family takes feature rows, not log-mel segments")
        params["mels"] = store_uri(args.mels)
    name = args.model_name or fam.registered_model
    base = TrainConfig(model_name=name, experiment=name, seed=args.seed, family=fam.name, params=params)
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
