"""Audio feature extraction: the naive reference against ``hitmodels.audio``, on one CPU core.

    .venv/bin/python benchmarks/bench_features.py                 # the four real previews if ../shared exists
    .venv/bin/python benchmarks/bench_features.py --repeat 5 --json out.json
    .venv/bin/python benchmarks/bench_features.py --synthetic     # generated 30 s clips at 44.1 kHz instead

Both extractors run in this one process on the same clips, interleaved clip by clip so that they share
whatever else the machine is doing. Naive = ``librosa.load`` + one librosa call per feature from the signal
(``hitmodels.audio.reference_audio_features``, the paper's way). Ours = ``hitmodels.audio.load`` +
``audio_features``. Both decode once. BLAS/OpenMP and torch are held to one thread, so a clip uses one core.

Printed: clips/s of each (wall clock and CPU time), their ratio, the largest relative deviation of any
summary statistic (a mean measured on the scale ``max(|mean|, std)`` of its column, as in
``tests/test_features.py``), the peak RSS of a fresh worker process running each extractor, and the wall time
projected for 100,000 previews with one worker per core here and on a 16-core machine. Timings are whatever
this machine gives at the moment: the load average is printed before and after.
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
    y, sr = audio.load(path, cfg)
    return audio.audio_features(y, sr, cfg)


EXTRACTORS = {"naive": naive, "ours": ours}


def deviations(mine: dict, ref: dict) -> dict[str, float]:
    """Relative deviation per column; means on the scale max(|mean|, std of the column), see the docstring."""
    out = {}
    for k, r in ref.items():
        scale = abs(r)
        if f"{k}_std" in ref:
            scale = max(scale, abs(ref[f"{k}_std"]))
        elif k.startswith("spectral_rollOff_m"):
            scale = max(scale, abs(ref["spectral_rollOff_std"]))
        out[k] = abs(mine[k] - r) / max(scale, 1e-12)
    return out


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
        for path in paths:  # warm every cache once (our CQT kernels are cached per tuning value)
            ours(path)

        wall = {k: 0.0 for k in EXTRACTORS}
        cpu = {k: 0.0 for k in EXTRACTORS}
        per_clip = {k: [] for k in EXTRACTORS}
        worst = (0.0, "", "")
        for _ in range(args.repeat):
            for path in paths:
                results = {}
                for kind, fn in EXTRACTORS.items():
                    t, c = time.perf_counter(), time.process_time()
                    results[kind] = fn(path)
                    dt = time.perf_counter() - t
                    wall[kind] += dt
                    cpu[kind] += time.process_time() - c
                    per_clip[kind].append(dt)
                dev = deviations(results["ours"], results["naive"])
                column = max(dev, key=dev.get)
                if dev[column] >= worst[0]:
                    worst = (dev[column], column, Path(path).name)
        n = args.repeat * len(paths)
        load_after = os.getloadavg()
        rss = {kind: worker_peak_rss_mib(kind, paths) for kind in ("imports", *EXTRACTORS)}

    rate = {k: n / wall[k] for k in EXTRACTORS}
    cpu_rate = {k: n / cpu[k] for k in EXTRACTORS}
    cores = os.cpu_count() or 1

    def projection(per_core_rate: float) -> dict:
        return {f"this machine ({cores} cores)": N_PREVIEWS / per_core_rate / cores,
                "16 cores": N_PREVIEWS / per_core_rate / 16}

    figures = {
        "clips": [Path(x).name for x in paths], "timed_extractions_each": n,
        "clips_per_s": rate, "clips_per_cpu_s": cpu_rate,
        "median_s_per_clip": {k: float(np.median(v)) for k, v in per_clip.items()},
        "cold_first_clip_s": cold,
        "ratio_wall": rate["ours"] / rate["naive"], "ratio_cpu": cpu_rate["ours"] / cpu_rate["naive"],
        "max_relative_deviation": worst[0], "max_deviation_column": worst[1], "max_deviation_clip": worst[2],
        "peak_rss_mib": rss,
        # one worker per core; from CPU time (a dedicated core) and from wall time (this machine's load now)
        "projection_100k_s": {k: {"cpu": projection(cpu_rate[k]), "wall": projection(rate[k])} for k in EXTRACTORS},
        "loadavg_before": load_before, "loadavg_after": load_after, "cpus": cores,
    }
    print(f"timed: {n} extractions each, interleaved; one thread each")
    for k in EXTRACTORS:
        print(f"  {k:5s}: {rate[k]:6.2f} clips/s wall ({1000 / rate[k]:5.0f} ms/clip, median "
              f"{1000 * figures['median_s_per_clip'][k]:.0f}), {cpu_rate[k]:6.2f} clips per CPU-second "
              f"({1000 / cpu_rate[k]:.0f} ms); first call (cold) {cold[k]:.2f} s")
    print(f"  ratio ours/naive: {figures['ratio_wall']:.2f}x wall, {figures['ratio_cpu']:.2f}x CPU time")
    print(f"  largest relative deviation of any statistic: {worst[0]:.2e} ({worst[1]}, {worst[2]})")
    print(f"  peak RSS of a worker process: naive {rss['naive']:.0f} MiB, ours {rss['ours']:.0f} MiB "
          f"(interpreter + imports alone: {rss['imports']:.0f} MiB)")
    print(f"  {N_PREVIEWS:,} previews, one worker per core (audio decode + features; fetch, lyrics and Ray "
          "overhead not included):")
    for k in EXTRACTORS:
        p = figures["projection_100k_s"][k]
        print(f"    {k:5s}: this machine ({cores} cores) {hms(p['cpu'][f'this machine ({cores} cores)'])} "
              f"from CPU time, {hms(p['wall'][f'this machine ({cores} cores)'])} at the measured wall rate; "
              f"16 cores {hms(p['cpu']['16 cores'])} (workers' RSS {16 * rss[k] / 1024:.1f} GiB)")
    print(f"  load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
