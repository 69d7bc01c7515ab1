"""Model registry helpers: aliases (``champion``, ``previous``) instead of MLflow's retired stages."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException

from .config import tracking_uri

CHAMPION = "champion"
PREVIOUS = "previous"


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def client(uri: str | None = None) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=tracking_uri(uri))


def resolve(name: str, version_or_alias: str = CHAMPION, tracking_uri: str | None = None) -> ModelRef:
    """Pin an alias (or a version number) to a concrete version, so a whole job uses one version."""
    c = client(tracking_uri)
    if str(version_or_alias).isdigit():
        mv = c.get_model_version(name, str(version_or_alias))
    else:
        try:
            mv = c.get_model_version_by_alias(name, version_or_alias)
        except MlflowException as exc:
            raise LookupError(f"model {name!r} has no alias {version_or_alias!r}; promote a version first "
                              f"(hitmusic promote --model {name} --version N)") from exc
    return ModelRef(name, str(mv.version))


def latest_version(name: str, tracking_uri: str | None = None) -> ModelRef:
    versions = client(tracking_uri).search_model_versions(f"name='{name}'")
    if not versions:
        raise LookupError(f"model {name!r} has no registered version; run hitmusic train first")
    return ModelRef(name, str(max(int(v.version) for v in versions)))


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
