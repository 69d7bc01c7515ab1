"""Soak: the online target load held for minutes on Ray Serve, beside the plain uvicorn peer, one run.

    .venv/bin/python benchmarks/bench_soak.py [--seconds 300] [--replicas 2] [--rate 100] [--no-peer]

Deploys a small HitMusicNet (``bench_online.serve_stack``) with ``--replicas`` replicas, then for
``--seconds`` offers at once, each on a fixed schedule (open loop): ``--rate`` single-track ``/predict``
requests per second, ``--batch-rate`` 256-track requests per second and ``--audio-rate`` ``/predict/audio``
uploads of a 30 s clip (one of ``../shared``'s MP3 previews, else a generated clip) per second. Prints, per
``--window`` seconds, the requests sent, failed and p50/p99 of each stream, and the replicas' resident memory
(RSS) at the start, at every window and at the end. Then the same single-track and 256-track load (the peer has
no audio route) against the plain FastAPI + uvicorn process of ``plain_app.py`` for the same time, and the
ratios Serve / plain. Targets (issue 16): no errors, single-track p99 <= 25 ms, replica memory flat.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_online import CLIENT_BACKLOG, JSON, plain_server, serve_stack, timed_open_loop  # noqa: E402
from hitmodels.config import ServeSettings, ServiceConfig  # noqa: E402
from hitmodels.services import INGRESS_CHOICES  # noqa: E402

SHARED_CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "audio" / "rock.mp3"


def clip_bytes(tmp: Path) -> tuple[str, bytes]:
    """A 30 s preview to upload: a real one from ``../shared`` where present, else a generated WAV."""
    if SHARED_CLIP.is_file():
        return SHARED_CLIP.name, SHARED_CLIP.read_bytes()
    import soundfile as sf

    from hitmodels.synth import synth_audio

    path = tmp / "clip.wav"
    sf.write(path, synth_audio(np.random.default_rng(0), 30.0, 22050, brightness=0.5, noisiness=0.2,
                                    tempo=120.0, root_hz=220.0), 22050)
    return path.name, path.read_bytes()


def replica_pids(app: str) -> list[int]:
    """``app``'s live replicas, from the GCS's actor table (the state API needs the dashboard)."""
    from ray._private import state

    return sorted(a["Pid"] for a in state.actors().values()
                  if a["State"] == "ALIVE" and a["ActorClassName"].startswith(f"ServeReplica:{app}:"))


class RssSampler:
    """Resident memory (MiB) of ``pids()`` every ``every_s`` seconds, in a thread: ``(seconds, {pid: MiB})``."""

    def __init__(self, pids, every_s: float):
        self.pids, self.every_s, self.samples, self.stop = pids, every_s, [], threading.Event()
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        rss = {}
        for pid in self.pids():
            try:
                rss[pid] = psutil.Process(pid).memory_info().rss / 2**20
            except psutil.Error:
                pass
        self.samples.append((time.monotonic() - self.t0, rss))

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.sample()

    def __enter__(self):
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.sample()


async def offered(streams: dict[str, tuple[str, float, dict]], seconds: float) -> dict[str, list]:
    """Every stream (name -> URL, rate, httpx request keywords) at once for ``seconds``; their records."""
    names = list(streams)
    results = await asyncio.gather(*[timed_open_loop(url, None, rate, seconds, request, max_in_flight=32)
                                     for url, rate, request in streams.values()])
    return dict(zip(names, results))


def summary(records: list, lo: float = 0.0, hi: float = float("inf")) -> tuple[int, int, float, float]:
    """Sent, failed (a request the generator held back, :data:`bench_online.CLIENT_BACKLOG`, included),
    p50 and p99 (ms) of the requests due in ``[lo, hi)`` s."""
    part = [r for r in records if lo <= r[0] < hi]
    ok = np.array([r[1] for r in part if r[2] == 200]) * 1000
    p50, p99 = np.percentile(ok, [50, 99]) if len(ok) else (float("nan"),) * 2
    return len(part), sum(r[2] != 200 for r in part), float(p50), float(p99)


def report(name: str, records: dict[str, list], rss: RssSampler, seconds: float, window: float) -> dict:
    print(f"\n{name}: per {window:g} s window, per stream: sent / failed / p50 ms / p99 ms; RSS MiB per process")
    for lo in np.arange(0, seconds, window):
        cells = []
        for stream, recs in records.items():
            n, bad, p50, p99 = summary(recs, lo, lo + window)
            cells.append(f"{stream} {n}/{bad}/{p50:.1f}/{p99:.1f}")
        mem = next((m for t, m in rss.samples if t >= lo + window), rss.samples[-1][1])
        print(f"  {lo:5.0f}-{lo + window:<5.0f} s  " + "  ".join(cells) +
              "  RSS " + " ".join(f"{v:.0f}" for v in mem.values()), flush=True)
    out = {stream: summary(recs) for stream, recs in records.items()}
    steady = {stream: summary(recs, window) for stream, recs in records.items()}
    print(f"{name} after the first window (warm: connections, caches, the allocator's arenas): " + "; ".join(
        f"{stream} {n} sent, {bad} failed, p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        for stream, (n, bad, p50, p99) in steady.items()))
    out["steady"] = steady
    start, end = rss.samples[0][1], rss.samples[-1][1]
    growth = {pid: end[pid] - start[pid] for pid in start if pid in end}
    out["rss"] = (start, end, growth)
    for stream, (n, bad, p50, p99) in ((k, v) for k, v in out.items() if k not in ("rss", "steady")):
        statuses = Counter(r[2] for r in records[stream] if r[2] != 200)
        print(f"{name} {stream}: {n} sent, {bad} failed, p50 {p50:.1f} ms, p99 {p99:.1f} ms; failures by status "
              f"{dict(sorted(statuses.items()))} (0: no answer, {CLIENT_BACKLOG}: held back by the generator)")
    print(f"{name} RSS MiB at start {[round(v) for v in start.values()]}, at end {[round(v) for v in end.values()]}, "
          f"growth {[round(v, 1) for v in growth.values()]}"
          f"{'' if set(start) == set(end) else ' (a process was replaced meanwhile)'}", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=300.0, help="duration of each soak (default 300)")
    p.add_argument("--rate", type=float, default=100.0, help="single-track requests per second (default 100)")
    p.add_argument("--batch-rate", type=float, default=2.0, help="256-track requests per second (default 2)")
    p.add_argument("--audio-rate", type=float, default=0.5, help="audio uploads per second (default 0.5)")
    p.add_argument("--replicas", type=int, default=2, help="Serve replicas (default 2)")
    p.add_argument("--window", type=float, default=30.0, help="seconds per reported window (default 30)")
    p.add_argument("--no-peer", action="store_true", help="skip the plain uvicorn peer (halves the run)")
    p.add_argument("--ingress", choices=INGRESS_CHOICES, default=ServiceConfig().serve_ingress,
                   help="Serve's HTTP ingress (default $HITMUSIC_SERVE_INGRESS or auto)")
    args = p.parse_args()
    import httpx

    from serve.deploy import deploy

    with serve_stack(args.ingress) as stack:
        row = stack["row"]
        one, batch = orjson.dumps({"rows": [row]}), orjson.dumps({"rows": [row] * 256})
        clip_name, clip = clip_bytes(stack["tmp"])
        url = deploy(ServeSettings(model_name="bench", tracking_uri=stack["uri"], poll_interval_s=10),
                     port=stack["serve_port"], app_name="soak", route_prefix="/", replicas=args.replicas)
        for _ in range(20):  # connections and the model warm, as after a deploy in production
            httpx.post(f"{url}/predict", content=one, headers=JSON, timeout=30)
        for _ in range(4 * args.replicas):  # every replica's first upload imports and compiles the audio path
            r = httpx.post(f"{url}/predict/audio", files={"file": (clip_name, clip)}, timeout=120)
            assert r.status_code == 200, r.text[:300]

        def streams(base: str, audio: bool) -> dict:
            out = {"1-track": (f"{base}/predict", args.rate, {"content": one, "headers": JSON}),
                   "256-track": (f"{base}/predict", args.batch_rate, {"content": batch, "headers": JSON})}
            if audio:
                out["audio"] = (f"{base}/predict/audio", args.audio_rate, {"files": {"file": (clip_name, clip)}})
            return out

        print(f"load: {os.getloadavg()}, cpus: {os.cpu_count()}, replicas: {args.replicas}, upload: {clip_name} "
              f"({len(clip) / 1e6:.2f} MB), {args.seconds:g} s each, poll_interval_s 10")
        with RssSampler(lambda: replica_pids("soak"), args.window / 3) as rss:
            served = report("serve", asyncio.run(offered(streams(url, True), args.seconds)), rss, args.seconds,
                            args.window)
        if args.no_peer:
            return 0
        with plain_server(stack["uri"]) as (proc, plain_url):
            for _ in range(20):
                httpx.post(f"{plain_url}/predict", content=one, headers=JSON, timeout=30)
            with RssSampler(lambda: [proc.pid], args.window / 3) as rss:
                plain = report("plain", asyncio.run(offered(streams(plain_url, False), args.seconds)), rss,
                               args.seconds, args.window)
        print("\nratios serve / plain (latency: lower is better), whole run and after the first window")
        for stream in ("1-track", "256-track"):
            s_all, p_all, s_st, p_st = served[stream], plain[stream], served["steady"][stream], plain["steady"][stream]
            print(f"  {stream} p50 {s_all[2] / p_all[2]:.2f}, p99 {s_all[3] / p_all[3]:.2f}; after the first "
                  f"window p50 {s_st[2] / p_st[2]:.2f}, p99 {s_st[3] / p_st[3]:.2f}")
        grow_s = max(served["rss"][2].values(), default=float("nan"))
        grow_p = max(plain["rss"][2].values(), default=float("nan"))
        print(f"  largest RSS growth: serve replica {grow_s:+.1f} MiB, plain process {grow_p:+.1f} MiB")
        errors = sum(v[1] for k, v in served.items() if k not in ("rss", "steady"))
        print(f"targets: no errors: {'met' if errors == 0 else f'NOT met ({errors})'}; single-track p99 <= 25 ms: "
              f"{'met' if served['1-track'][3] <= 25 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
