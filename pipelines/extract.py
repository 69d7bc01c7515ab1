"""Ray Data job: one Parquet row of features per track of a manifest.

    python -m pipelines.extract MANIFEST OUT_DIR            # or: hitmusic extract ...
    ray job submit --working-dir . -- python -m pipelines.extract MANIFEST OUT_DIR

Input is a manifest (Parquet or CSV with ``track_id``, ``audio_uri``, optional ``lyrics``) or an SPD
directory. Audio URIs may be local paths, ``file://``, ``s3://`` or ``http(s)://``. Bad previews never stop
the job: their rows carry an ``error`` and null features (rows in = rows out), and a count per reason is
printed at the end. Re-running into the same OUT_DIR skips tracks already there, so the job resumes. One run
writes into an OUT_DIR at a time (a second one stops at once, naming the first), and each part appears whole
or not at all (:mod:`hitmodels.outdir`); an unreadable part (from versions that wrote in place) is moved to
``OUT_DIR/_quarantine/`` and its tracks are done again.

Where the Ray cluster has GPUs (``--device auto``, the default) the audio features are computed by the batched
PyTorch extractor (:mod:`hitmodels.audio_torch`) in a pool of GPU actors: CPU tasks first fetch, decode and
check each preview and compute its lyric features (so bad input gives exactly the CPU path's rows and
reasons), then each actor computes the audio features of a batch of clips at once. ``--device cpu`` keeps
the per-clip NumPy path everywhere; ``--device torch`` forces the torch path, on a CPU actor where there is no
GPU (for testing it). Where torch on the GPU workers cannot use CUDA (the CPU build of torch that
constraints.txt pins), ``auto`` says so and keeps the CPU path.

``--tags`` adds the 50 ``tag_<label>`` activations of the pretrained MagnaTagATune tagger (musicnn's
MTT_musicnn in PyTorch, :mod:`hitmodels.tagger`), from each clip resampled to 16 kHz from its native rate:
on the CPU path once per task over the task's clips, on the torch path in the actors, on their GPU. A clip
the tagger fails on gets an ``internal: tagger: ...`` error, like any other row; the setting is recorded in
``_feature_config.json``, so a table never mixes rows with and without tags.

Every audio URI is checked against an input policy first (``--allow-root``, ``--allow-bucket``,
``--allow-host``; by default only the manifest's directory and ``$HITMUSIC_HOME``), and reads, decoded
duration and lyrics are bounded (``--max-*``): a refused or oversized row gets its reason, the job goes on.

The S3 endpoint and region in the driver's environment (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``,
region) travel to the extraction tasks in their runtime environment; credentials do not (each node's own
AWS environment, config or instance profile supplies them), since a runtime environment is visible in Ray's
state API and dashboard.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from hitmodels import audio, features, isolate, lyrics, outdir
from hitmodels.config import FeatureConfig, InputPolicy
from hitmodels.data import ROW_KEY, keyed_manifest, read_manifest
from hitmodels.fetch import add_policy_arguments, policy_from_args
from hitmodels.services import init_ray
from hitmodels.storage import filesystem, location, read_text, write_text
from hitmodels.entry import module_main


def extract_batch(batch: pd.DataFrame, cfg: FeatureConfig, policy: InputPolicy | None = None):
    """Ray Data task: :func:`hitmodels.features.extract_rows` over a batch (the tagger, with ``--tags``, once
    over the batch), as one Arrow table with the fixed feature schema. Tasks rather than actors: nothing holds
    a CPU between batches, so the job shares a small machine with Serve without deadlocking, and a crashed
    worker only costs its batch (retried by Ray). Ray reuses a task's worker process, and with it the loaded
    tagger."""
    rows = features.extract_rows(list(zip(batch["track_id"], batch["audio_uri"], batch["lyrics"])), cfg, policy)
    for row, key in zip(rows, batch[ROW_KEY] if ROW_KEY in batch else batch["track_id"]):
        row[ROW_KEY] = key
    return features.rows_to_table(rows, cfg)


# ---- the torch path: decode per clip on CPU tasks, then audio features per batch in actors ------------------

# What decode_batch hands the actors: a row per track, the samples of the ones that decoded and passed
# audio.check_usable (and with --tags the same clip at the tagger's rate), the lyric features or the lyric
# error. large_binary: a block of 30 s clips at 44.1 kHz passes 2 GiB at ~400 tracks.
DECODED_SCHEMA = pa.schema([("track_id", pa.string()), (ROW_KEY, pa.string()), ("error", pa.string()),
                            ("lyric_error", pa.string()),
                            ("sr", pa.int64()), ("pcm", pa.large_binary()), ("pcm_tags", pa.large_binary())]
                           + [(n, pa.float64()) for n in lyrics.FEATURE_NAMES])
# Torch actors per GPU: each also does CPU work per clip (the CQT's resampling, ~25 ms, and the statistics),
# which one actor would do while its GPU waits.
ACTORS_PER_GPU = 4


def _internal(exc: Exception) -> str:
    """``extract_row``'s error text for an exception: an input error's own, anything else as ``internal``."""
    return str(exc) if isinstance(exc, (audio.AudioError, lyrics.LyricsError)) \
        else f"internal: {type(exc).__name__}: {exc}"


def decode_batch(batch: pd.DataFrame, cfg: FeatureConfig, policy: InputPolicy | None = None) -> pa.Table:
    """Ray Data task of the torch path: what :func:`hitmodels.features.extract_row` does per track before
    and after the audio features (fetch, decode, check, lyric features), with the same errors, as a
    :data:`DECODED_SCHEMA` table. The audio features are left to :class:`TorchFeatures`."""
    rows = []
    rates = (cfg.sr, features.tag_sr()) if cfg.tags else (cfg.sr,)  # tag_sr: a missing wheel fails here
    keys = batch[ROW_KEY] if ROW_KEY in batch else batch["track_id"]  # a caller's own batch: keyed by its ids
    for track_id, key, uri, text in zip(batch["track_id"], keys, batch["audio_uri"], batch["lyrics"]):
        row = {"track_id": str(track_id), ROW_KEY: key, "error": None, "lyric_error": None, "sr": None,
               "pcm": None, "pcm_tags": None}
        try:
            # a manifest read by pandas gives None or NaN where the URI is missing
            loaded = audio.load_rates(uri if isinstance(uri, str) else "", rates, cfg, policy)
            y, sr = loaded[0]
            row.update(sr=int(sr), pcm=np.ascontiguousarray(y, dtype=np.float32).tobytes())
            if cfg.tags:
                row["pcm_tags"] = loaded[1][0].tobytes()
        except Exception as exc:  # a bug or an exotic file must not cost the other rows of the batch
            row["error"] = _internal(exc)
        if row["error"] is None:
            try:  # extract_row computes these after the audio features: a failure only counts if they pass
                row.update(lyrics.lyric_features(text if isinstance(text, str) else None, policy=policy))
            except Exception as exc:
                row["lyric_error"] = _internal(exc)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


def _clip_features(clips: list[np.ndarray], sr: int, cfg: FeatureConfig, device: str) -> list[dict | str]:
    """Audio features of same-rate clips as one torch batch, or per clip an error string. A batch that raises
    (a bug, a clip too long for the GPU's memory) is redone clip by clip with the NumPy path, so each clip
    gets exactly what the CPU path gives it, features or error."""
    from hitmodels import audio_torch

    try:
        return audio_torch.audio_features_batch(clips, sr, cfg, device)
    except Exception as exc:
        print(f"extract: torch batch of {len(clips)} failed ({type(exc).__name__}: {exc}); redoing it per clip "
              "on the CPU", file=sys.stderr)
    out: list[dict | str] = []
    for y in clips:
        try:
            out.append(audio.audio_features(y, sr, cfg))
        except Exception as exc:
            out.append(_internal(exc))
    return out


def feature_rows(decoded: pd.DataFrame, cfg: FeatureConfig, device: str) -> list[dict]:
    """Rows as :func:`hitmodels.features.extract_rows` gives them, from :func:`decode_batch`'s rows: audio
    features batched per sample rate on ``device``, then (``cfg.tags``) the tags of every clip whose audio
    features and lyrics passed, as one batch; errors in ``extract_rows``' order (load, audio features,
    lyrics, tags)."""
    decoded = decoded.reset_index(drop=True)
    audio_out: dict[int, dict | str] = {}
    ok = decoded.index[decoded["error"].isna()]
    for sr, idx in decoded.loc[ok].groupby("sr").groups.items():
        clips = [np.frombuffer(decoded.at[i, "pcm"], dtype=np.float32) for i in idx]
        audio_out.update(zip(idx, _clip_features(clips, int(sr), cfg, device)))
    tags_out: dict[int, dict | str] = {}
    if cfg.tags:
        tag_idx = [i for i in ok
                   if isinstance(audio_out.get(i), dict) and not isinstance(decoded.at[i, "lyric_error"], str)]
        clips = [np.frombuffer(decoded.at[i, "pcm_tags"], dtype=np.float32) for i in tag_idx]
        tags_out = dict(zip(tag_idx, features.tag_rows(clips, cfg, device))) if tag_idx else {}
    rows = []
    for i, r in decoded.iterrows():
        row = {"track_id": r["track_id"], ROW_KEY: r[ROW_KEY],
               "error": r["error"] if isinstance(r["error"], str) else None}
        result = audio_out.get(i)
        if row["error"] is None:
            if isinstance(result, str):
                row["error"] = result
            elif isinstance(r["lyric_error"], str):
                row["error"] = r["lyric_error"]
            elif isinstance(tags_out.get(i), str):
                row["error"] = tags_out[i]
            else:
                row.update(result)
                row.update({n: float(r[n]) for n in lyrics.FEATURE_NAMES})
                row.update(tags_out.get(i, {}))
        if row["error"] is not None:
            row.update({n: None for n in features.feature_names(cfg)})
        rows.append(row)
    return rows


class TorchFeatures:
    """Ray Data actor of the torch path: :func:`feature_rows` over a batch of :func:`decode_batch`'s rows, as
    one Arrow table with the fixed feature schema. An actor, unlike the CPU path's tasks, so the CUDA
    context, the filter banks and the CQT kernels on the device are made once, not per batch."""

    def __init__(self, cfg: FeatureConfig, device: str):
        import torch

        self.cfg, self.device = cfg, device
        if device == "cpu":
            torch.set_num_threads(1)  # the actor holds one CPU
        if cfg.tags:
            features.load_tagger(device)

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        return features.rows_to_table(feature_rows(batch, self.cfg, self.device), self.cfg)


def use_torch(device: str, n_gpus: float) -> bool:
    """Whether ``--device`` picks the torch path on a cluster with ``n_gpus`` GPUs."""
    if device not in ("auto", "cpu", "torch"):
        raise ValueError(f"device must be auto, cpu or torch, not {device!r}")
    return device == "torch" or (device == "auto" and n_gpus >= 1)


def gpu_workers_have_cuda(timeout_s: float = 120.0) -> bool:
    """Whether torch in a Ray worker holding a GPU can use it: a CPU build of torch (what constraints.txt
    pins) sees none. False too when no GPU frees up within ``timeout_s``."""
    import ray

    @ray.remote(num_gpus=1, num_cpus=0)
    def probe() -> bool:
        import torch

        return torch.cuda.is_available()

    ref = probe.remote()
    try:
        return bool(ray.get(ref, timeout=timeout_s))
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        return False


QUARANTINE = outdir.QUARANTINE
# What fetch_bytes needs to reach an S3-compatible store; forwarded from the driver to the tasks.
# (Not file paths such as AWS_CA_BUNDLE or AWS_CONFIG_FILE: they mean nothing on another node.)
# Credentials are not among them: they reach workers through each node's own AWS environment, config file
# or instance profile, never through a runtime environment that Ray's state API and dashboard show.
S3_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "HITMUSIC_S3_MAX_ATTEMPTS")


def part_files(out_dir: str) -> list[str]:
    """Readable Parquet parts in ``out_dir`` (a local directory or an ``s3://`` prefix); an unreadable one (a
    run killed while writing it) is moved to ``out_dir/_quarantine`` so that its tracks count as not done and
    every later read succeeds (:func:`hitmodels.outdir.readable_parts`)."""
    fs, root = filesystem(out_dir)
    return outdir.readable_parts(fs, root, quarantine=True, job="extract")


def resume_state(out_dir: str, max_attempts: int = outdir.MAX_ATTEMPTS) -> outdir.Resume:
    """What a run into ``out_dir`` skips and retries (:func:`hitmodels.outdir.resume_state`)."""
    return outdir.resume_state(filesystem(out_dir)[0], part_files(out_dir), max_attempts)


def summary(out_dir: str) -> Counter:
    """Rows per outcome (``ok`` or the error reason) in ``out_dir``: each row's latest attempt."""
    rows = outdir.latest(outdir.read_parts(filesystem(out_dir)[0], part_files(out_dir),
                                           ["track_id", ROW_KEY, "error", outdir.ATTEMPT]))
    return Counter(features.error_reason(e if isinstance(e, str) else None) for e in rows["error"])


def _task_env(uris: pd.Series) -> dict:
    """Ray remote args that carry the driver's S3 settings to the tasks, when the manifest reads from S3 and
    the job's runtime environment does not already carry them (a runtime environment of its own means fresh
    worker processes, so only then)."""
    import ray

    job_env = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
    env = {k: os.environ[k] for k in S3_ENV if os.environ.get(k) and job_env.get(k) != os.environ[k]}
    if not env or not uris.astype(str).str.startswith("s3://").any():
        return {}
    return {"runtime_env": {"env_vars": env}}


def run(manifest: str | Path, out_dir: str | Path, cfg: FeatureConfig = FeatureConfig(),
        batch_size: int = 4, block_size: int = 64, device: str = "auto", torch_batch_size: int = 16,
        policy: InputPolicy | None = None, batch_task=None, max_attempts: int = outdir.MAX_ATTEMPTS) -> Counter:
    """Extract features for every track of ``manifest`` not yet in ``out_dir``; returns counts per outcome.

    ``device``: ``auto`` (the torch path when the cluster has a GPU), ``cpu`` or ``torch``; see the module
    docstring. ``torch_batch_size``: clips per torch batch. ``policy``: which audio URIs may be read and the
    input bounds (default :meth:`InputPolicy.for_manifest`: the manifest's directory and ``$HITMUSIC_HOME``).
    ``batch_task``: the CPU path's task (default :func:`extract_batch`; the poison-row tests pass one that
    kills its worker on one row). A row whose worker dies gets ``worker_died`` (:mod:`hitmodels.isolate`).
    ``max_attempts``: a row that failed is tried again by a re-run until it has failed this often
    (:mod:`hitmodels.outdir`)."""
    import ray

    policy = policy or InputPolicy.for_manifest(manifest)
    # resolved here: the Ray Data writers run in the workers, whose working directory is not the user's
    out_dir = location(out_dir)
    out_fs, out_root = filesystem(out_dir)
    # one run per OUT, held from the resume check to the last part written (hitmodels.outdir)
    with outdir.exclusive(str(out_dir), "extract"):
        init_ray()
        record_feature_config(out_dir, cfg)
        df, failed = keyed_manifest(read_manifest(manifest))
        state = resume_state(out_dir, max_attempts)
        todo = df[~df[ROW_KEY].isin(state.done)].reset_index(drop=True)
        # a duplicate or missing track_id fails by the manifest alone: written once, never retried
        failed = failed[~failed[ROW_KEY].isin(state.latest_attempt)]
        print(f"extract: {len(df) + len(failed)} rows in manifest; in {out_dir}: {state.line()}; "
              f"{len(todo) + len(failed)} to do", file=sys.stderr)
        if len(failed):
            outdir.write_part(features.rows_to_table(failed.to_dict("records"), cfg), out_fs, out_root)
        if len(todo):
            # Many small input blocks: the job streams, and work spreads over every CPU of the cluster.
            chunks = [todo.iloc[i:i + block_size] for i in range(0, len(todo), block_size)]
            ds = ray.data.from_pandas(chunks)
            n_gpus = ray.cluster_resources().get("GPU", 0)
            on_gpu = use_torch(device, n_gpus) and n_gpus >= 1 and gpu_workers_have_cuda()
            if device == "auto" and n_gpus >= 1 and not on_gpu:
                print("extract: the cluster has GPUs but torch cannot use them there (a CPU build of torch?); "
                      "audio features on the CPU path", file=sys.stderr)
                device = "cpu"
            task = batch_task or extract_batch
            if not use_torch(device, n_gpus):
                ds = ds.map_batches(task, fn_kwargs={"cfg": cfg, "policy": policy}, batch_size=batch_size,
                                    batch_format="pandas", num_cpus=1, max_retries=isolate.TASK_RETRIES,
                                    **_task_env(todo["audio_uri"]))
            else:
                ds = ds.map_batches(decode_batch, fn_kwargs={"cfg": cfg, "policy": policy}, batch_size=batch_size,
                                    batch_format="pandas", num_cpus=1, max_retries=isolate.TASK_RETRIES,
                                    **_task_env(todo["audio_uri"]))
                # ACTORS_PER_GPU actors share each GPU; without a usable GPU (--device torch), one actor on one CPU
                n_actors = int(n_gpus) * ACTORS_PER_GPU if on_gpu else 1
                ds = ds.map_batches(TorchFeatures,
                                    fn_constructor_kwargs={"cfg": cfg, "device": "cuda" if on_gpu else "cpu"},
                                    batch_size=torch_batch_size, batch_format="pandas", num_cpus=1,
                                    num_gpus=1 / ACTORS_PER_GPU if on_gpu else 0,
                                    compute=ray.data.ActorPoolStrategy(size=n_actors))
                print(f"extract: audio features with torch, {n_actors} actor(s) on "
                      f"{f'{int(n_gpus)} GPU(s)' if on_gpu else 'the CPU'}", file=sys.stderr)
            outdir.write_dataset(ds, str(out_dir), set_aside_failed=True, attempts=state.retry, total=len(todo),
                                 desc="extract")
            # the rows of batches whose worker kept dying, each on its own (on the CPU path)
            lost = outdir.not_written(todo, state, resume_state(out_dir, max_attempts))
            for table in isolate.redo_one_by_one(
                    lost, task, {"cfg": cfg, "policy": policy},
                    lambda row, reason: features.rows_to_table([{**row.iloc[0].to_dict(), "error": reason}], cfg),
                    "extract", _task_env(todo["audio_uri"])):
                outdir.write_part(table, out_fs, out_root, state.retry)
        counts = summary(out_dir)
        print("extract: rows per outcome: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())),
              file=sys.stderr)
    return counts


FEATURE_CONFIG_FILE = "_feature_config.json"  # the leading underscore keeps it out of Arrow's discovery


def record_feature_config(out_dir: str, cfg: FeatureConfig) -> None:
    """Write the settings features are extracted with beside them; resuming with other settings is refused,
    since one table would then hold features that mean different things."""
    uri = f"{out_dir}/{FEATURE_CONFIG_FILE}"
    text = read_text(uri)
    if text is not None:
        before = FeatureConfig.from_dict(json.loads(text))
        if before != cfg:
            changed = {k: (getattr(before, k), getattr(cfg, k)) for k in asdict(cfg) if getattr(before, k) != getattr(cfg, k)}
            raise ValueError(f"{out_dir} holds features extracted with other settings {changed} (before, now): "
                             "extract into a new directory")
        return
    if part_files(out_dir):  # parts from before settings were recorded (schema 2: native rates)
        raise ValueError(f"{out_dir} holds features extracted before their settings were recorded (native "
                         "sample rates): extract into a new directory")
    write_text(uri, json.dumps(asdict(cfg)))


def read_features(out_dir: str | Path) -> pd.DataFrame:
    """The feature table written by :func:`run` (all parts; a local directory or an ``s3://`` prefix), one row
    per manifest row (its latest attempt); ``attrs["feature_config"]`` holds the settings they were extracted
    with (absent for directories from before they were recorded)."""
    out_dir = location(out_dir)
    df = outdir.latest(outdir.read_parts(filesystem(out_dir)[0], part_files(out_dir)))
    text = read_text(f"{out_dir}/{FEATURE_CONFIG_FILE}")
    if text is not None:
        df.attrs["feature_config"] = asdict(FeatureConfig.from_dict(json.loads(text)))
    return df


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", type=Path, help="manifest (.parquet/.csv: track_id, audio_uri[, lyrics]) or SPD dir")
    p.add_argument("out_dir", help="output directory of Parquet parts, local or s3:// (re-runs resume into it)")
    p.add_argument("--batch-size", type=int, default=4, help="tracks per actor call (default 4)")
    p.add_argument("--block-size", type=int, default=64, help="tracks per output block/file (default 64)")
    p.add_argument("--sr", type=int, default=FeatureConfig.sr,
                   help=f"rate every file is resampled to before analysis (default {FeatureConfig.sr}); 0 keeps "
                        "each file's own, which makes features of files at different rates incomparable")
    p.add_argument("--n-mfcc", type=int, default=FeatureConfig.n_mfcc, help="MFCC coefficients (default 48)")
    p.add_argument("--device", choices=["auto", "cpu", "torch"], default="auto",
                   help="audio features: auto = batched torch on GPU actors when the cluster has GPUs, else "
                        "the NumPy path per clip; cpu = always NumPy; torch = always torch (on CPU without GPUs)")
    p.add_argument("--torch-batch-size", type=int, default=16,
                   help="clips per torch batch (default 16: ~1 GB of GPU memory for 30 s previews)")
    p.add_argument("--tags", action="store_true",
                   help="add the 50 tag_<label> columns of the pretrained MagnaTagATune tagger (musicnn's "
                        "MTT_musicnn, hitmodels.tagger), batched per task (--batch-size tracks) on the CPU path, "
                        "per actor batch on the torch path (on its GPU); about 0.43 s of a core per 30 s "
                        "clip, 3.7x the rest of the extraction (benchmarks/README.md), hence off by default")
    outdir.add_resume_argument(p)
    add_policy_arguments(p)


def main_from_args(args: argparse.Namespace) -> int:
    cfg = FeatureConfig(sr=args.sr or None, n_mfcc=args.n_mfcc, tags=args.tags)
    run(args.manifest, args.out_dir, cfg, batch_size=args.batch_size, block_size=args.block_size,
        device=args.device, torch_batch_size=args.torch_batch_size, policy=policy_from_args(args, args.manifest),
        max_attempts=args.max_attempts)
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main(__doc__, "python -m pipelines.extract", add_arguments, main_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
