"""Ray Serve application: the registry's champion behind HTTP, hot-swapped when the alias moves.

    serve run serve.app:build_app model_name=hitmusicnet alias=champion tracking_uri=http://127.0.0.1:5000
    serve deploy serve/config.yaml          # same app; replicas, autoscaling, batching from the file
    hitmusic serve                          # what the demo runs

Endpoints (OpenAPI docs at ``/docs``):

- ``GET /`` and ``GET /healthz``: status, the served model's name and version, whether the registry answered
  at the last poll (``registry_ok``) and when.
- ``GET /model``: name, version, alias, family, configuration, run id, creation time and test metrics of the
  served version. Any family on feature rows is served the same way (HitMusicNet, MLR + Lasso,
  HistGradientBoosting): the bundle says which, and the replica never needs to know.
- ``GET /features``: the feature columns a row must carry.
- ``POST /predict``: ``{"rows": [{"track_id": "...", "<feature>": <number>, ...}, ...]}`` -> per track
  popularity (0-100), class, and whatever else the model returns (interval, class probabilities), plus the
  model name and version that answered. Every model feature is required; unknown fields, non-numbers,
  NaN/inf, out-of-range values and too many rows answer 422 naming the row and the field.
- ``POST /predict/audio``: multipart upload ``file`` (MP3, WAV, OGG or FLAC) with optional ``lyrics`` and
  ``metadata`` (JSON object of metadata columns, e.g. ``{"artist_popularity": 61}``; absent ones are imputed
  with the training medians). Features are extracted exactly as in the batch pipeline. Empty, undecodable,
  too short, silent, longer than ``max_duration_s``, lyrics past ``max_lyric_chars``/``max_lyric_lines``: 422
  with the reason and the field; a body over ``max_upload_mb``: 413. A model on log-mel segments (the Siamese
  CNN) computes the segment it was trained on from the file instead (``lyrics`` is not used; ``metadata`` may
  carry its tag columns) and answers ``percentile`` too; its ``/predict`` answers 422.

Bounds: ``/predict`` bodies over ``max_body_mb`` and uploads over ``max_upload_mb`` answer 413 from
``Content-Length`` or while the body streams, before anything is parsed or spooled (:mod:`serve.body_limit`);
``max_rows`` rows per request. Models are loaded as data from the configured tracking URI and model name
(:func:`hitmodels.registry.load_model`): nothing a registry user uploaded is unpickled or run. ``/docs``
and ``/redoc`` serve their own assets (no CDN).

Hot swap: each replica polls the registry every ``poll_interval_s``; when the alias points at another
version it loads that version and swaps it in between two batches, so requests in flight finish on the
version they started with. If the registry is unreachable, replicas keep serving what they have and
``/healthz`` reports ``registry_ok: false`` with a short reason (never the exception's text).
"""

# No `from __future__ import annotations` here: FastAPI must see the real request model classes, and Serve's
# ingress wrapper does not resolve string annotations.

import asyncio
import functools
import json
import logging
import math
import operator
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson
from fastapi import File, Form, HTTPException, Request, Response, UploadFile
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from ray import serve

from hitmodels.config import ServeSettings
from serve.body_limit import BodyLimit, set_body_limits

PASSTHROUGH = ("track_id",)
NUMBER_TYPES = frozenset({int, float})
log = logging.getLogger("ray.serve")

# Swagger UI and ReDoc assets come from the fastapi-offline package and are served by the app itself: the
# stock FastAPI pages load them from a CDN and are blank on a machine without internet.
api = FastAPIOffline(title="HitMusic popularity service",
                     description="Predicts track popularity (0-100) and class with the registry's champion model.")


api.add_middleware(BodyLimit)  # /predict and /predict/audio: 413 before parsing or spooling


class PredictRequest(BaseModel):
    rows: list[dict[str, Any]] = Field(..., description="feature rows, one per track; optional track_id")


class Prediction(BaseModel):
    track_id: str | None = None
    popularity: float = Field(..., description="predicted popularity, 0-100")
    popularity_lower: float | None = Field(None, description="lower end of the conformal interval")
    popularity_upper: float | None = Field(None, description="upper end of the conformal interval")
    cls: str = Field(..., alias="class", description="low / medium / high: the class head's most probable class "
                                                    "(models without one: the class of popularity)")
    popularity_class: str | None = Field(None, description="the class the predicted popularity falls in; can "
                                                            "differ from class, which another model answers")
    p_low: float | None = None
    p_medium: float | None = None
    p_high: float | None = None
    percentile: float | None = Field(None, description="models on log-mel segments: the hit score's percentile "
                                                        "among the training tracks' scores, 0-100")


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    predictions: list[Prediction]


def _parse_int(digits: str) -> int | float:
    """Integers the standard parser meets: Python's own up to 300 digits (a float64 holds them), else
    ``float`` (inf), which validation then refuses naming the field, where ``int`` -> float64 would raise."""
    return int(digits) if len(digits) <= 300 else float(digits)


def load_json(body: bytes | str, loc: list) -> Any:
    """A JSON document, parsed with orjson (JSON parsing is most of a 256-row request's cost with the
    standard library); documents orjson refuses but Python writes (the NaN/Infinity literals, integers past 64
    bits) fall back to the standard parser, so that validation can name the field. 422 at ``loc`` in
    FastAPI's error shape for anything else, a document nested past the parsers' depth included."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body, parse_int=_parse_int)
    except RecursionError:
        raise HTTPException(422, detail=[{"loc": loc, "msg": "invalid JSON: nested too deeply"}])
    except ValueError as exc:
        raise HTTPException(422, detail=[{"loc": loc, "msg": f"invalid JSON: {exc}"}])


def check_json_content_type(request: Request) -> None:
    """415 for a body declared as something other than JSON (``text/plain``, a form): the service does not
    guess. A request without a Content-Type is read as JSON."""
    declared = request.headers.get("content-type")
    if declared is None:
        return
    media = declared.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise HTTPException(415, detail=[{"loc": ["header", "content-type"],
                                          "msg": f"{media or 'empty'}: send the rows as application/json"}])


def parse_rows(body: bytes) -> list[dict[str, Any]]:
    """The ``rows`` of a ``/predict`` body (:func:`load_json`); 422 in FastAPI's error shape otherwise."""
    doc = load_json(body, ["body"])
    if not isinstance(doc, dict) or "rows" not in doc:
        raise HTTPException(422, detail=[{"loc": ["body", "rows"], "msg": "field required"}])
    rows = doc["rows"]
    if not isinstance(rows, list):
        raise HTTPException(422, detail=[{"loc": ["body", "rows"], "msg": "must be a list of objects"}])
    not_objects = [{"loc": ["body", "rows", i], "msg": "must be an object"}
                   for i, r in enumerate(rows) if not isinstance(r, dict)]
    if not_objects:
        raise HTTPException(422, detail=not_objects[:50])
    return rows


def valid_range(column: str) -> tuple[float, float]:
    """Physically possible values of a feature column; anything outside is a client error, not a prediction.

    Lyric features use -1 for "no lyrics" (SPD's convention), hence their lower bound.
    """
    if column in ("ZCR", "ZCR_std"):
        return 0.0, 1.0
    if column in ("artist_popularity",):
        return 0.0, 100.0
    if column == "release_year":
        return 1800.0, 2200.0
    if column.startswith("genre_"):
        return 0.0, 1.0
    if column == "n_genres":
        return 0.0, math.inf
    if column in ("n_sentences", "mean_words_sentence", "n_words", "mean_syllables_word", "sentence_similarity",
                  "vocabulary_wealth"):
        return -1.0, math.inf
    if column.startswith(("MEL_", "spectral_", "entropy_energy", "artist_followers", "n_available_markets")) or \
            column.endswith("_std"):
        return 0.0, math.inf
    return -math.inf, math.inf


@dataclass(frozen=True)
class Rows:
    """Validated feature rows: ``X`` is ``(n_rows, n_columns)`` float64 in the model's column order."""

    X: np.ndarray
    track_ids: list


@functools.lru_cache(maxsize=8)
def _bounds(columns: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    ranges = np.array([valid_range(c) for c in columns], dtype=np.float64).reshape(-1, 2)
    return ranges[:, 0], ranges[:, 1]


def validate_rows(rows: list[dict[str, Any]], columns: list[str], max_rows: int = 1024) -> Rows:
    """Check feature rows against the model's columns; raise ``HTTPException(422)`` listing every problem as
    ``{"loc": ["body", "rows", i, field], "msg": ...}`` (FastAPI's own error shape).

    The common case (every row valid) is one pass building the matrix and one vectorised range check;
    the per-field messages are only worked out for rows that failed.
    """
    if not rows:
        raise HTTPException(422, detail=[{"loc": ["body", "rows"], "msg": "at least one row is required"}])
    if len(rows) > max_rows:
        raise HTTPException(422, detail=[{"loc": ["body", "rows"],
                                          "msg": f"{len(rows)} rows; at most {max_rows} per request"}])
    lo, hi = _bounds(tuple(columns))
    getter = operator.itemgetter(*columns) if len(columns) > 1 else (lambda row: (row[columns[0]],))
    X = np.empty((len(rows), len(columns)), dtype=np.float64)
    bad_rows = []
    for i, row in enumerate(rows):
        try:
            values = getter(row)
        except KeyError:  # a required field is missing
            bad_rows.append(i)
            continue
        # every column is present, so any key beyond them and the pass-through ones is unknown
        extra = len(row) - len(columns) - sum(k in row for k in PASSTHROUGH)
        if extra or not NUMBER_TYPES.issuperset(map(type, values)):  # bool is not a number here
            bad_rows.append(i)
            continue
        X[i] = values
    with np.errstate(invalid="ignore"):
        bad_rows += np.flatnonzero(~(np.isfinite(X) & (X >= lo) & (X <= hi)).all(axis=1)).tolist()
    if bad_rows:
        problems = [p for i in sorted(set(bad_rows)) for p in row_problems(i, rows[i], columns)]
        raise HTTPException(status_code=422, detail=problems[:50])
    return Rows(X, [None if row.get("track_id") is None else str(row["track_id"]) for row in rows])


def row_problems(i: int, row: dict[str, Any], columns: list[str]) -> list[dict]:
    """Every problem of one row, each naming the row and the field."""
    problems = [{"loc": ["body", "rows", i, f], "msg": "unknown field"}
                for f in sorted(set(row) - set(columns) - set(PASSTHROUGH))]
    for f in columns:
        if f not in row:
            problems.append({"loc": ["body", "rows", i, f], "msg": "field required"})
            continue
        v = row[f]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            problems.append({"loc": ["body", "rows", i, f], "msg": f"must be a number, got {type(v).__name__}"})
        elif not math.isfinite(v):
            problems.append({"loc": ["body", "rows", i, f], "msg": "must be finite (no NaN or infinity)"})
        else:
            lo, hi = valid_range(f)
            if not lo <= v <= hi:
                problems.append({"loc": ["body", "rows", i, f], "msg": f"out of range [{lo}, {hi}]: {v}"})
    return problems


def audio_feature_row(data: bytes, name: str, lyric_text: str, settings: ServeSettings = ServeSettings(),
                      cfg=None) -> dict[str, float]:
    """Features of an uploaded preview, computed as the batch pipeline does with ``cfg`` (the served model's
    :class:`~hitmodels.config.FeatureConfig`, recorded in its bundle); 422 naming the field and the reason if
    the audio is unusable or longer than ``max_duration_s``, or the lyrics exceed their bounds."""
    from hitmodels import audio, lyrics
    from hitmodels.config import FeatureConfig, InputPolicy

    policy = InputPolicy(max_duration_s=settings.max_duration_s, max_lyric_chars=settings.max_lyric_chars,
                         max_lyric_lines=settings.max_lyric_lines)
    try:  # before the audio work: a refused text should cost nothing
        lyrics.check_bounds(lyric_text, policy.max_lyric_chars, policy.max_lyric_lines)
    except lyrics.LyricsError as exc:
        raise HTTPException(422, detail=[{"loc": ["body", "lyrics"], "msg": str(exc), "reason": exc.reason}])
    from hitmodels import features

    cfg = cfg or FeatureConfig()
    rates = (cfg.sr, features.tag_sr()) if cfg.tags else (cfg.sr,)
    try:
        loaded = audio.decode_rates(data, rates, name=name, max_duration_s=policy.max_duration_s)
        audio.check_usable(*loaded[0], cfg, name=name)
    except audio.AudioError as exc:
        raise HTTPException(422, detail=[{"loc": ["body", "file"], "msg": str(exc), "reason": exc.reason}])
    row = {**audio.audio_features(*loaded[0], cfg), **lyrics.lyric_features(lyric_text, policy=policy)}
    if cfg.tags:  # a model trained on tagged rows: the tagger runs in the replica (loaded with the version)
        row.update(upload_tags(loaded[1][0]))
    return row


def upload_tags(y16: np.ndarray) -> dict[str, float]:
    """The tagger's columns of an upload decoded at its rate; a failure is the service's (500), not the
    client's: the audio passed every check before it."""
    from hitmodels import features

    tags = features.tag_rows([y16], features.TAGGED)[0]
    if isinstance(tags, str):
        raise RuntimeError(tags)
    return tags


def audio_mel_segment(data: bytes, name: str, settings: ServeSettings, cfg, segment: str,
                      tags: bool = False) -> tuple[bytes, dict[str, float]]:
    """The ``segment`` (``hl30`` or ``mid30``) of an uploaded file as the mel store keeps it (float16 bytes),
    computed with the served model's :class:`~hitmodels.config.MelConfig`, and with ``tags`` the tagger's
    ``tag_*`` activations of the file (one decode for both, as ``hitmusic mels --tags``); 422 naming the file
    and the reason if the audio is unusable or longer than ``max_duration_s``."""
    from hitmodels import audio, features, melstore

    rates = (cfg.sr, features.tag_sr()) if tags else (cfg.sr,)
    try:
        loaded = audio.decode_rates(data, rates, name=name, max_duration_s=settings.max_duration_s)
        audio.check_usable(*loaded[0], melstore.audio_config(cfg), name=name)
    except audio.AudioError as exc:
        raise HTTPException(422, detail=[{"loc": ["body", "file"], "msg": str(exc), "reason": exc.reason}])
    return melstore.segment_bytes(*loaded[0], cfg, segment), upload_tags(loaded[1][0]) if tags else {}


def short_reason(exc: Exception) -> str:
    """What ``/healthz`` says about a failed registry call: the kind of failure, never the exception's text
    (which can carry URLs, hosts and server internals)."""
    from mlflow.exceptions import MlflowException

    from hitmodels.registry import NOT_FOUND

    if isinstance(exc, LookupError):  # our own message: the alias or version is missing
        return "alias or version not found in the registry"
    if isinstance(exc, MlflowException):
        if exc.error_code in NOT_FOUND:
            return "alias or version not found in the registry"
        # the client wraps connection failures as "API request to ... failed with exception ..."
        if "failed with exception" in exc.message:
            return "registry unreachable (connection failed)"
        return f"registry error ({exc.error_code})"
    return f"registry unreachable ({type(exc).__name__})"


def _iso(ms: int | None) -> str | None:
    """MLflow's milliseconds since the epoch as ISO 8601 UTC."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Served:
    """One loaded version; replaced as a whole on hot swap so a batch never mixes versions."""

    name: str
    version: str
    model: Any
    columns: list[str]
    info: dict
    kind: str = "rows"  # the family's input: "rows" (feature rows) or "mel" (log-mel segments of audio)


class ModelHolder:
    """Keeps the alias's current version loaded and knows whether the registry answered lately."""

    def __init__(self, settings: ServeSettings):
        import mlflow

        from hitmodels.config import tracking_uri as resolve_tracking_uri

        # MLflow's client retries a dead server for minutes by default; a replica should notice an outage
        # within a poll or two and keep serving, so it retries briefly (overridable from the environment).
        for var, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                           ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
            os.environ.setdefault(var, value)
        self.settings = settings
        self.tracking_uri = resolve_tracking_uri(settings.tracking_uri)
        mlflow.set_tracking_uri(self.tracking_uri)
        self.registry_ok = True
        self.registry_error: str | None = None
        self.last_poll = time.time()
        self.served = self._load(self._resolve())

    def _resolve(self) -> str:
        from hitmodels.registry import resolve

        return resolve(self.settings.model_name, self.settings.alias, self.tracking_uri).version

    def _load(self, version: str) -> Served:
        import mlflow

        from hitmodels.registry import ModelRef, load_model

        name = self.settings.model_name
        model = load_model(ModelRef(name, version), self.tracking_uri)  # weights + JSON, never a pickle
        from hitmodels import families

        kind = families.get(model.family).input_kind
        if kind not in ("rows", "mel"):
            raise LookupError(f"version {version} is a {model.family} model on {kind!r} input, which this "
                              "service cannot feed")
        client = mlflow.MlflowClient(self.tracking_uri)
        mv = client.get_model_version(name, version)
        run = client.get_run(mv.run_id) if mv.run_id else None
        metrics = run.data.metrics if run else {}
        info = {"name": name, "version": version, "alias": self.settings.alias, "run_id": mv.run_id,
                # when the training run started and when the version was registered, ISO 8601 UTC
                "trained": _iso(run.info.start_time) if run else None,
                "registered": _iso(mv.creation_timestamp), "created": mv.creation_timestamp,
                "test_metrics": {k: v for k, v in metrics.items() if k.startswith("test_")}}
        columns = model.columns
        from hitmodels import features

        if (model.feature_config.tags if kind == "rows" else features.tagger_columns(columns)):
            # a version whose /predict/audio needs the tagger loads it now: a missing wheel or a corrupt
            # checkpoint keeps the previous version serving (or fails the start), not every upload with a 500
            features.load_tagger()
        return Served(name, version, model, list(columns), {
            **info, "family": model.family, "input": kind, "config": model.config, "outputs": list(model.outputs),
            "n_features": len(columns)}, kind)

    def poll(self) -> bool:
        """Ask the registry where the alias points; load and swap if it moved. Returns True on a swap."""
        self.last_poll = time.time()
        try:
            version = self._resolve()
            self.registry_ok, self.registry_error = True, None
        except Exception as exc:  # unreachable server, auth, deleted alias: keep serving what we have
            self.registry_ok, self.registry_error = False, short_reason(exc)
            log.warning("registry poll failed: %s", self.registry_error)
            return False
        if version == self.served.version:
            return False
        try:
            new = self._load(version)
        except Exception as exc:
            self.registry_ok, self.registry_error = False, f"loading version {version} failed: {short_reason(exc)}"
            log.warning("%s", self.registry_error)
            return False
        log.info("hot swap %s: version %s -> %s", self.settings.model_name, self.served.version, version)
        self.served = new
        return True


# No access log line per request: at hundreds of requests/s it is a file write on every request's path for
# a line nobody reads (errors and warnings are still logged; not measured on its own, see
# benchmarks/README.md); `logging_config` in the config file turns it back on.
@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=256,
                  logging_config={"enable_access_log": False})
@serve.ingress(api)
class HitMusicService:
    """One replica: a :class:`ModelHolder` polled in a background thread, batched prediction."""

    def __init__(self, settings: dict | None = None):
        self.settings = ServeSettings(**(settings or {}))
        set_body_limits(self.settings)
        self.holder = ModelHolder(self.settings)
        self._stop = threading.Event()
        threading.Thread(target=self._poll_loop, daemon=True, name="registry-poll").start()
        self._in_flight = 0  # /predict requests inside this replica now (one event loop: no lock needed)
        self.requests_batched = self.requests_direct = 0  # how requests were answered, for /healthz
        self._predict_batched.set_max_batch_size(self.settings.max_batch_size)
        self._predict_batched.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.settings.poll_interval_s):
            self.holder.poll()

    def __del__(self):
        self._stop.set()

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.0)  # both set from ServeSettings in __init__
    async def _predict_batched(self, items: list[tuple[Served, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Each request's rows scored by the version they were validated against (captured once per request):
        a hot swap while requests wait in the batcher gives a batch of two versions, scored one product per
        version, never rows of one version's columns through the other's."""
        out: list[dict[str, np.ndarray] | None] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (served, _) in enumerate(items):
            groups.setdefault(id(served), []).append(i)
        for members in groups.values():
            served = items[members[0]][0]
            # Rows were validated by validate_rows: MLflow's per-call schema enforcement over every column
            # would only repeat that on the hot path, so the Python model is called directly, on arrays.
            scores = served.model.predict_array(np.concatenate([items[i][1] for i in members]))
            bounds = np.cumsum([0] + [len(items[i][1]) for i in members])
            for i, a, b in zip(members, bounds[:-1], bounds[1:]):
                out[i] = {k: v[a:b] for k, v in scores.items()}
        return out

    async def _answer(self, rows: Rows, served: Served) -> Response:
        """Score ``rows`` with ``served``, the version whose columns they were validated against."""
        # The batcher pays when requests overlap; a request alone in the replica would only wait out
        # batch_wait_timeout_s for company that is not coming, and the model's ~0.2 ms per call is less than
        # the batcher's own cost, so it is called directly (always so with max_batch_size 1).
        if self.settings.max_batch_size > 1 and self._in_flight > 1:
            self.requests_batched += 1
            out = await self._predict_batched((served, rows.X))
        else:
            self.requests_direct += 1
            out = served.model.predict_array(rows.X)
        columns = {k: values.tolist() for k, values in out.items()}
        # orjson writes NaN as null and is several times faster than the standard encoder on 256 rows
        return Response(orjson.dumps({"model_name": served.name, "model_version": served.version,
                                      "predictions": [{"track_id": t, **{k: columns[k][i] for k in columns}}
                                                      for i, t in enumerate(rows.track_ids)]}),
                        media_type="application/json")

    @api.get("/")
    @api.get("/healthz")
    def health(self) -> dict:
        h, s = self.holder, self.holder.served
        return {"status": "ok" if h.registry_ok else "degraded", "model_name": s.name, "model_version": s.version,
                "registry_ok": h.registry_ok, "registry_error": h.registry_error,
                "last_registry_poll": h.last_poll,
                "replica": {"requests_batched": self.requests_batched, "requests_direct": self.requests_direct}}

    @api.get("/model")
    def model_info(self) -> dict:
        return self.holder.served.info

    @api.get("/features")
    def features(self) -> dict:
        """The feature columns every row of ``/predict`` must carry (a model on log-mel segments: the
        metadata columns ``/predict/audio`` takes, besides the audio)."""
        served = self.holder.served
        if served.kind == "mel":
            return {"input": "mel", "columns": served.columns[1:]}
        return {"input": "rows", "columns": served.columns}

    @api.post("/predict", response_model=PredictResponse, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": PredictRequest.model_json_schema()}}}})
    async def predict(self, request: Request) -> Response:
        self._in_flight += 1
        try:
            served = self.holder.served
            if served.kind != "rows":
                raise HTTPException(422, detail=[{"loc": ["body"], "msg": (
                    f"{served.name} version {served.version} is a {served.model.family} model on log-mel segments "
                    "of the audio, not on feature rows: POST the audio file to /predict/audio")}])
            check_json_content_type(request)
            rows = parse_rows(await request.body())
            return await self._answer(validate_rows(rows, served.columns, self.settings.max_rows), served)
        finally:
            self._in_flight -= 1

    @api.post("/predict/audio", response_model=PredictResponse)
    async def predict_audio(self, file: UploadFile = File(..., description="MP3, WAV, OGG or FLAC preview"),
                            lyrics: str = Form("", description="lyrics text (optional)"),
                            metadata: str = Form("{}", description="JSON object of metadata columns"),
                            track_id: str = Form("", description="echoed back")) -> Response:
        data = await file.read(int(self.settings.max_upload_mb * 2**20) + 1)
        if len(data) > self.settings.max_upload_mb * 2**20:
            raise HTTPException(413, detail=[{"loc": ["body", "file"],
                                              "msg": f"larger than {self.settings.max_upload_mb} MB"}])
        meta = load_json(metadata or "{}", ["body", "metadata"])
        if not isinstance(meta, dict):
            raise HTTPException(422, detail=[{"loc": ["body", "metadata"], "msg": "must be a JSON object"}])
        served = self.holder.served
        if served.kind == "mel":
            return await self._answer_mel(served, data, file.filename or "upload", meta, track_id)
        # feature extraction takes a few hundred ms of CPU: keep it off the event loop
        row = await asyncio.to_thread(audio_feature_row, data, file.filename or "upload", lyrics, self.settings,
                                      served.model.feature_config)
        columns = served.columns
        unknown = sorted(set(meta) - set(columns))
        if unknown:
            raise HTTPException(422, detail=[{"loc": ["body", "metadata", k], "msg": "unknown field"} for k in unknown])
        full = {c: meta.get(c, row.get(c, float("nan"))) for c in columns}
        # absent metadata stays NaN (imputed by the model); what was given must be valid
        given = {c: v for c, v in full.items() if c in meta or c in row}
        validate_rows([given], [c for c in columns if c in given], 1)
        return await self._answer(Rows(np.array([[full[c] for c in columns]], dtype=np.float64),
                                       [track_id or None]), served)

    async def _answer_mel(self, served: Served, data: bytes, name: str, meta: dict, track_id: str) -> Response:
        """``/predict/audio`` for a model on log-mel segments: the segment it was trained on, computed as
        ``hitmusic mels`` does, the tagger's columns it takes computed from the same file, plus the metadata
        columns it takes (given or imputed)."""
        import pandas as pd

        from hitmodels import features
        from hitmodels.melstore import MEL_COLUMN

        model = served.model
        columns = served.columns[1:]
        tagged = features.tagger_columns(columns)
        problems = [{"loc": ["body", "metadata", k], "msg": "unknown field"} for k in sorted(set(meta) - set(columns))]
        problems += [{"loc": ["body", "metadata", k], "msg": "computed from the file by the tagger; do not send it"}
                     for k in sorted(set(meta) & set(tagged))]
        if problems:
            raise HTTPException(422, detail=problems)
        if meta:
            validate_rows([meta], list(meta), 1)
        segment, tags = await asyncio.to_thread(audio_mel_segment, data, name, self.settings, model.mel_config,
                                                model.segment, bool(tagged))
        frame = pd.DataFrame([{MEL_COLUMN: segment, **{c: tags.get(c, meta.get(c, float("nan"))) for c in columns}}])
        out = await asyncio.to_thread(model.predict, None, frame)
        self.requests_direct += 1
        return Response(orjson.dumps({"model_name": served.name, "model_version": served.version,
                                      "predictions": [{"track_id": track_id or None,
                                                       **{k: out[k].tolist()[0] for k in out.columns}}]}),
                        media_type="application/json")


def build_app(args: dict[str, str]) -> serve.Application:
    """Application builder for ``serve run``/``serve deploy``; arguments are :class:`ServeSettings` fields."""
    from dataclasses import asdict

    return HitMusicService.bind(asdict(ServeSettings.from_args(dict(args))))
