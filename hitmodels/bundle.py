"""A registered version's bundle: the family's files (weights and JSON or arrays, never pickles) and a
manifest, ``bundle.json``, that names the family, the input it takes, the outputs it gives and the
:class:`~hitmodels.config.FeatureConfig` its features were extracted with.

    {"format": 1, "family": "hgb", "input": {"kind": "rows", "columns": [...]}, "outputs": [...],
     "feature_config": {...}, "feature_schema_version": 3, "config": "hgb", "files": ["model.json", ...]}

Loading reads the manifest, asks the family for its loader and lets it read only the files the family
declares (:attr:`~hitmodels.families.base.Family.files`). Versions registered before the manifest existed
are HitMusicNet bundles (``weights.pt``, ``arch.json``, ``preprocess.json``) and still load.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from . import families
from .config import FEATURE_SCHEMA_VERSION, FeatureConfig
from .predict import RowModel

MANIFEST = "bundle.json"
FORMAT = 1
LEGACY = {"format": 0, "family": "hitmusicnet", "files": ["weights.pt", "arch.json", "preprocess.json"]}


def feature_config_of(table) -> FeatureConfig:
    """The extraction settings a model table records (``attrs``, kept in its Parquet file by ``hitmusic
    build``); this version's defaults for tables from before they were recorded."""
    return FeatureConfig.from_dict(getattr(table, "attrs", {}).get("feature_config"))


def write_bundle(directory: Path, model: RowModel, feature_config: FeatureConfig | None = None) -> list[str]:
    """Save ``model`` with its family's writer and the manifest (``feature_config``: the settings its
    training table's features were extracted with); returns the file names written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    family = families.get(model.family)
    files = list(family.save(model, directory))
    manifest = {"format": FORMAT, "family": family.name,
                "input": {"kind": family.input_kind, "columns": list(model.columns)},
                "outputs": list(model.outputs), "feature_config": asdict(feature_config or FeatureConfig()),
                "feature_schema_version": FEATURE_SCHEMA_VERSION, "config": model.config, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return [MANIFEST, *files]


def parse_manifest(text: str | None) -> dict:
    """The manifest (``None``: a bundle from before manifests), its family known and its files the family's."""
    manifest = dict(LEGACY) if text is None else json.loads(text)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("family"), str):
        raise ValueError("bundle manifest is not a JSON object naming a family")
    if not isinstance(manifest.get("input", {}), dict) or manifest.get("format", 0) > FORMAT:
        raise ValueError(f"bundle manifest of format {manifest.get('format')!r} with input "
                         f"{manifest.get('input')!r}: this code reads format {FORMAT} and below")
    try:
        family = families.get(manifest["family"])
    except TypeError as exc:  # a broken plug-in
        raise ValueError(str(exc)) from None
    files = manifest.get("files")
    if not isinstance(files, list) or sorted(map(str, files)) != sorted(family.files):
        raise ValueError(f"bundle manifest lists files {files!r}; the {family.name} family reads exactly "
                         f"{list(family.files)}")
    return manifest


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    return parse_manifest(path.read_text() if path.is_file() else None)


def load_bundle(directory: Path) -> RowModel:
    """The model saved in ``directory``, built by its family's loader."""
    manifest = read_manifest(directory)
    model = families.get(manifest["family"]).load(Path(directory))
    # what Serve and batch scoring extract features of new audio with, as the training table was
    model.feature_config = FeatureConfig.from_dict(manifest.get("feature_config"))
    columns = manifest.get("input", {}).get("columns")
    if columns is not None and list(columns) != list(model.columns):
        raise ValueError("bundle manifest and model disagree on the input columns")
    return model


def bundle_artifacts(directory: Path) -> dict[str, str]:
    """The pyfunc ``artifacts`` mapping of a bundle directory: every file, keyed by its stem (``weights``,
    ``arch``, ``bundle``, ...), so that MLflow stores each at ``artifacts/<file>``."""
    files = [MANIFEST, *read_manifest(directory)["files"]] if (Path(directory) / MANIFEST).is_file() \
        else LEGACY["files"]
    return {Path(f).stem: str(Path(directory) / f) for f in files}


def read_bundle_files(directory: Path) -> dict[str, bytes]:
    """Every file of a bundle as bytes (to hand a bundle from a Ray worker to the driver)."""
    return {Path(p).name: Path(p).read_bytes() for p in bundle_artifacts(directory).values()}


class RegisteredModel(mlflow.pyfunc.PythonModel):
    """What MLflow's own ``mlflow.pyfunc.load_model`` builds from a version (models-from-code,
    ``hitmodels/pyfunc_code.py``): the bundle loaded by its family, answering ``predict``."""

    model: RowModel | None = None

    def load_context(self, context):
        self.model = load_bundle(Path(next(iter(context.artifacts.values()))).parent)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.model.predict(context, model_input, params)
