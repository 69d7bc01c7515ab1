"""Join extracted features with the catalogue's track, artist and album metadata into the model table.

    python -m pipelines.build FEATURES_DIR SPD_DIR OUT.parquet

One row per feature row (failed extractions kept, with their ``error``), plus ``artist_id``, the metadata
columns (artist popularity, log followers, number of markets, release year) and the ``popularity`` target.
Records of the SPD tables that cannot be parsed are listed with line and reason, never fatal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hitmodels.data import build_model_table, load_spd, training_rows
from hitmodels.entry import module_main
from pipelines.extract import read_features


def run(features_dir: str | Path, catalogue: str | Path, out: str | Path) -> Path:
    cat = load_spd(catalogue)
    for r in cat.rejects.itertuples():
        print(f"build: skipped {r.file} line {r.line}: {r.reason}", file=sys.stderr)
    features = read_features(features_dir)
    table = build_model_table(features, cat)
    # the extraction settings travel with the table (pandas keeps attrs in the Parquet file) into every bundle
    table.attrs = {k: v for k, v in features.attrs.items() if k == "feature_config"}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out, index=False)
    print(f"build: {len(table)} rows ({len(training_rows(table))} usable for training) -> {out}", file=sys.stderr)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", help="feature directory written by hitmusic extract, local or s3://")
    p.add_argument("catalogue", type=Path, help="SPD directory (with 'Data Sources/')")
    p.add_argument("out", type=Path, help="model table to write (Parquet)")


def main_from_args(args: argparse.Namespace) -> int:
    run(args.features, args.catalogue, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main(__doc__, "python -m pipelines.build", add_arguments, main_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
