"""The Siamese family's two costs: log-mel segments per clip, and training pairs per second.

    .venv/bin/python benchmarks/bench_siamese.py                  # the four real previews if ../shared exists
    .venv/bin/python benchmarks/bench_siamese.py --synthetic --repeat 3 --json out.json

**Mel segments**, on one core (BLAS/OpenMP held to one thread), both decoding the same files:

- naive: ``librosa.load(path, sr=22050)`` + ``librosa.feature.melspectrogram`` (n_fft 4096, hop 2048, Hamming,
  128 bands) + ``librosa.power_to_db`` + the two 30 s windows (Mid-30 and HL-30 by greatest mean power);
- ours: ``hitmodels.audio.load`` + ``hitmodels.melstore.segment_row`` (what ``hitmusic mels`` runs per track).

Printed: clips/s of each, the ratio, and the largest relative deviation of ours from naive in power (the issue's
bound is 1e-3), and the projected hours for 100,000 previews on one core.

**Training**: pairs per second of the Siamese network (32 channels, batches of 16 pairs, forward + backward +
Adam step on 323-frame segments) on the CPU with one thread, and on the GPU when torch sees CUDA; the
rating-only CNN's tracks per second beside it.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported: BLAS reads these once

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HITMUSIC_SHARED", REPO.parent / "shared"))


def clips(synthetic: bool) -> list[str]:
    audio_dir = SHARED / "data" / "audio"
    if not synthetic and audio_dir.is_dir():
        return [str(p) for p in sorted(audio_dir.glob("*.mp3"))]
    import soundfile as sf

    from hitmodels.synth import synth_audio

    rng = np.random.default_rng(0)
    out = []
    for i in range(4):
        y = synth_audio(rng, 30.0, 44100, brightness=0.5, noisiness=0.2, tempo=120, root_hz=110 * (1 + i / 4))
        path = Path(tempfile.gettempdir()) / f"bench_siamese_{i}.wav"
        sf.write(path, y, 44100)
        out.append(str(path))
    return out


def naive(path: str) -> np.ndarray:
    import librosa

    y, sr = librosa.load(path, sr=22050, mono=True)
    M = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=4096, hop_length=2048, window="hamming", n_mels=128)
    D = librosa.power_to_db(M, ref=1.0, amin=1e-10, top_db=None)
    width = 323
    e = (10 ** (D / 10)).mean(axis=0)
    hl = int(np.argmax(np.convolve(e, np.ones(width), "valid"))) if len(e) > width else 0
    mid = max(0, (D.shape[1] - width) // 2)
    return D[:, mid:mid + width], D[:, hl:hl + width]


def ours(path: str):
    from hitmodels import audio, melstore
    from hitmodels.config import InputPolicy, MelConfig

    cfg = MelConfig()
    y, sr = audio.load(path, melstore.audio_config(cfg), InputPolicy(local_roots=(str(SHARED), tempfile.gettempdir())))
    return melstore.segment_row(y, sr, cfg)


def bench_mels(paths: list[str], repeat: int) -> dict:
    from hitmodels import melstore

    for p in paths:  # warm caches (filter banks, windows) for both
        naive(p), ours(p)
    t_naive = t_ours = 0.0
    dev = 0.0
    for _ in range(repeat):
        for p in paths:
            t0 = time.perf_counter()
            ref_mid, _ = naive(p)
            t1 = time.perf_counter()
            row = ours(p)
            t2 = time.perf_counter()
            t_naive += t1 - t0
            t_ours += t2 - t1
            mid = melstore.decode(row["mid30"]).astype(np.float64)[:, :ref_mid.shape[1]]
            # float16 storage: compare the float32 computation, which the store rounds (~0.03 dB)
            y, sr = __import__("librosa").load(p, sr=22050)
            from hitmodels.mel import log_mel
            M = log_mel(y, sr)
            ours_mid = M[:, max(0, (M.shape[1] - 323) // 2):][:, :ref_mid.shape[1]]
            dev = max(dev, float(np.max(np.abs(10 ** (ours_mid / 10) - 10 ** (ref_mid / 10))
                                        / np.maximum(10 ** (ref_mid / 10), 1e-10))))
            del mid
    n = repeat * len(paths)
    return {"clips": n, "naive_clips_per_s": n / t_naive, "ours_clips_per_s": n / t_ours,
            "speedup": t_naive / t_ours, "max_rel_power_deviation": dev,
            "hours_100k_one_core_ours": 100_000 / (n / t_ours) / 3600}


def bench_training(device: str, steps: int = 30, batch_pairs: int = 16) -> dict:
    import torch

    from hitmodels.families.siamese.network import SiameseNet
    from hitmodels.ranking import siamese_loss

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = SiameseNet(128, 32, 64).to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x = torch.randn(2 * batch_pairs, 128, 323, device=device) * 10 - 40
    y = torch.rand(2 * batch_pairs, device=device)

    def step():
        s = net(x)
        loss = siamese_loss(s[0::2], s[1::2], y[0::2], y[1::2], 0.5, 0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"device": device, "pairs_per_s": steps * batch_pairs / dt, "tracks_per_s": steps * 2 * batch_pairs / dt}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic", action="store_true", help="generated 30 s clips at 44.1 kHz instead of ../shared")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    import torch

    print(f"load average before: {os.getloadavg()[0]:.2f}")
    mels = bench_mels(clips(args.synthetic), args.repeat)
    print(f"mel segments: naive {mels['naive_clips_per_s']:.1f} clips/s, ours {mels['ours_clips_per_s']:.1f} clips/s "
          f"per core: {mels['speedup']:.2f}x; max relative power deviation {mels['max_rel_power_deviation']:.1e}; "
          f"100,000 previews on one core: {mels['hours_100k_one_core_ours']:.2f} h")
    train = [bench_training("cpu")] + ([bench_training("cuda")] if torch.cuda.is_available() else [])
    for t in train:
        print(f"training on {t['device']}: {t['pairs_per_s']:.0f} pairs/s ({t['tracks_per_s']:.0f} tracks/s)")
    if len(train) == 2:
        print(f"gpu / cpu: {train[1]['pairs_per_s'] / train[0]['pairs_per_s']:.1f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"mels": mels, "training": train}, indent=1))


if __name__ == "__main__":
    main()
