"""``hitmusic``: every step a user takes, one subcommand each. ``hitmusic <command> --help`` is its manual.

Typical session (what ``hitmusic demo`` runs):

    hitmusic up                                   # local Ray + MLflow server (SQLite) in the background
    hitmusic synth .hitmusic/catalogue            # sample catalogue in the SPD layout, with audio
    hitmusic extract .hitmusic/catalogue/manifest.parquet .hitmusic/features
    hitmusic mels .hitmusic/catalogue/manifest.parquet .hitmusic/mels   # log-mel store for --family siamese
    hitmusic build .hitmusic/features .hitmusic/catalogue .hitmusic/model_table.parquet
    hitmusic train .hitmusic/model_table.parquet  # logs a run, registers a new model version
    hitmusic promote --version 1                  # alias 'champion' -> version 1
    hitmusic leaderboard .hitmusic/model_table.parquet   # every family on one split; the best promoted
    hitmusic tune .hitmusic/model_table.parquet   # Ray Tune trials (nested MLflow runs), best registered
    hitmusic promote --version 2 --if-better --table .hitmusic/model_table.parquet
    hitmusic rollback                             # champion <- previous
    hitmusic serve                                # Ray Serve HTTP endpoint on 127.0.0.1:8000
    hitmusic score .hitmusic/model_table.parquet .hitmusic/scores
    hitmusic train .hitmusic/model_table.parquet --family siamese --mels .hitmusic/mels   # -> siamese-cnn
    hitmusic down                                 # stop Serve, Ray and MLflow

Environment: HITMUSIC_HOME (data directory, default ./.hitmusic), MLFLOW_TRACKING_URI (default
http://127.0.0.1:5000), RAY_ADDRESS (default: the local instance started by ``hitmusic up``). Ray always
runs with token auth: the token is ``$HITMUSIC_HOME/ray_auth_token`` (mode 0600, made by ``hitmusic up``)
unless RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH names another (a cluster's own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from .config import ServeSettings, ServiceConfig, SynthConfig


def _services(args) -> ServiceConfig:
    node_ip = {"ray_node_ip": args.node_ip} if getattr(args, "node_ip", None) else {}
    return ServiceConfig(home=Path(args.home).resolve(), mlflow_port=args.mlflow_port, serve_port=args.serve_port,
                         ray_port=args.ray_port, ray_dashboard_port=args.dashboard_port, **node_ip)


def _export_tracking(cfg: ServiceConfig) -> None:
    os.environ.setdefault("MLFLOW_TRACKING_URI", cfg.tracking_uri)


def cmd_up(args) -> int:
    from .services import up

    cfg = _services(args)
    info = up(cfg)
    running = info.pop("already_running")
    for k, v in info.items():
        print(f"{k}: {v}")
    if running:
        print(f"already running: {running.replace(',', ', ')} (nothing started for it)")
    print(f"""
Ray runs with token auth. Clients of this cluster (hitmusic itself reads the token from --home):
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={info['ray_token']}
  ray job submit --address {info['ray_dashboard']} -- python -m pipelines.score TABLE OUT
Dashboard in a browser: {info['ray_dashboard']} asks for the token (the file's contents).""")
    return 0


def cmd_down(args) -> int:
    from .services import down

    cfg = _services(args)
    n = down(cfg)
    print(f"stopped Serve and Ray on port {cfg.ray_port} ({n} processes; other Ray instances on this machine keep "
          "running) and the MLflow server")
    return 0


def cmd_synth(args) -> int:
    from .synth import generate

    cfg = SynthConfig(n_tracks=args.n_tracks, tracks_per_artist=args.tracks_per_artist, duration_s=args.duration,
                      sr=args.sr, seed=args.seed, audio_format=args.format,
                      full_length=args.full_length)
    paths = generate(args.out, cfg)
    print(f"synth: {cfg.n_tracks} tracks -> {args.out} (manifest: {paths['manifest']})")
    return 0


def cmd_promote(args) -> int:
    from .registry import latest_version, promote, promote_if_better

    _export_tracking(_services(args))
    version = args.version or latest_version(args.model).version
    if args.if_better:
        if args.table is None:
            raise ValueError("--if-better needs --table: the model table both versions are scored on")
        import pandas as pd

        promoted, reason = promote_if_better(args.model, version, pd.read_parquet(args.table))
        print(reason)
        return 0 if promoted else 1
    ref = promote(args.model, version, args.alias)
    print(f"{ref.name}@{args.alias} -> version {ref.version}")
    return 0


def cmd_rollback(args) -> int:
    from .registry import rollback

    _export_tracking(_services(args))
    ref = rollback(args.model)
    print(f"{ref.name}@champion -> version {ref.version} (rolled back)")
    return 0


def _with_tracking(fn: Callable) -> Callable:
    def run(args) -> int:
        _export_tracking(_services(args))
        return fn(args)

    return run


def cmd_demo(args) -> int:
    """Everything, end to end, on a generated catalogue; leaves the services running."""
    import pandas as pd

    from pipelines import build, extract, leaderboard, score
    from serve.deploy import deploy

    from .config import TrainConfig
    from .registry import promote_if_better
    from .services import up
    from .synth import generate

    svc = _services(args)
    home = svc.home
    t0 = time.monotonic()

    def step(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f} s] {msg}", flush=True)

    step("starting Ray and the MLflow server")
    urls = up(svc)
    os.environ["MLFLOW_TRACKING_URI"] = svc.tracking_uri
    catalogue = home / "catalogue"
    step(f"generating a {args.n_tracks}-track sample catalogue in {catalogue}")
    paths = generate(catalogue, SynthConfig(n_tracks=args.n_tracks, duration_s=args.duration))
    step("extracting features with Ray Data")
    extract.run(paths["manifest"], home / "features")
    step("building the model table")
    table_path = build.run(home / "features", catalogue, home / "model_table.parquet")
    step("leaderboard: HitMusicNet, MLR + Lasso and HistGradientBoosting on one split, each registered")
    board = leaderboard.run(table_path, ["hitmusicnet", "lasso", "hgb"],
                            TrainConfig(ae_epochs=args.epochs, mlp_epochs=args.epochs), svc.tracking_uri,
                            # the demo's catalogue is new each time: its best model is the champion
                            promote="always", progress=lambda msg: step(msg))
    model_name = board["model_name"]
    print(leaderboard.markdown(board["rows"], board["metric"]), flush=True)
    step(board["reason"])
    if args.tune_trials > 0:
        from pipelines import tune

        step(f"tuning HitMusicNet: {args.tune_trials} random trials with ASHA (Ray Tune), best retrained with "
             "Ray Train")
        trials, tuned = tune.run(table_path, num_samples=args.tune_trials, epochs=args.tune_epochs,
                                 name=f"demo-{int(time.time())}", tracking_uri=svc.tracking_uri)
        try:
            promoted, reason = promote_if_better(model_name, tuned.version, pd.read_parquet(table_path))
        except ValueError as exc:  # not comparable: the leaderboard's champion stays
            reason = f"not promoted: {exc}"
        step(f"tuned {len(trials)} trials; registered version {tuned.version} (test MAE "
             f"{tuned.metrics['test_mae']:.4f}); {reason}")
    step("deploying Ray Serve")
    url = deploy(ServeSettings(model_name=model_name, tracking_uri=svc.tracking_uri), svc.host, svc.serve_port)
    step("scoring the whole catalogue with a Ray job")
    champion = score.run(table_path, home / "scores", model_name, "champion", svc.tracking_uri)
    scores = score.read_scores(home / "scores")
    step(f"scored {len(scores)} tracks -> {home / 'scores'}")
    siamese = demo_siamese(args, svc, paths["manifest"], table_path, step) if args.siamese else ""
    table = pd.read_parquet(table_path)
    from .data import feature_columns, training_rows

    row = training_rows(table).iloc[0]
    example = {"rows": [{"track_id": row["track_id"], **{c: float(row[c]) for c in feature_columns(table)}}]}
    example_path = home / "example_request.json"
    example_path.write_text(json.dumps(example))
    print(f"""
Done in {time.monotonic() - t0:.0f} s.
  MLflow UI:      {urls['mlflow']}  (experiments '{model_name}' and '{model_name}-tune';
                  model '{model_name}', champion = version {champion.version}, {registered_family(champion)})
  Ray dashboard:  {urls['ray_dashboard']}
  Endpoint:       {url}/predict   (docs: {url}/docs)
  Scores:         {home / 'scores'}

Try it:
  curl -s {url}/
  curl -s -X POST {url}/predict -H 'Content-Type: application/json' -d @{example_path}
{siamese}
Stop everything with: make stop   (or: hitmusic down)""")
    return 0


def demo_siamese(args, svc, manifest: Path, table_path: Path, step) -> str:
    """The demo's second family: log-mel segments, the Siamese CNN trained, registered, promoted and served
    beside the feature-row champion; returns the lines it adds to the demo's summary."""
    import pandas as pd

    from pipelines import mels
    from serve.deploy import deploy, placement

    from .config import TrainConfig
    from .registry import promote
    from .train import train

    step("log-mel segments (Mid-30, HL-30) of every preview with Ray Data")
    mels.run(manifest, svc.home / "mels")
    step("the Siamese CNN (A/B pairs, MSE + ranking loss) on those segments, registered as siamese-cnn")
    name = "siamese-cnn"
    result = train(pd.read_parquet(table_path), TrainConfig(
        family="siamese", name="siamese-ab", model_name=name, experiment=name, mlp_epochs=args.epochs,
        params={"mels": str(svc.home / "mels")}), svc.tracking_uri)
    promote(name, result.version, tracking_uri=svc.tracking_uri)
    app, prefix = placement(name)
    url = deploy(ServeSettings(model_name=name, tracking_uri=svc.tracking_uri), svc.host, svc.serve_port,
                 app, prefix)
    step(f"siamese-cnn version {result.version} (test MAE {result.metrics['test_mae']:.4f}, Kendall@10% "
         f"{result.metrics['test_kendall_top10']:.3f}) served at {url}")
    audio = pd.read_parquet(manifest)["audio_uri"].iloc[0]
    return f"""  Siamese CNN:    {url}/predict/audio   (model '{name}', version {result.version}, beside the champion)
  curl -s -F file=@{audio} {url}/predict/audio
"""


def registered_family(ref) -> str:
    """The family a registered version says it is, for messages."""
    from .registry import client

    return (client().get_model_version(ref.name, ref.version).tags or {}).get("model_family", "hitmusicnet")


def build_parser() -> argparse.ArgumentParser:
    from pipelines import build, evaluate, extract, leaderboard, mels, score, tags, train, tune
    from serve import deploy

    p = argparse.ArgumentParser(prog="hitmusic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    d = ServiceConfig()
    common.add_argument("--home", default=str(d.home), help="data directory (default $HITMUSIC_HOME or ./.hitmusic)")
    common.add_argument("--mlflow-port", type=int, default=d.mlflow_port, help="MLflow server port (default 5000)")
    common.add_argument("--serve-port", type=int, default=d.serve_port, help="Serve HTTP port (default 8000)")
    common.add_argument("--ray-port", type=int, default=d.ray_port, help="Ray head's GCS port (default 6379)")
    common.add_argument("--dashboard-port", type=int, default=d.ray_dashboard_port,
                        help="Ray dashboard / jobs API port (default 8265)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, func: Callable, module=None) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, parents=[common], description=(module.__doc__ if module else help_),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        if module is not None:
            module.add_arguments(sp)
        sp.set_defaults(func=func)
        return sp

    up = add("up", "start the local Ray instance and the MLflow server in the background", cmd_up)
    up.add_argument("--node-ip", metavar="ADDRESS",
                    help="the address the Ray head advertises to nodes that join it: this machine's LAN address "
                         "when other machines join with `ray start --address ADDRESS:6379` (default "
                         "$HITMUSIC_RAY_NODE_IP or 127.0.0.1; the dashboard and MLflow stay on 127.0.0.1)")
    add("down", "stop Serve, Ray and the MLflow server", cmd_down)
    sp = add("synth", "generate a sample catalogue in the SPD layout, with audio and lyrics", cmd_synth)
    s = SynthConfig()
    sp.add_argument("out", type=Path, help="directory to write the catalogue to")
    sp.add_argument("--n-tracks", type=int, default=s.n_tracks, help=f"number of tracks (default {s.n_tracks})")
    sp.add_argument("--tracks-per-artist", type=int, default=s.tracks_per_artist,
                    help=f"tracks per artist (default {s.tracks_per_artist})")
    sp.add_argument("--duration", type=float, default=s.duration_s, help="preview length, s (default 30)")
    sp.add_argument("--sr", type=int, default=s.sr, help=f"sample rate of the previews (default {s.sr})")
    sp.add_argument("--format", choices=["wav", "flac", "ogg"], default=s.audio_format, help="audio file format")
    sp.add_argument("--seed", type=int, default=s.seed, help=f"random seed (default {s.seed})")
    sp.add_argument("--full-length", action="store_true",
                    help=f"full-length tracks ({s.full_length_s[0]:.0f}-{s.full_length_s[1]:.0f} s, seeded) with a "
                         f"louder, brighter {s.chorus_s:.0f} s chorus played twice at seeded positions "
                         "(recorded in popularity_truth.parquet), instead of previews of --duration")
    add("extract", "Ray Data job: audio + lyric features per track", lambda a: extract.main_from_args(a), extract)
    add("tags", "tag audio files with the pretrained 50-tag MagnaTagATune tagger (musicnn)",
        lambda a: tags.main_from_args(a), tags)
    add("mels", "Ray Data job: log-mel segments (Mid-30, HL-30) per track into a mel store",
        lambda a: mels.main_from_args(a), mels)
    add("build", "join features with metadata into the model table", lambda a: build.main_from_args(a), build)
    add("train", "train a model family (HitMusicNet by default), log to MLflow, register a version",
        _with_tracking(train.main_from_args), train)
    add("leaderboard", "fit every family on one split, register each, promote the best",
        _with_tracking(leaderboard.main_from_args), leaderboard)
    add("evaluate", "cross-validate the paper's configurations and baselines, write a report",
        _with_tracking(evaluate.main_from_args), evaluate)
    add("tune", "Ray Tune over model variants, trials in MLflow, best retrained and registered",
        _with_tracking(tune.main_from_args), tune)
    sp = add("promote", "point the 'champion' alias at a model version", cmd_promote)
    sp.add_argument("--model", default="hitmusicnet", help="registered model name (default hitmusicnet)")
    sp.add_argument("--version", default=None, help="version to promote (default: the latest)")
    sp.add_argument("--alias", default="champion", help="alias to set (default champion)")
    sp.add_argument("--if-better", action="store_true",
                    help="promote only if the version's selection metric (test MAE) is no worse than the "
                         "champion's on the rows of --table that both versions held out (their stored test "
                         "track ids); exits 1 when it is worse, 2 when the two cannot be compared fairly "
                         "(other data, feature schema or metric)")
    sp.add_argument("--table", type=Path, default=None, help="model table for --if-better")
    sp = add("rollback", "point 'champion' back at the 'previous' version", cmd_rollback)
    sp.add_argument("--model", default="hitmusicnet", help="registered model name (default hitmusicnet)")
    add("serve", "deploy the champion on Ray Serve (HTTP)", _with_tracking(deploy.main_from_args), deploy)
    add("score", "Ray job: score a catalogue with the champion into Parquet", _with_tracking(score.main_from_args),
        score)
    sp = add("demo", "run every step on a generated catalogue and leave the services up", cmd_demo)
    sp.add_argument("--n-tracks", type=int, default=200, help="tracks in the sample catalogue (default 200)")
    sp.add_argument("--duration", type=float, default=30.0, help="preview length, s (default 30)")
    sp.add_argument("--epochs", type=int, default=100, help="maximum training epochs (default 100)")
    sp.add_argument("--tune-trials", type=int, default=4, help="trials of the demo's tuning run (0: skip; default 4)")
    sp.add_argument("--tune-epochs", type=int, default=20, help="maximum epochs per tuning trial (default 20)")
    sp.add_argument("--no-siamese", dest="siamese", action="store_false",
                    help="skip the Siamese CNN (mel store, training, its own endpoint under /siamese-cnn)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .outdir import OutputLocked
    from .services import ServiceError, use_ray_auth

    # a progress bar per downloaded bundle file is noise on a terminal (MLflow's default)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # before anything imports Ray: every Ray client and local instance of ours runs with token auth
    use_ray_auth(Path(args.home).resolve())
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, LookupError, ServiceError, OutputLocked) as exc:
        print(f"hitmusic {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from .tracking import is_outage, outage_message

        if not is_outage(exc):
            raise
        print(f"hitmusic {args.command}: error: {outage_message(getattr(args, 'tracking_uri', None))}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
