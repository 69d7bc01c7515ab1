"""The 50-tag tagger (musicnn's MTT_musicnn in PyTorch, ``hitmodels.tagger``): cost per clip on one core,
against the machine's own FLOPS floor, torch's plain convolutions, and the rest of the feature extraction.

    .venv/bin/python benchmarks/bench_tagger.py                  # the four real previews if ../shared exists
    .venv/bin/python benchmarks/bench_tagger.py --synthetic      # generated 30 s clips at 44.1 kHz instead
    .venv/bin/python benchmarks/bench_tagger.py --repeat 5 --json out.json

BLAS/OpenMP and torch are held to one thread. Printed, per 30 s clip (ten 3 s patches):

- the network's multiply-adds (``tagger.multiply_adds``) and the **floor**: 2 x multiply-adds / the single-core
  sgemm rate (2048 x 2048 products through NumPy's OpenBLAS and torch's MKL, the better of the two; printed);
- **ours**: ``Tagger.activations`` (windowed matrix products through NumPy's BLAS on the CPU), its ratio to the
  floor (the issue's target is 1.5x) and the sgemm rate it reaches. On a shared VM the sgemm rate itself moves
  by 30 % from minute to minute, so the floor is measured again right before each timed clip and the ratio
  taken clip by clip (the median is printed, with the range);
- **plain**: the same network through torch's ``conv2d``/``conv1d`` (``tagger.plain_forward``), the peer,
  and ours/plain;
- the preprocessing (16 kHz resample from the native rate, mel, patches) and, next to it, the rest of the
  extraction of the same clip (``audio.load`` + ``audio.audio_features`` at 22,050 Hz);
- on a GPU where torch sees CUDA: the network over all clips as one batch.

Timings are what this machine gives at the moment (a shared VM): the load average is printed before and after.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported: BLAS reads these once

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hitmodels import audio, tagger  # noqa: E402
from hitmodels.config import FeatureConfig, InputPolicy  # noqa: E402

torch.set_num_threads(1)


def sgemm_gflops(n: int = 2048, repeat: int = 5) -> dict[str, float]:
    """Best single-core rate of an n x n float32 product, NumPy's BLAS and torch's."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    out = {}
    for name, fn in (("numpy", lambda: a @ a), ("torch", lambda t=torch.from_numpy(a): t @ t)):
        fn()
        best = min(_timed(fn) for _ in range(repeat))
        out[name] = 2 * n ** 3 / best / 1e9
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def clips(synthetic: bool) -> list[Path]:
    shared = REPO.parent / "shared" / "data" / "audio"
    if not synthetic and shared.is_dir():
        return sorted(shared.glob("*.mp3"))
    import soundfile as sf

    from hitmodels.synth import synth_audio

    folder = Path(tempfile.mkdtemp(prefix="bench-tagger-"))
    rng = np.random.default_rng(0)
    out = []
    for i in range(4):
        y = synth_audio(rng, 30.0, 44100, brightness=rng.uniform(), noisiness=rng.uniform(0, 0.3),
                        tempo=rng.uniform(70, 170), root_hz=rng.uniform(60, 200))
        sf.write(folder / f"synthetic{i}.wav", np.stack([y, y], axis=1), 44100)
        out.append(folder / f"synthetic{i}.wav")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3, help="timed passes over the clips (default 3)")
    p.add_argument("--synthetic", action="store_true", help="generated 30 s clips instead of ../shared's")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)

    load_before = os.getloadavg()[0]
    files = clips(args.synthetic)
    policy = InputPolicy(local_roots=(str(files[0].parent),))
    t = tagger.Tagger("cpu")
    m = t.model
    fcfg = FeatureConfig()

    gemm = sgemm_gflops()
    pre_s, ours_s, plain_s, rest_s, n_patches, ratios, peaks = [], [], [], [], [], [], []
    macs_per_patch = tagger.multiply_adds(m)
    with torch.inference_mode():
        for f in files:  # warm-up: imports, numba, first-call allocations
            y16, sr16 = audio.load(str(f), FeatureConfig(sr=16000), policy)
            x = t.clip_patches(y16, sr16)
            t.activations(x), tagger.plain_forward(m, torch.from_numpy(x))
            audio.audio_features(*audio.load(str(f), fcfg, policy), fcfg)
        for _ in range(args.repeat):
            for f in files:
                start = time.perf_counter()
                y16, sr16 = audio.load(str(f), FeatureConfig(sr=16000), policy)
                x = t.clip_patches(y16, sr16)
                pre_s.append(time.perf_counter() - start)
                n_patches.append(len(x))
                peaks.append(max(sgemm_gflops(repeat=1).values()))  # the floor under this clip's conditions
                ours_s.append(_timed(lambda: t.activations(x)))
                ratios.append(ours_s[-1] / (2 * macs_per_patch * len(x) / (peaks[-1] * 1e9)))
                plain_s.append(_timed(lambda: tagger.plain_forward(m, torch.from_numpy(x))))
                start = time.perf_counter()
                audio.audio_features(*audio.load(str(f), fcfg, policy), fcfg)
                rest_s.append(time.perf_counter() - start)
    patches = int(np.median(n_patches))
    macs = macs_per_patch * patches
    peak = float(np.median(peaks))
    floor = 2 * macs / (peak * 1e9)
    ours, plain = float(np.median(ours_s)), float(np.median(plain_s))
    ratio = float(np.median(ratios))
    result = {
        "clips": [f.name for f in files], "patches_per_clip": patches, "passes": args.repeat,
        "multiply_adds_per_clip": macs, "sgemm_gflops_1_core": gemm, "sgemm_gflops_per_clip": peaks,
        "floor_ms": 1e3 * floor, "ours_ms": 1e3 * ours, "ours_over_floor": ratio,
        "ours_over_floor_range": [float(min(ratios)), float(max(ratios))], "ours_gflops": 2 * macs / ours / 1e9,
        "plain_torch_ms": 1e3 * plain, "ours_over_plain": ours / plain,
        "preprocessing_ms": 1e3 * float(np.median(pre_s)), "rest_of_extraction_ms": 1e3 * float(np.median(rest_s)),
        "load_average": [load_before, os.getloadavg()[0]],
    }
    if torch.cuda.is_available():
        g = tagger.Tagger("cuda")
        batch = np.concatenate([t.clip_patches(*audio.load(str(f), FeatureConfig(sr=16000), policy)) for f in files])
        g.activations(batch)
        torch.cuda.synchronize()
        best = min(_timed(lambda: (g.activations(batch), torch.cuda.synchronize())) for _ in range(args.repeat))
        result["cuda_ms_per_clip"] = 1e3 * best / len(files)
        result["cuda_device"] = torch.cuda.get_device_name()

    print(f"tagger, one core, {len(files)} clips x {args.repeat} passes, {patches} patches per clip; load average "
          f"{load_before:.1f} -> {result['load_average'][1]:.1f}")
    print(f"  sgemm 2048^3 on one core: numpy {gemm['numpy']:.1f} GFLOPS, torch {gemm['torch']:.1f} GFLOPS at the start; "
          f"{min(peaks):.1f}-{max(peaks):.1f} (median {peak:.1f}) right before the timed clips")
    print(f"  network: {macs / 1e9:.2f} G multiply-adds per clip -> floor {1e3 * floor:.0f} ms at {peak:.1f} GFLOPS")
    print(f"  ours:  {1e3 * ours:6.0f} ms/clip = {ratio:.2f}x the floor, clip by clip (range {min(ratios):.2f}-"
          f"{max(ratios):.2f}; {result['ours_gflops']:.1f} GFLOPS)")
    print(f"  plain: {1e3 * plain:6.0f} ms/clip (torch conv2d/conv1d); ours/plain = {ours / plain:.2f} "
          f"({plain / ours:.1f}x faster)")
    print(f"  preprocessing (decode, 16 kHz, mel, patches): {result['preprocessing_ms']:.0f} ms/clip; the rest of "
          f"the extraction (decode, 22,050 Hz, 414 statistics): {result['rest_of_extraction_ms']:.0f} ms/clip")
    per_clip = result["preprocessing_ms"] + result["ours_ms"]
    print(f"  --tags adds {per_clip:.0f} ms per clip per core: {per_clip / result['rest_of_extraction_ms']:.1f}x "
          "the rest of the extraction")
    if "cuda_ms_per_clip" in result:
        print(f"  {result['cuda_device']}: {result['cuda_ms_per_clip']:.1f} ms/clip batched ({len(files)} clips)")
    else:
        print("  no GPU visible to torch: the CUDA path was not measured")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
