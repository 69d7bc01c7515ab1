"""Ray Data job: the log-mel segments (Mid-30 and HL-30) of every track of a manifest, into a mel store.

    python -m pipelines.mels MANIFEST STORE_DIR            # or: hitmusic mels ...
    ray job submit --working-dir . -- python -m pipelines.mels MANIFEST STORE_DIR

The input of the CNN families (``--family siamese``): 128 mel bands at 22,050 Hz, Hamming window 4,096, hop
2,048, 323 frames per 30 s segment, in dB, stored as float16 (see :mod:`hitmodels.melstore` for the layout
and :mod:`hitmodels.mel` for the segments). Each track is decoded and analysed once here; training and
scoring read the store. Same rules as ``hitmusic extract``: the manifest (Parquet or CSV with ``track_id``,
``audio_uri``) or an SPD directory; ``--tags`` adds the tagger's activations per clip (decoded once for
both); every URI checked against the input policy (``--allow-*``) and the input
bounds; a bad track gets a row with its ``error`` and no segments (rows in = rows out) and a count per
reason is printed; re-running into the same store resumes. STORE_DIR may be an ``s3://`` prefix (endpoint and
region from the environment, as for ``hitmusic score``).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa

from hitmodels import isolate, melstore, outdir
from hitmodels.config import InputPolicy, MelConfig
from hitmodels.data import ROW_KEY, keyed_manifest, read_manifest
from hitmodels.entry import module_main
from hitmodels.fetch import add_policy_arguments, policy_from_args
from hitmodels.services import init_ray
from hitmodels.features import error_reason
from hitmodels.storage import filesystem
from pipelines.extract import _task_env


def mel_batch(batch: pd.DataFrame, cfg: MelConfig, policy: InputPolicy, tags: bool = False) -> pa.Table:
    """Ray Data task: :func:`hitmodels.melstore.mel_rows` over a batch, as one Arrow table of the store's schema."""
    rows = melstore.mel_rows(list(zip(batch["track_id"], batch["audio_uri"])), cfg, policy, tags)
    for row, key in zip(rows, batch[ROW_KEY]):
        row[ROW_KEY] = key
    return melstore.rows_to_table(rows, tags)


def run(manifest: str | Path, store: str | Path, cfg: MelConfig = MelConfig(), batch_size: int = 4,
        block_size: int = 64, policy: InputPolicy | None = None, tags: bool = False,
        max_attempts: int = outdir.MAX_ATTEMPTS) -> Counter:
    """Segments (and with ``tags`` the tag activations) of every track of ``manifest`` not yet in ``store``
    (a row that failed is retried until it has failed ``max_attempts`` times, :mod:`hitmodels.outdir`);
    returns rows per outcome."""
    import ray

    policy = policy or InputPolicy.for_manifest(manifest)
    store = str(store)
    with outdir.exclusive(store, "mels"):  # one run per store (hitmodels.outdir)
        init_ray()
        melstore.record_config(store, cfg, tags)
        fs, root = filesystem(store)
        parts = melstore.readable_parts(fs, root, quarantine=True)  # a part older versions cut short: redo it
        df, failed = keyed_manifest(read_manifest(manifest))
        state = outdir.resume_state(fs, parts, max_attempts)
        todo = df[~df[ROW_KEY].isin(state.done)].reset_index(drop=True)
        failed = failed[~failed[ROW_KEY].isin(state.latest_attempt)]  # by the manifest alone: never retried
        print(f"mels: {len(df) + len(failed)} rows in manifest; in {store}: {state.line()}; "
              f"{len(todo) + len(failed)} to do", file=sys.stderr)
        if len(failed):  # a duplicate or missing track_id: its row says so, nothing to compute
            outdir.write_part(melstore.rows_to_table(failed.to_dict("records"), tags), fs, root)
        if len(todo):
            chunks = [todo.iloc[i:i + block_size] for i in range(0, len(todo), block_size)]
            kwargs = {"cfg": cfg, "policy": policy, "tags": tags}
            ds = ray.data.from_pandas(chunks).map_batches(
                mel_batch, fn_kwargs=kwargs, batch_size=batch_size, batch_format="pandas", num_cpus=1,
                max_retries=isolate.TASK_RETRIES, **_task_env(todo["audio_uri"]))
            outdir.write_dataset(ds, store, set_aside_failed=True, attempts=state.retry, total=len(todo), desc="mels")
            # the rows of batches whose worker kept dying, each on its own (hitmodels.isolate)
            lost = outdir.not_written(todo, state, outdir.resume_state(fs, melstore.readable_parts(fs, root),
                                                                       max_attempts))
            for table in isolate.redo_one_by_one(
                    lost, mel_batch, kwargs,
                    lambda row, reason: melstore.rows_to_table([{**row.iloc[0].to_dict(), "error": reason}], tags),
                    "mels", _task_env(todo["audio_uri"])):
                outdir.write_part(table, fs, root, state.retry)
        counts = Counter(error_reason(e if isinstance(e, str) else None)
                         for e in melstore.MelStore(store).index()["error"])
        print("mels: rows per outcome: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())), file=sys.stderr)
    return counts


def add_arguments(p: argparse.ArgumentParser) -> None:
    c = MelConfig()
    p.add_argument("manifest", type=Path, help="manifest (.parquet/.csv: track_id, audio_uri) or SPD dir")
    p.add_argument("store", help="mel store to write: a local directory or an s3:// prefix (re-runs resume into it)")
    p.add_argument("--batch-size", type=int, default=4, help="tracks per task call (default 4)")
    p.add_argument("--block-size", type=int, default=64, help="tracks per output block/file (default 64)")
    p.add_argument("--segment-s", type=float, default=c.segment_s,
                   help=f"segment length in seconds (default {c.segment_s:.0f}: {c.n_frames} frames)")
    p.add_argument("--tags", action="store_true",
                   help="also store the pretrained tagger's 50 tag_<label> activations of each clip (what a siamese "
                        "model with a tag branch scores from a store; about 0.43 s of a core per 30 s clip; "
                        "training takes its tags from the model table, hitmusic extract --tags)")
    outdir.add_resume_argument(p)
    add_policy_arguments(p)


def main_from_args(args: argparse.Namespace) -> int:
    if not 1.0 <= args.segment_s <= 120.0:
        raise SystemExit(f"mels: --segment-s must be between 1 and 120 seconds, got {args.segment_s}")
    run(args.manifest, args.store, MelConfig(segment_s=args.segment_s), batch_size=args.batch_size,
        block_size=args.block_size, policy=policy_from_args(args, args.manifest), tags=args.tags,
        max_attempts=args.max_attempts)
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main(__doc__, "python -m pipelines.mels", add_arguments, main_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
