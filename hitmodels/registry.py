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
# Bound on each file of a registered bundle (weights, JSON, tree arrays) that load_model downloads: every
# family's bundle is a few MB at most (HitMusicNet on 438 features: ~0.2 MB).
MAX_BUNDLE_FILE_BYTES = 256 * 2**20


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


def load_model(ref: ModelRef, tracking_uri: str | None = None):
    """A registered version as a ready model, read as data, whatever its family: the bundle's manifest
    (``artifacts/bundle.json``; none in versions from before families, which are HitMusicNet's) names the
    family and its files, only those files are downloaded from the configured tracking server, and the
    family's loader builds the model from them (weights with ``torch.load(weights_only=True)``, JSON, arrays
    with ``numpy.load(allow_pickle=False)``). Nothing the version carries is unpickled or executed (not its
    code file, not a ``python_model.pkl`` someone may have uploaded), so a registry user cannot run code in
    Serve replicas or scoring workers by registering a version."""
    import tempfile
    from pathlib import Path

    from .bundle import MANIFEST, load_bundle, parse_manifest

    uri = resolve_tracking_uri(tracking_uri)
    # The version's artifact location, asked of the configured server with an explicit client: models:/ URIs
    # resolve through process-wide MLflow settings, which a Ray worker without MLFLOW_TRACKING_URI lacks, and
    # which this function must not change (other code in the process may talk to another server).
    c = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    source = c.get_model_version_download_uri(ref.name, ref.version)
    if source.startswith("models:/m-"):  # MLflow 3: the version points at a logged model
        source = c.get_logged_model(source.removeprefix("models:/")).artifact_location
    with tempfile.TemporaryDirectory(prefix="hitmusic-model-") as tmp:

        def fetch(name: str) -> Path:
            try:
                path = Path(mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{source.rstrip('/')}/artifacts/{name}", dst_path=tmp, tracking_uri=uri))
            except MlflowException as exc:
                if exc.error_code not in NOT_FOUND:  # an outage is not a missing file
                    raise
                raise LookupError(f"{ref.uri} has no artifacts/{name}: it was not registered by hitmusic "
                                  "(weights + JSON bundle)") from None
            if not path.is_file():
                raise LookupError(f"{ref.uri}: artifacts/{name} is not a file")
            return path

        sizes = {Path(f.path).name: f.file_size or 0 for f in mlflow.artifacts.list_artifacts(
            artifact_uri=f"{source.rstrip('/')}/artifacts", tracking_uri=uri) if not f.is_dir}
        manifest_path = fetch(MANIFEST) if MANIFEST in sizes else None
        try:
            manifest = parse_manifest(manifest_path.read_text() if manifest_path else None)
        except ValueError as exc:
            raise LookupError(f"{ref.uri} has an unusable bundle manifest: {exc}") from None
        too_big = [f"{f} ({sizes[f]} bytes)" for f in manifest["files"] if sizes.get(f, 0) > MAX_BUNDLE_FILE_BYTES]
        if too_big:  # checked from the listing, before anything is downloaded
            raise LookupError(f"{ref.uri}: bundle file(s) {too_big} larger than {MAX_BUNDLE_FILE_BYTES} bytes")
        for name in manifest["files"]:
            fetch(name)
        return load_bundle(Path(tmp))


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


@dataclass(frozen=True)
class Registered:
    """What promotion needs to know of a version: its family, metric, data and test rows."""

    version: str
    family: str
    metric: str
    fingerprint: str | None
    schema_version: str | None
    test_ids: list[str] | None
    # a family on other input than feature rows: the settings its rows were prepared with (the Siamese
    # family's mel store and segment), from the version's run
    inputs: dict | None = None


def registered(name: str, version: str, tracking_uri: str | None = None) -> Registered:
    """A version's family, selection metric, dataset fingerprint and stored test track ids (``None`` for
    versions registered before they were stored)."""
    from .train import SPLIT_ARTIFACT

    c = client(tracking_uri)
    mv = c.get_model_version(name, str(version))
    tags = mv.tags or {}
    test_ids = None
    if mv.run_id:
        try:
            import json
            import tempfile
            from pathlib import Path

            with tempfile.TemporaryDirectory() as tmp:
                path = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=SPLIT_ARTIFACT,
                                                           dst_path=tmp, tracking_uri=resolve_tracking_uri(tracking_uri))
                test_ids = [str(t) for t in json.loads(Path(path).read_text())["test_track_ids"]]
        except MlflowException as exc:
            if exc.error_code not in NOT_FOUND:
                raise
    inputs = None
    if tags.get("input_kind", "rows") != "rows" and mv.run_id:
        params = c.get_run(mv.run_id).data.params
        inputs = {k[len("params."):]: v for k, v in params.items() if k in ("params.mels", "params.segment")}
    return Registered(str(version), tags.get("model_family", "hitmusicnet"), tags.get("selection_metric", "mae"),
                      tags.get("dataset_fingerprint"), tags.get("feature_schema_version"), test_ids, inputs)


def version_rows(v: Registered, table):
    """The training rows of ``table`` as version ``v`` takes them: feature rows as they are; for a family on
    other input, joined to it as when the version was trained (its mel store and segment)."""
    from . import families
    from .config import TrainConfig
    from .data import training_rows

    rows = training_rows(table)
    fam = families.get(v.family)
    if fam.input_kind == "rows":
        return rows
    return fam.prepare(rows, TrainConfig(family=fam.name, params=dict(v.inputs or {})))


def fair_test_rows(cand: Registered, inc: Registered, table, min_rows: int = 10):
    """The rows of ``table`` that both versions held out (neither trained on), or ``ValueError`` saying why
    the two cannot be compared fairly: different data, feature schemas or metrics, no stored test rows, or
    a table that is not the data they were trained on."""
    from .train import dataset_fingerprint

    for v in (cand, inc):
        if v.test_ids is None or v.fingerprint is None:
            raise ValueError(f"version {v.version} has no stored test rows or dataset fingerprint (registered "
                             "before they were recorded): compare by hand and promote without --if-better")
    if cand.schema_version != inc.schema_version:
        raise ValueError(f"versions {cand.version} and {inc.version} use feature schemas "
                         f"v{cand.schema_version} and v{inc.schema_version}: no fair comparison")
    if cand.fingerprint != inc.fingerprint:
        raise ValueError(f"version {cand.version} was trained on dataset {cand.fingerprint}, champion version "
                         f"{inc.version} on {inc.fingerprint}: their test rows are not comparable. Train both on "
                         "one table (e.g. hitmusic leaderboard), or promote without --if-better")
    if cand.metric != inc.metric:
        raise ValueError(f"version {cand.version} is selected on {cand.metric}, version {inc.version} on "
                         f"{inc.metric}: no common metric")
    rows = version_rows(cand, table)
    if dataset_fingerprint(rows) != cand.fingerprint:
        raise ValueError(f"the table given is not the data versions {cand.version} and {inc.version} were "
                         f"trained on (fingerprint {dataset_fingerprint(rows)}, theirs {cand.fingerprint})")
    common = set(cand.test_ids) & set(inc.test_ids)
    test = rows[rows["track_id"].astype(str).isin(common)]
    if len(test) < min_rows:
        raise ValueError(f"versions {cand.version} and {inc.version} share only {len(test)} held-out rows "
                         f"(at least {min_rows} needed): they were split differently")
    return test


def compare_on_test(name: str, candidate: str, incumbent: str, table, tracking_uri: str | None = None
                    ) -> tuple[float, float, str, int]:
    """Both versions' selection metric on the same rows: those of ``table`` whose track ids both versions
    stored as their test rows (rows neither trained on, wherever they sit in the table). Returns
    ``(candidate's, incumbent's, metric, n_rows)``; ``ValueError`` when no fair comparison is possible."""
    return _compare(name, registered(name, candidate, tracking_uri), registered(name, incumbent, tracking_uri),
                    table, tracking_uri)


def _compare(name: str, cand: Registered, inc: Registered, table, tracking_uri: str | None
             ) -> tuple[float, float, str, int]:
    from .evaluate import regression_metrics

    test = fair_test_rows(cand, inc, table)
    truth = test["popularity"].to_numpy(float)
    ids = test["track_id"].astype(str).tolist()
    scores = []
    for v in (cand, inc):
        rows = test
        if v.inputs is not None:  # each version's own input (e.g. its segment) of the same test tracks
            prepared = version_rows(v, table)
            prepared = prepared.set_axis(prepared["track_id"].astype(str).to_numpy())
            missing = [t for t in ids if t not in prepared.index]
            if missing:
                raise ValueError(f"version {v.version}'s input lacks {len(missing)} of the shared test tracks: "
                                 "no fair comparison")
            rows = prepared.loc[ids].reset_index(drop=True)
        pred = load_model(ModelRef(name, v.version), tracking_uri).predict(None, rows)["popularity"].to_numpy(float)
        metrics = regression_metrics(truth, pred)
        if cand.metric not in metrics:
            raise ValueError(f"version {cand.version} is selected on {cand.metric!r}, which promotion cannot "
                             f"compute (it knows {', '.join(metrics)})")
        scores.append(metrics[cand.metric])
    return scores[0], scores[1], cand.metric, len(test)


def better(a: float, b: float, family: str) -> bool:
    """Whether ``a`` is no worse than ``b`` on ``family``'s selection metric."""
    from . import families

    return a >= b if families.get(family).higher_is_better else a <= b


def promote_if_better(name: str, version: str, table, tracking_uri: str | None = None) -> tuple[bool, str]:
    """Promote ``version`` only if its selection metric is no worse than the champion's on the rows both held
    out. Returns (promoted, reason); raises ``ValueError`` when the two cannot be compared fairly."""
    c = client(tracking_uri)
    try:
        champion = c.get_model_version_by_alias(name, CHAMPION).version
    except MlflowException as exc:
        if exc.error_code not in NOT_FOUND:  # an unreachable server is not a missing champion
            raise
        promote(name, version, CHAMPION, tracking_uri)
        return True, f"no champion yet: version {version} promoted"
    if str(champion) == str(version):
        return False, f"version {version} already is the champion"
    candidate = registered(name, str(version), tracking_uri)
    cand, inc, metric, n = _compare(name, candidate, registered(name, str(champion), tracking_uri), table,
                                    tracking_uri)
    where = f"on the {n} {name} test rows neither trained on"
    if not better(cand, inc, candidate.family):
        return False, (f"refused: version {version} has test {metric.upper()} {cand:.5f}, worse than champion "
                       f"version {champion} ({inc:.5f}) {where}")
    promote(name, version, CHAMPION, tracking_uri)
    return True, (f"promoted: version {version} test {metric.upper()} {cand:.5f} beats or ties champion version "
                  f"{champion} ({inc:.5f}) {where}")


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
