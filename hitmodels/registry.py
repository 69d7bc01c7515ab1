"""Model registry helpers: aliases (``champion``, ``previous``) instead of MLflow's retired stages."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException

from .config import tracking_uri as resolve_tracking_uri

CHAMPION = "champion"
# MLflow's error codes for a model, version or alias that does not exist
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
PREVIOUS = "previous"


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def client(uri: str | None = None) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=resolve_tracking_uri(uri))


def resolve(name: str, version_or_alias: str = CHAMPION, tracking_uri: str | None = None) -> ModelRef:
    """Pin an alias (or a version number) to a concrete version, so a whole job uses one version."""
    c = client(tracking_uri)
    if str(version_or_alias).isdigit():
        mv = c.get_model_version(name, str(version_or_alias))
    else:
        try:
            mv = c.get_model_version_by_alias(name, version_or_alias)
        except MlflowException as exc:
            if exc.error_code not in NOT_FOUND:  # an unreachable or failing server is not a missing alias
                raise
            raise LookupError(f"model {name!r} has no alias {version_or_alias!r}; promote a version first "
                              f"(hitmusic promote --model {name} --version N)") from exc
    return ModelRef(name, str(mv.version))


# What a registered version's bundle consists of (paths inside the logged model): weights and JSON, all data.
BUNDLE_FILES = {"weights": "artifacts/weights.pt", "arch": "artifacts/arch.json",
                "preprocess": "artifacts/preprocess.json"}


def load_model(ref: ModelRef, tracking_uri: str | None = None):
    """A registered version as a ready model, read as data: the bundle's weights (``torch.load`` with
    ``weights_only=True``) and JSON are downloaded from the configured tracking server and built with the
    package's own classes. Nothing the version carries is unpickled or executed (not its code file, not a
    ``python_model.pkl`` someone may have uploaded), so a registry user cannot run code in Serve replicas or
    scoring workers by registering a version."""
    import tempfile
    from pathlib import Path

    from .predict import HitMusicPyfunc, load_bundle

    uri = resolve_tracking_uri(tracking_uri)
    # The version's artifact location, asked of the configured server with an explicit client: models:/ URIs
    # resolve through process-wide MLflow settings, which a Ray worker without MLFLOW_TRACKING_URI lacks, and
    # which this function must not change (other code in the process may talk to another server).
    c = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    source = c.get_model_version_download_uri(ref.name, ref.version)
    if source.startswith("models:/m-"):  # MLflow 3: the version points at a logged model
        source = c.get_logged_model(source.removeprefix("models:/")).artifact_location
    with tempfile.TemporaryDirectory(prefix="hitmusic-model-") as tmp:
        local = {}
        for key, rel in BUNDLE_FILES.items():
            try:
                local[key] = mlflow.artifacts.download_artifacts(artifact_uri=f"{source.rstrip('/')}/{rel}",
                                                                 dst_path=tmp, tracking_uri=uri)
            except MlflowException as exc:
                if exc.error_code not in NOT_FOUND:  # an outage is not a missing file
                    raise
                raise LookupError(f"{ref.uri} has no {rel}: it was not registered by hitmusic (weights + JSON "
                                  "bundle)") from None
        missing = [k for k, v in local.items() if not Path(v).is_file()]
        if missing:
            raise LookupError(f"{ref.uri} lacks bundle file(s) {missing}")
        return HitMusicPyfunc(*load_bundle(local))


def latest_version(name: str, tracking_uri: str | None = None) -> ModelRef:
    versions = client(tracking_uri).search_model_versions(f"name='{name}'")
    if not versions:
        raise LookupError(f"model {name!r} has no registered version; run hitmusic train first")
    return ModelRef(name, str(max(int(v.version) for v in versions)))


def rollback(name: str, tracking_uri: str | None = None) -> ModelRef:
    """Point ``champion`` back at ``previous`` (and ``previous`` at the version just demoted)."""
    c = client(tracking_uri)
    try:
        prev = c.get_model_version_by_alias(name, PREVIOUS).version
    except MlflowException as exc:
        raise LookupError(f"model {name!r} has no '{PREVIOUS}' alias: nothing to roll back to") from exc
    return promote(name, str(prev), CHAMPION, tracking_uri)


def compare_on_test(name: str, candidate: str, incumbent: str, table, tracking_uri: str | None = None,
                    metric: str = "mae") -> tuple[float, float]:
    """``metric`` (MAE of popularity / 100; lower is better) of two versions on the same held-out rows: the
    candidate's own test split of ``table`` (re-derived from its logged split parameters), which the
    candidate never trained on."""
    from .config import TrainConfig
    from .data import training_rows
    from .evaluate import regression_metrics
    from .train import split_rows

    c = client(tracking_uri)
    params = c.get_run(c.get_model_version(name, candidate).run_id).data.params
    cfg = TrainConfig(test_size=float(params.get("test_size", TrainConfig.test_size)),
                      seed=int(params.get("seed", TrainConfig.seed)),
                      strat_bins=int(params.get("strat_bins", TrainConfig.strat_bins)))
    test = split_rows(training_rows(table), cfg).test
    truth = test["popularity"].to_numpy(float)
    scores = []
    for v in (candidate, incumbent):
        pred = load_model(ModelRef(name, v), tracking_uri).predict(None, test)["popularity"].to_numpy(float)
        scores.append(regression_metrics(truth, pred)[metric])
    return scores[0], scores[1]


def promote_if_better(name: str, version: str, table, tracking_uri: str | None = None) -> tuple[bool, str]:
    """Promote ``version`` only if its test MAE is no worse than the champion's on the same rows.
    Returns (promoted, reason)."""
    c = client(tracking_uri)
    try:
        champion = c.get_model_version_by_alias(name, CHAMPION).version
    except MlflowException:
        promote(name, version, CHAMPION, tracking_uri)
        return True, f"no champion yet: version {version} promoted"
    if str(champion) == str(version):
        return False, f"version {version} already is the champion"
    cand, inc = compare_on_test(name, str(version), str(champion), table, tracking_uri)
    if cand > inc:
        return False, (f"refused: version {version} has test MAE {cand:.5f}, worse than champion version "
                       f"{champion} ({inc:.5f}) on the same {name} test rows")
    promote(name, version, CHAMPION, tracking_uri)
    return True, f"promoted: version {version} test MAE {cand:.5f} <= champion version {champion} ({inc:.5f})"


def promote(name: str, version: str, alias: str = CHAMPION, tracking_uri: str | None = None) -> ModelRef:
    """Point ``alias`` at ``version``; the version it replaces (if any, and different) becomes ``previous``."""
    c = client(tracking_uri)
    c.get_model_version(name, str(version))  # fails clearly if the version does not exist
    try:
        old = c.get_model_version_by_alias(name, alias).version
    except MlflowException:
        old = None
    if old is not None and str(old) != str(version) and alias == CHAMPION:
        c.set_registered_model_alias(name, PREVIOUS, str(old))
    c.set_registered_model_alias(name, alias, str(version))
    return ModelRef(name, str(version))
