"""Audio feature extraction: the naive reference against ``hitmodels.audio`` and its batched torch path.

On one CPU core, and also on one GPU where torch sees CUDA.

    .venv/bin/python benchmarks/bench_features.py                 # the four real previews if ../shared exists
    .venv/bin/python benchmarks/bench_features.py --repeat 5 --json out.json
    .venv/bin/python benchmarks/bench_features.py --synthetic     # generated 30 s clips at 44.1 kHz instead

All extractors run in this one process on the same clips, interleaved so that they share whatever else the
machine is doing. Naive = ``librosa.load`` + one librosa call per feature from the signal
(``hitmodels.audio.reference_audio_features``, the paper's way). Ours = ``hitmodels.audio.load`` +
``audio_features``. Torch = ``hitmodels.audio.load`` per clip + ``hitmodels.audio_torch.audio_features_batch``
over all the clips as one batch, on the CPU always ("torch-cpu") and on the GPU when
``torch.cuda.is_available()`` ("torch-cuda"); timed per pass over the clips, right after naive and ours have
run on each of them. All decode once. BLAS/OpenMP and torch are held to one thread, so a clip uses one core
(the GPU's kernels aside).

Printed: clips/s of each (wall clock and CPU time), their ratio to naive, the largest relative deviation of any
summary statistic from naive (a mean measured on the scale ``max(|mean|, std)`` of its column, as in
``tests/test_features.py``), the peak RSS of a fresh worker process running each CPU extractor, and the wall
time projected for 100,000 previews with one worker per core here and on a 16-core machine (torch-cuda: one
process driving one GPU, decoding included, so a lower bound on what the GPU does when more cores feed it).
Timings are whatever this machine gives at the moment: the load average is printed before and after.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported: BLAS reads these once

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HITMUSIC_SHARED", REPO.parent / "shared"))
N_PREVIEWS = 100_000


def _trusted():
    """The benchmark reads its own clips: ../shared's previews or ones it generated in the temp dir."""
    from hitmodels.config import InputPolicy

    return InputPolicy(local_roots=(str(SHARED), tempfile.gettempdir()))


def naive(path: str) -> dict:
    import librosa

    from hitmodels import audio
    from hitmodels.config import FeatureConfig

    cfg = FeatureConfig()
    y, sr = librosa.load(path, sr=cfg.sr, mono=True)
    return audio.reference_audio_features(y, int(sr), cfg)


def ours(path: str) -> dict:
    from hitmodels import audio
    from hitmodels.config import FeatureConfig

    cfg = FeatureConfig()
    y, sr = audio.load(path, cfg, _trusted())
    return audio.audio_features(y, sr, cfg)


EXTRACTORS = {"naive": naive, "ours": ours}


def torch_batch(paths: list[str], device: str) -> list[dict]:
    """Decode each clip, then the torch path's features of all of them as one batch per sample rate."""
    from hitmodels import audio, audio_torch
    from hitmodels.config import FeatureConfig

    cfg = FeatureConfig()
    loaded = [audio.load(p, cfg, _trusted()) for p in paths]
    out: list[dict | None] = [None] * len(paths)
    for sr in sorted({sr for _, sr in loaded}):
        idx = [i for i, (_, s) in enumerate(loaded) if s == sr]
        for i, feats in zip(idx, audio_torch.audio_features_batch([loaded[i][0] for i in idx], sr, cfg, device)):
            out[i] = feats
    return out


def torch_devices() -> list[str]:
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def clips(synthetic: bool, workdir: Path) -> list[str]:
    real = sorted((SHARED / "data" / "audio").glob("*.mp3"))
    if real and not synthetic:
        return [str(p) for p in real]
    import soundfile as sf

    from hitmodels.synth import synth_audio

    paths = []
    for i, (brightness, noisiness, tempo, root) in enumerate([(0.8, 0.2, 124, 220.0), (0.3, 0.6, 92, 196.0),
                                                              (0.6, 0.4, 140, 246.9), (0.5, 0.1, 70, 174.6)]):
        y = synth_audio(np.random.default_rng(i), 30.0, 44100, brightness=brightness, noisiness=noisiness,
                        tempo=tempo, root_hz=root)
        paths.append(str(workdir / f"synth_{i}.wav"))
        sf.write(paths[-1], y, 44100)
    return paths


def worker_peak_rss_mib(kind: str, paths: list[str]) -> float:
    """Peak RSS of a fresh process that imports the extractor and runs it over ``paths`` twice."""
    out = subprocess.run([sys.executable, __file__, "--worker", kind, *paths], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1])


def run_worker(kind: str, paths: list[str]) -> None:
    from hitmodels import audio

    # librosa loads its submodules lazily: touch what the extractors use, so "imports" is a fair baseline
    _ = (audio.librosa.feature.chroma_cqt, audio.librosa.filters.mel, audio.librosa.core.cqt, audio.scipy.fft.rfft)

    fn = EXTRACTORS.get(kind)
    if fn is not None:
        for _ in range(2):
            for p in paths:
                fn(p)
    elif kind.startswith("torch-"):
        import torch

        torch.set_num_threads(1)
        for _ in range(2):
            torch_batch(paths, kind.removeprefix("torch-"))
    # VmHWM, not getrusage: a child's ru_maxrss keeps the high-water mark of the parent it was forked from
    status = Path("/proc/self/status").read_text()
    print(int(status.split("VmHWM:")[1].split()[0]) / 1024)


def hms(seconds: float) -> str:
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h} h {rem // 60:02d} min"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="timed passes over the clips (default 3)")
    p.add_argument("--synthetic", action="store_true", help="use generated clips even if real previews exist")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.paths)
        return 0

    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        paths = clips(args.synthetic, Path(tmp))
        print(f"clips: {len(paths)} ({'real previews' if paths[0].endswith('.mp3') else 'synthetic'}): "
              + ", ".join(Path(x).name for x in paths))
        print(f"machine: {os.cpu_count()} CPUs, load average before {load_before[0]:.2f} {load_before[1]:.2f} "
              f"{load_before[2]:.2f}")

        # Cold: first call of each in this process (imports, numba compilation, filter caches).
        cold = {}
        for kind, fn in EXTRACTORS.items():
            t = time.perf_counter()
            fn(paths[0])
            cold[kind] = time.perf_counter() - t
        devices = torch_devices()
        batched = [f"torch-{d}" for d in devices]
        for d in devices:
            t = time.perf_counter()
            torch_batch(paths[:1], d)
            cold[f"torch-{d}"] = time.perf_counter() - t
        for path in paths:  # warm every cache once (our CQT kernels are cached per tuning value)
            ours(path)
        for d in devices:  # and the torch path's at the full batch size (CUDA's allocator, its FFT plans)
            torch_batch(paths, d)

        kinds = [*EXTRACTORS, *batched]
        wall = {k: 0.0 for k in kinds}
        cpu = {k: 0.0 for k in kinds}
        per_clip = {k: [] for k in kinds}
        worst = {k: (0.0, "", "") for k in kinds if k != "naive"}

        def note_deviation(kind: str, mine: dict, ref: dict, path: str) -> None:
            from hitmodels import audio  # not at the top: the cold figures include each extractor's imports

            dev = audio.summary_deviations(mine, ref)
            column = max(dev, key=dev.get)
            if dev[column] >= worst[kind][0]:
                worst[kind] = (dev[column], column, Path(path).name)

        for _ in range(args.repeat):
            reference = []
            for path in paths:
                results = {}
                for kind, fn in EXTRACTORS.items():
                    t, c = time.perf_counter(), time.process_time()
                    results[kind] = fn(path)
                    dt = time.perf_counter() - t
                    wall[kind] += dt
                    cpu[kind] += time.process_time() - c
                    per_clip[kind].append(dt)
                note_deviation("ours", results["ours"], results["naive"], path)
                reference.append(results["naive"])
            for d, kind in zip(devices, batched):
                t, c = time.perf_counter(), time.process_time()
                results = torch_batch(paths, d)  # returns once the statistics are back on the host
                dt = time.perf_counter() - t
                wall[kind] += dt
                cpu[kind] += time.process_time() - c
                per_clip[kind].extend([dt / len(paths)] * len(paths))
                for path, mine, ref in zip(paths, results, reference):
                    note_deviation(kind, mine, ref, path)
        n = args.repeat * len(paths)
        load_after = os.getloadavg()
        rss = {kind: worker_peak_rss_mib(kind, paths) for kind in ("imports", *EXTRACTORS, "torch-cpu")}

    rate = {k: n / wall[k] for k in kinds}
    cpu_rate = {k: n / cpu[k] for k in kinds}
    cores = os.cpu_count() or 1

    def projection(kind: str, per_core_rate: float) -> dict:
        if kind == "torch-cuda":  # one process, one GPU
            return {"one GPU": N_PREVIEWS / per_core_rate}
        return {f"this machine ({cores} cores)": N_PREVIEWS / per_core_rate / cores,
                "16 cores": N_PREVIEWS / per_core_rate / 16}

    figures = {
        "clips": [Path(x).name for x in paths], "timed_extractions_each": n, "torch_batch_size": len(paths),
        "clips_per_s": rate, "clips_per_cpu_s": cpu_rate,
        "median_s_per_clip": {k: float(np.median(v)) for k, v in per_clip.items()},
        "cold_first_clip_s": cold,
        "ratio_wall": {k: rate[k] / rate["naive"] for k in worst},
        "ratio_cpu": {k: cpu_rate[k] / cpu_rate["naive"] for k in worst},
        "max_relative_deviation": {k: w[0] for k, w in worst.items()},
        "max_deviation_column": {k: w[1] for k, w in worst.items()},
        "max_deviation_clip": {k: w[2] for k, w in worst.items()},
        "peak_rss_mib": rss,
        # one worker per core; from CPU time (a dedicated core) and from wall time (this machine's load now)
        "projection_100k_s": {k: {"cpu": projection(k, cpu_rate[k]), "wall": projection(k, rate[k])} for k in kinds},
        "loadavg_before": load_before, "loadavg_after": load_after, "cpus": cores,
    }
    print(f"timed: {n} extractions each, interleaved; one thread each; torch in batches of {len(paths)} clips")
    for k in kinds:
        print(f"  {k:10s}: {rate[k]:6.2f} clips/s wall ({1000 / rate[k]:5.0f} ms/clip, median "
              f"{1000 * figures['median_s_per_clip'][k]:.0f}), {cpu_rate[k]:6.2f} clips per CPU-second "
              f"({1000 / cpu_rate[k]:.0f} ms); first call (cold) {cold[k]:.2f} s")
    for k in worst:
        print(f"  ratio {k}/naive: {figures['ratio_wall'][k]:.2f}x wall, {figures['ratio_cpu'][k]:.2f}x CPU time; "
              f"largest relative deviation of any statistic: {worst[k][0]:.2e} ({worst[k][1]}, {worst[k][2]})")
    print(f"  peak RSS of a worker process: naive {rss['naive']:.0f} MiB, ours {rss['ours']:.0f} MiB, torch-cpu "
          f"{rss['torch-cpu']:.0f} MiB (interpreter + imports alone: {rss['imports']:.0f} MiB)")
    print(f"  {N_PREVIEWS:,} previews, one worker per core (audio decode + features; fetch, lyrics and Ray "
          "overhead not included):")
    for k in kinds:
        p = figures["projection_100k_s"][k]
        if k == "torch-cuda":
            print(f"    {k:10s}: one process on one GPU {hms(p['wall']['one GPU'])} at the measured wall rate")
            continue
        print(f"    {k:10s}: this machine ({cores} cores) {hms(p['cpu'][f'this machine ({cores} cores)'])} "
              f"from CPU time, {hms(p['wall'][f'this machine ({cores} cores)'])} at the measured wall rate; "
              f"16 cores {hms(p['cpu']['16 cores'])} (workers' RSS {16 * rss[k] / 1024:.1f} GiB)")
    print(f"  load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
