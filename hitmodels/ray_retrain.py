"""Retraining a torch family's chosen configuration with Ray Train (``TorchTrainer``): one worker, or several
data-parallel with DDP (each worker fits its own equal shard of the fit rows, gradients averaged over the
workers; gloo on CPU, nccl on GPUs). The family fits as it always does, given this worker's
:class:`~hitmodels.devices.Parallel`; rank 0 hands the bundle back as the checkpoint. Every rank reports its
shard's size and digest and a checksum of its final weights, and the driver refuses a retraining whose workers
ended with different weights (DDP broken: no worker's model saw all the rows)."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import asdict
from pathlib import Path

from .config import TrainConfig


def ray_parallel():
    """This Ray Train worker's :class:`~hitmodels.devices.Parallel`: DDP through ``prepare_model`` over the
    process group Ray Train set up (gloo on CPU, nccl on GPUs)."""
    import ray.train
    import ray.train.torch

    from .devices import Parallel

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
    """Ray Train worker: fit the configuration on the whole training part (:func:`hitmodels.train.retrain_rows`
    of the family's prepared rows) with this worker's share; rank 0 reports the bundle as a checkpoint. Test
    rows stay untouched until the driver registers the model."""
    import ray.train
    import torch.distributed as dist

    from . import families
    from .bundle import feature_config_of, write_bundle
    from .data import feature_columns, training_rows
    from .storage import read_parquet
    from .train import retrain_rows

    cfg = TrainConfig(**config["cfg"])
    fam = families.get(cfg.family)
    raw = read_parquet(config["table"])
    table = fam.prepare(training_rows(raw), cfg)
    fit, stop, calib = retrain_rows(table, cfg)
    par = ray_parallel()
    fitted = fam.fit(fit, stop, calib, feature_columns(table), cfg, parallel=par)
    mine = {"rank": par.rank, "shard_rows": len(fitted.shard),
            "shard_digest": rows_digest(fit["track_id"].iloc[fitted.shard]),
            "weights_checksum": weights_checksum(fam.network(fitted.model))}
    ranks = [mine] * par.world_size
    if par.world_size > 1:
        dist.all_gather_object(ranks, mine)
    metrics = {"world_size": par.world_size, "device": str(par.device), "fit_seconds": fitted.seconds,
               "ranks": ranks}
    # Every worker must call report (it is a barrier in Ray Train V2); only rank 0's metrics are kept, and
    # its checkpoint alone is the bundle (the others' files would be merged into the same directory).
    if par.rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        write_bundle(Path(tmp), fitted.model, feature_config_of(raw))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def retrain(table_path: str, cfg: TrainConfig, storage: str, workers: int, name: str, use_gpu: bool = False):
    """Run :func:`retrain_loop` on ``workers`` Ray Train workers (one GPU each with ``use_gpu``); returns
    Ray Train's Result (checkpoint: the bundle; metrics: rank 0's report). ``storage``: a local directory
    or ``s3://`` URI (:func:`hitmodels.storage.filesystem`)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .storage import filesystem

    fs, path = filesystem(storage)
    trainer = TorchTrainer(retrain_loop, train_loop_config={"cfg": asdict(cfg), "table": table_path},
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
                           run_config=RunConfig(name=name, storage_path=path, storage_filesystem=fs))
    return trainer.fit()


def retrain_with_ray_train(table_path: str, cfg: TrainConfig, storage: str, workers: int, name: str,
                           use_gpu: bool = False):
    """:func:`retrain`, checked (every worker must end with the same weights), as a family's ``retrain``: a
    context manager giving the bundle directory, and the version's tags."""
    result = retrain(table_path, cfg, storage, workers, name, use_gpu)
    m = result.metrics
    if len({r["weights_checksum"] for r in m["ranks"]}) > 1:
        raise RuntimeError(f"the {m['world_size']} retraining workers ended with different weights")
    tags = {"train_workers": str(m["world_size"]), "train_device": m["device"],
            "train_shard_rows": ",".join(str(r["shard_rows"]) for r in m["ranks"])}
    return result.checkpoint.as_directory(), tags
