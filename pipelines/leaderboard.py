"""Fit every model family on the same split, register each, and promote the best: the champion is the best
model the system can make on this table, whatever its family.

    python -m pipelines.leaderboard TABLE [--families hitmusicnet,lasso,hgb] [--json]
    hitmusic leaderboard .hitmusic/model_table.parquet --promote if-better

Every family is trained by the same code as ``hitmusic train --family F``, in its default configuration
(HitMusicNet: the small-table variant 1-S), on the same fit / validation /
calibration / test split (``--seed``, the split settings of :class:`~hitmodels.config.TrainConfig`), and
registered as a new version of ``--model-name`` (each version stores its test rows' track ids and the
dataset fingerprint). The table compares them on the held-out test rows: MAE (popularity / 100), R²,
Spearman, Kendall's tau within the top 10 % (Yu et al.), the conformal interval's coverage, and fit seconds.
The row with the best selection metric (MAE, lower is better) is then promoted:

- ``--promote if-better`` (default): only if it is no worse than the current champion on the rows both held
  out (:func:`hitmodels.registry.promote_if_better`); a champion trained on other data is left alone, with
  the reason;
- ``--promote always``: made the champion regardless; ``--promote never``: only reported.

The comparison is logged as an MLflow run (the family runs are nested under it) with the table as
``leaderboard.md`` and ``leaderboard.json`` artifacts. ``--json`` prints
``{"rows": [{"family", "version", "test_mae", "r2", "spearman", "kendall_top10", "coverage",
"fit_seconds"}, ...], "champion": {"family", "version"}, ...}`` on stdout (progress goes to stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from hitmodels import families
from hitmodels.config import TrainConfig
from hitmodels.config import tracking_uri as resolve_tracking_uri
from hitmodels.entry import module_main

COLUMNS = [("family", "family", "{}"), ("version", "version", "{}"), ("test_mae", "test MAE", "{:.4f}"),
           ("r2", "R²", "{:.3f}"), ("spearman", "Spearman", "{:.3f}"), ("kendall_top10", "Kendall@10%", "{:.3f}"),
           ("coverage", "coverage", "{:.0%}"), ("fit_seconds", "fit s", "{:.1f}")]
PROMOTE = ("if-better", "always", "never")


def markdown(rows: list[dict], metric: str) -> str:
    """The leaderboard as a Markdown table, best first."""
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[k]) if r.get(k) is not None else "" for k, _, fmt in COLUMNS)
                     + " |")
    return "\n".join(lines) + f"\n\nSorted by test {metric.upper()} (popularity / 100), best first.\n"


def row_of(result, metric: str = "mae") -> dict:
    m = result.metrics
    return {"family": result.family, "selection": m[f"test_{metric}"], "version": result.version, "test_mae": m["test_mae"], "r2": m["test_r2"],
            "spearman": m["test_spearman"], "kendall_top10": m.get("test_kendall_top10"),
            "coverage": m.get("test_coverage"), "fit_seconds": result.seconds,
            "test_mae_predict_mean": m["test_mae_predict_mean"], "run_id": result.run_id}


def rank(rows: list[dict], higher_is_better: bool = False) -> list[dict]:
    """Rows best first on their selection metric (ties keep the order the families were given in)."""
    return sorted(rows, key=lambda r: -r["selection"] if higher_is_better else r["selection"])


def run(table_path: str | Path, family_names: list[str], base: TrainConfig = TrainConfig(),
        tracking_uri: str | None = None, promote: str = "if-better",
        progress=lambda msg: print(f"leaderboard: {msg}", file=sys.stderr)) -> dict:
    """Fit, register and compare ``family_names`` on one table; returns the ``--json`` document."""
    import mlflow

    from mlflow.exceptions import MlflowException

    from hitmodels.registry import CHAMPION, NOT_FOUND, client, promote as set_alias, promote_if_better
    from hitmodels.train import dataset_fingerprint, train
    from hitmodels.data import training_rows

    if promote not in PROMOTE:
        raise ValueError(f"unknown --promote {promote!r}; choose {', '.join(PROMOTE)}")
    fams = [families.get(n) for n in family_names]
    if not fams:
        raise ValueError("no families to compare")
    apart = [f for f in fams if f.input_kind != "rows"]
    if apart:  # its versions cannot answer feature rows: they go to a registered model of their own
        raise ValueError(f"{apart[0].name} is a family on {apart[0].input_kind!r} input with a registered model of "
                         f"its own ({apart[0].registered_model}), not a row of this leaderboard; compare its variants "
                         f"with hitmusic evaluate --family {apart[0].name}")
    metrics = {(f.metric, f.higher_is_better) for f in fams}
    if len(metrics) > 1:
        raise ValueError(f"the families are selected on different metrics {sorted(metrics)}: no common ranking")
    metric, higher = metrics.pop()
    for f in fams:  # every configuration checked before the first fit
        f.check(f.default_config(replace(base, family=f.name)))
    tracking_uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    table = pd.read_parquet(table_path)
    fingerprint = dataset_fingerprint(training_rows(table))
    experiment = mlflow.set_experiment(base.experiment)
    c = mlflow.MlflowClient()
    parent = c.create_run(experiment.experiment_id, run_name="leaderboard",
                          tags={"leaderboard": "true", "dataset_fingerprint": fingerprint,
                                "families": ",".join(family_names)})
    parent_id = parent.info.run_id
    rows = []
    try:
        for f in fams:
            progress(f"fitting {f.label} ...")
            cfg = f.default_config(replace(base, family=f.name, name=f.name))
            result = train(table, cfg, tracking_uri, parent_run_id=parent_id, tags={"leaderboard_run": parent_id})
            rows.append(row_of(result, metric))
            progress(f"{f.label}: version {result.version}, test MAE {result.metrics['test_mae']:.4f} "
                     f"({result.seconds:.1f} s)")
        rows = rank(rows, higher)
        best = rows[0]
        if promote == "always":
            set_alias(base.model_name, best["version"], CHAMPION, tracking_uri)
            promoted, reason = True, f"version {best['version']} ({best['family']}) promoted (--promote always)"
        elif promote == "if-better":
            try:
                promoted, reason = promote_if_better(base.model_name, best["version"], table, tracking_uri)
            except ValueError as exc:
                promoted, reason = False, f"not promoted: {exc}"
        else:
            promoted, reason = False, "not promoted (--promote never)"
        try:
            mv = client(tracking_uri).get_model_version_by_alias(base.model_name, CHAMPION)
            champion = {"family": (mv.tags or {}).get("model_family", "hitmusicnet"), "version": str(mv.version)}
        except MlflowException as exc:  # no champion at all (--promote never on a new model)
            if exc.error_code not in NOT_FOUND:
                raise
            champion = None
        text = markdown(rows, metric)
        doc = {"model_name": base.model_name, "metric": metric, "dataset_fingerprint": fingerprint, "rows": rows,
               "best": {"family": best["family"], "version": best["version"]}, "champion": champion,
               "promoted": promoted, "reason": reason, "mlflow_run_id": parent_id}
        for r in rows:
            for k in ("test_mae", "r2", "spearman", "kendall_top10", "coverage", "fit_seconds"):
                if r.get(k) is not None:
                    c.log_metric(parent_id, f"{r['family']}.{k}", float(r[k]))
        c.log_text(parent_id, text, "leaderboard.md")
        c.log_dict(parent_id, doc, "leaderboard.json")
        c.set_tag(parent_id, "best_family", best["family"])
        c.set_tag(parent_id, "best_version", best["version"])
        c.set_terminated(parent_id)
    except BaseException:
        c.set_terminated(parent_id, status="FAILED")
        raise
    return doc


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("table", type=Path, help="model table (Parquet) from hitmusic build")
    p.add_argument("--families", default=",".join(["hitmusicnet", "lasso", "hgb"]),
                   help=f"families to compare, comma-separated (default hitmusicnet,lasso,hgb; known: "
                        f"{', '.join(families.names())})")
    p.add_argument("--promote", choices=PROMOTE, default="if-better",
                   help="promote the best row: if-better (default: only if no worse than the champion on the "
                        "rows both held out), always, never")
    p.add_argument("--model-name", default=d.model_name, help=f"registered model name (default {d.model_name})")
    p.add_argument("--experiment", default=d.experiment, help=f"MLflow experiment (default {d.experiment})")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--epochs", type=int, default=d.mlp_epochs, help="HitMusicNet's maximum epochs (default 100)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the split and the fits (default {d.seed})")
    p.add_argument("--json", action="store_true", help="print the leaderboard as JSON on stdout")


def main_from_args(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.families.split(",") if n.strip()]
    base = TrainConfig(model_name=args.model_name, experiment=args.experiment, ae_epochs=args.epochs,
                       mlp_epochs=args.epochs, seed=args.seed)
    # MLflow prints its registration messages on stdout: stdout is kept for the result alone
    with contextlib.redirect_stdout(sys.stderr):
        doc = run(args.table, names, base, args.tracking_uri, args.promote)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(markdown(doc["rows"], doc["metric"]))
        print(doc["reason"])
        if doc["champion"]:
            print(f"champion: {args.model_name} version {doc['champion']['version']} ({doc['champion']['family']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main(__doc__, "python -m pipelines.leaderboard", add_arguments, main_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
