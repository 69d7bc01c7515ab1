"""Evaluate HitMusicNet as the paper does: stratified k-fold CV of its named configurations next to the
classical baselines, with a report (Markdown + PNG plots) also logged to an MLflow run.

    python -m pipelines.evaluate SOURCE [--out DIR] [--configs 1-A,1-B,2-B,3-C] [--folds 5] [--json]
    hitmusic evaluate .hitmusic/model_table.parquet          # the table hitmusic build wrote
    hitmusic evaluate /data/SpotGenTrack --out spd-report     # the real SPD download: the paper's experiment

With ``--family siamese`` (or another family with named variants) it evaluates that family's variants as
Yu et al. (ICASSP 2018) do instead: 10 folds of 8:1:1 (a part tests, the next validates, the rest fits),
nDCG / Kendall / Spearman on the top 10 % of each fold's test rows and MAE, averaged over the folds, in a
report shaped like their Table 1 next to their figures; ``--tags`` adds each variant with the tag branch::

    hitmusic evaluate table.parquet --family siamese --mels .hitmusic/mels [--tags] [--variants ab,naive] --json

SOURCE is a model table (Parquet, as ``hitmusic build`` writes it) or an SPD directory whose
"Features Extracted/" folder holds the published low_level_audio_features.csv and lyrics_features.csv (joined
with "Data Sources/" for metadata and popularity; no audio is extracted).

Procedure: 20 % of the rows are held out as the test set (stratified on popularity); the rest is split into
k stratified folds; each configuration (``1-A`` ... ``3-D``: δ 1/5, 1/4, 1/7 by model; A Adadelta + Glorot
uniform, B Adam + Glorot uniform, C Adadelta + He normal, D Adam + He normal; and ``1-S``, our small-table
variant, in the default set) and each baseline (MLR, MLR +
Lasso, LDA and MLP on 2 classes, HistGradientBoosting) is fitted on the same folds with scaling fitted on the
training folds only. The report gives validation metrics averaged over the folds, and the held-out test
metrics of every fold's model averaged, next to the published figures. ``--json`` prints the averaged
metrics as JSON on stdout (progress goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path

import pandas as pd

from hitmodels.baselines import LABELS
from hitmodels.entry import module_main
from hitmodels.config import CONFIGS, EvaluateConfig, TrainConfig, default_home
from hitmodels.config import tracking_uri as resolve_tracking_uri
from pipelines.train import add_fit_arguments, fit_settings


def load_table(args: argparse.Namespace) -> pd.DataFrame:
    """The table to evaluate, as the flags ask: its source, a sample of ``--max-rows``, without the tagger's
    columns with ``--no-tag-columns``."""
    table = load_source(args.source, not args.no_spotify_descriptors)
    if args.max_rows and len(table) > args.max_rows:
        table = table.sample(args.max_rows, random_state=args.seed).reset_index(drop=True)
    if args.no_tag_columns:
        table = table.drop(columns=[c for c in table.columns if c.startswith("tag_")])
    return table


def load_source(source: Path, spotify_descriptors: bool = True) -> pd.DataFrame:
    """A model table from a Parquet file or from an SPD directory's "Features Extracted/" folder."""
    from hitmodels.spd_features import has_spd_features, load_spd_model_table

    if source.is_dir() and has_spd_features(source):
        table, rejects = load_spd_model_table(source, spotify_descriptors)
        for r in rejects.itertuples():
            print(f"evaluate: skipped {r.file} line {r.line}: {r.reason}", file=sys.stderr)
        return table
    if source.is_dir() and not list(source.glob("*.parquet")):
        raise FileNotFoundError(f"{source} is neither a Parquet model table nor an SPD directory with "
                                f"'Features Extracted/low_level_audio_features.csv'")
    return pd.read_parquet(source)


def _names(text: str, allowed, what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; choose from {', '.join(allowed)}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    e = EvaluateConfig()
    p.add_argument("source", type=Path, help="model table (Parquet) or SPD directory with 'Features Extracted/'")
    p.add_argument("--out", type=Path, default=None, help="report directory (default $HITMUSIC_HOME/report)")
    p.add_argument("--configs", default=",".join(e.configs),
                   help=f"paper configurations to run (default {','.join(e.configs)}; any of "
                        f"{', '.join(CONFIGS)})")
    p.add_argument("--baselines", default=",".join(e.baselines),
                   help=f"baselines to run, '' for none (default {','.join(e.baselines)})")
    p.add_argument("--folds", type=int, default=None,
                   help=f"CV folds (default {e.n_folds}; with --family, 10: 8:1:1 per fold)")
    p.add_argument("--family", default=None,
                   help="evaluate this family's named variants as Yu et al. do (siamese: rating-only, naive, artist, "
                        "ab, ab+artist) instead of HitMusicNet's configurations and the baselines")
    p.add_argument("--variants", default="", help="with --family: the variants to run (default: all)")
    p.add_argument("--tags", action="store_true", help="with --family: also every variant with the tag branch (+tag)")
    p.add_argument("--mels", default=None, help="with --family siamese: the mel store (hitmusic mels)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="with --family: a setting shared by every variant (e.g. epochs=30); repeatable")
    add_fit_arguments(p, splits=("stratified", "artist", "both"))
    p.add_argument("--max-rows", type=int, default=None, help="evaluate a random sample of this many rows")
    p.add_argument("--no-spotify-descriptors", action="store_true",
                   help="SPD directory only: leave out Spotify's acousticness, danceability, ... columns")
    p.add_argument("--no-tag-columns", action="store_true",
                   help="leave out the tagger's tag_* columns (hitmusic extract --tags), to measure what they add "
                        "on the same rows and folds; with --family --tags the tag branch then reads genre_*")
    p.add_argument("--sizes", default="",
                   help="also a learning curve by data size: e.g. 200,1000,5000 evaluates random samples of that "
                        "many rows the same way, and writes test MAE against training rows per model "
                        "(size_curve.png, size_curve.json, and 'sizes' in --json)")
    p.add_argument("--json", action="store_true", help="print the averaged metrics as JSON on stdout")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the evaluation to MLflow")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--experiment", default=e.experiment, help=f"MLflow experiment (default {e.experiment})")


def _metric_name(model: str, split: str, metric: str) -> str:
    return f"{re.sub(r'[^0-9A-Za-z_.-]+', '_', model).strip('_')}.{split}_{metric}"


def reachable(uri: str, timeout_s: float = 3.0) -> bool:
    """Whether an http(s) tracking server answers (other URIs, files and databases, always count)."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def log_to_mlflow(result, report: Path, args: argparse.Namespace) -> str | None:
    """Log parameters, averaged metrics and the report directory; ``None`` (and a warning) when the
    tracking server is down, since the report on disk is the evaluation's main product."""
    import mlflow

    uri = resolve_tracking_uri(args.tracking_uri)
    if not reachable(uri):
        print(f"evaluate: MLflow at {uri} does not answer (start it with 'hitmusic up'); report not logged",
              file=sys.stderr)
        return None
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(args.experiment)
    with mlflow.start_run() as run:
        mlflow.log_params({"source": str(args.source), "configs": args.configs, "baselines": args.baselines,
                           "folds": args.folds, "epochs": args.epochs, "class_scheme": args.class_scheme,
                           "coverage": args.coverage, "seed": args.seed, "n_rows": result.n_rows,
                           "n_features": result.n_features, "n_test": result.n_test})
        mlflow.log_metrics({_metric_name(m, s, k): v for m, splits in result.means().items()
                            for s, metrics in splits.items() for k, v in metrics.items()})
        mlflow.log_artifacts(str(report.parent), artifact_path="report")
        return run.info.run_id


def evaluate_variants(args: argparse.Namespace) -> int:
    """``--family``: the family's named variants over k folds of 8:1:1 (:mod:`hitmodels.variants`)."""
    from hitmodels import families
    from hitmodels.report import YU_TABLE1, variants_markdown
    from hitmodels.variants import cross_validate_variants
    from pipelines.train import parse_params, store_uri

    fam = families.get(args.family)
    variants = fam.variants(args.tags)
    if args.variants:
        variants = {n: variants[n] for n in _names(args.variants, list(variants), "variant")}
    params = parse_params(args.param)
    if args.mels is not None:
        params["mels"] = store_uri(args.mels)
    settings = fit_settings(args)
    if settings["split"] == "both":
        raise ValueError("--split both is for HitMusicNet's evaluation; with --family choose stratified or artist")
    base = TrainConfig(**settings, family=fam.name, params=params)
    table = load_table(args)
    result = cross_validate_variants(table, fam.name, variants, base, k=args.folds or 10,
                                     progress=lambda msg: print(f"evaluate [{fam.name}]: {msg}", file=sys.stderr))
    home = Path(args.home) if getattr(args, "home", None) else default_home()
    out = Path(args.out or home / "report")
    out.mkdir(parents=True, exist_ok=True)
    tag_cols = [c for c in table.columns if c.startswith("tag_")]
    tags = ("the tagger's activations (tag_* columns)" if tag_cols else
            "the catalogue's descriptors (the artist's genre families, genre_*): no tagger activations in this "
            "table") if args.tags else "off"
    report = out / "report.md"
    report.write_text(variants_markdown(result, str(args.source), tags))
    (out / "variants.json").write_text(json.dumps({name: rows for name, rows in result.folds.items()}, indent=1))
    print(f"evaluate: report -> {report}", file=sys.stderr)
    if args.json:
        print(json.dumps({"family": fam.name, "n_rows": result.n_rows, "folds": result.n_folds, "split": result.split,
                          "tags": tags, "report": str(report), "models": result.means(),
                          "seconds": result.seconds,
                          "published": {name: dict(zip(("model", "ndcg_top10", "kendall_top10", "spearman_top10"),
                                                       row)) for name, *row in YU_TABLE1}}, indent=2))
    return 0


def main_from_args(args: argparse.Namespace) -> int:
    from hitmodels.report import PUBLISHED, write_report
    from hitmodels.crossval import cross_validate

    if args.family:
        return evaluate_variants(args)
    if args.tags or args.variants or args.mels or args.param:
        raise ValueError("--tags, --variants, --mels and --param go with --family")
    args.folds = args.folds or EvaluateConfig().n_folds

    configs = _names(args.configs, CONFIGS, "configuration")
    baselines = _names(args.baselines, list(LABELS), "baseline")
    settings = fit_settings(args)
    splits = ["stratified", "artist"] if settings["split"] == "both" else [settings["split"]]
    ecfg = replace(EvaluateConfig(), configs=configs, baselines=baselines, n_folds=args.folds, seed=args.seed,
                   experiment=args.experiment)
    table = load_table(args)
    home = Path(args.home) if getattr(args, "home", None) else default_home()
    out = args.out or home / "report"
    results, reports = {}, {}
    for split in splits:
        base = TrainConfig(**{**settings, "split": split})
        results[split] = cross_validate(table, base, ecfg,
                                        progress=lambda msg, s=split: print(f"evaluate [{s}]: {msg}", file=sys.stderr))
        reports[split] = write_report(results[split], out if len(splits) == 1 else Path(out) / split)
    report = reports[splits[0]] if len(splits) == 1 else write_split_comparison(results, reports, Path(out))
    result = results[splits[0]]
    curve = size_curve(table, TrainConfig(**{**settings, "split": splits[0]}), ecfg, parse_sizes(args.sizes),
                       Path(out)) if args.sizes else None
    run_id = None if args.no_mlflow else log_to_mlflow(result, report, args)
    print(f"evaluate: report -> {report}" + (f" (MLflow run {run_id})" if run_id else ""), file=sys.stderr)
    if args.json:
        print(json.dumps({"n_rows": result.n_rows, "n_features": result.n_features, "n_test": result.n_test,
                          "folds": args.folds, "thresholds": list(result.thresholds), "report": str(report),
                          "mlflow_run_id": run_id, "split": splits[0], "models": result.means(),
                          "splits": {s: r.means() for s, r in results.items()},
                          "sizes": {str(k): v for k, v in curve.items()} if curve else None,
                          "published": PUBLISHED}, indent=2))
    return 0


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--sizes {text!r}: expected whole numbers separated by commas") from None
    if not sizes or sizes[0] < 20:
        raise ValueError(f"--sizes {text!r}: every size must be at least 20 rows")
    return sizes


def size_curve(table: pd.DataFrame, base: TrainConfig, ecfg: EvaluateConfig, sizes: list[int],
               out: Path) -> dict[int, dict[str, float]]:
    """Test MAE per model for random samples of ``sizes`` rows (sizes beyond the table are skipped, said on
    stderr), evaluated as the whole table is; keyed by the training rows of each (the rows not held out for
    test). Writes ``size_curve.png`` and ``size_curve.json`` into ``out``."""
    from hitmodels.crossval import cross_validate
    from hitmodels.data import training_rows
    from hitmodels.report import plot_size_curve

    rows = training_rows(table)
    curve: dict[int, dict[str, float]] = {}
    for n in sizes:
        if n > len(rows):
            print(f"evaluate: --sizes {n} is more than the table's {len(rows)} usable rows: skipped", file=sys.stderr)
            continue
        sample = rows.sample(n, random_state=base.seed).reset_index(drop=True)
        result = cross_validate(sample, base, ecfg, progress=lambda msg, n=n: print(f"evaluate [{n} rows]: {msg}",
                                                                                    file=sys.stderr))
        curve[n - result.n_test] = {m: v["test"]["mae"] for m, v in result.means().items() if "mae" in v.get("test", {})}
    out.mkdir(parents=True, exist_ok=True)
    (out / "size_curve.json").write_text(json.dumps({str(k): v for k, v in curve.items()}, indent=1))
    if curve:
        plot_size_curve(curve, out / "size_curve.png")
    return curve


def write_split_comparison(results: dict, reports: dict, out: Path) -> Path:
    """``report.md`` in ``out``: test MAE and Spearman of every model under each split, side by side, linking
    each split's full report."""
    splits = list(results)
    models = list(dict.fromkeys(m for r in results.values() for m in r.means()))
    header = ["model"] + [f"{s} {k}" for s in splits for k in ("test MAE", "test Spearman")]
    lines = ["# Evaluation: stratified vs. artist-grouped split", "",
             "The same models and folds' settings under two splits. Artist-grouped: no artist has tracks on both "
             "sides of any cut, so a model cannot score well by recognising an artist whose other tracks it "
             "trained on (SPD's artist popularity is derived from its tracks' popularity). Full reports: "
             + ", ".join(f"[{s}]({Path(reports[s]).relative_to(out)})" for s in splits) + ".", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in models:
        cells = []
        for s in splits:
            t = results[s].means().get(m, {}).get("test", {})
            cells += [f"{t['mae']:.4f}" if "mae" in t else "", f"{t['spearman']:.3f}" if "spearman" in t else ""]
        lines.append("| " + " | ".join([m] + cells) + " |")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    return module_main(__doc__, "python -m pipelines.evaluate", add_arguments, main_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
