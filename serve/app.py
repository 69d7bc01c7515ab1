"""Ray Serve application: the registry's champion behind HTTP, hot-swapped when the alias moves.

    serve run serve.app:build_app model_name=hitmusicnet alias=champion tracking_uri=http://127.0.0.1:5000
    serve deploy serve/config.yaml          # same app; replicas, autoscaling, batching from the file
    hitmusic serve                          # what the demo runs

Endpoints (OpenAPI docs at ``/docs``):

- ``GET /`` and ``GET /healthz``: status, the served model's name and version, whether the registry answered
  at the last poll (``registry_ok``) and when.
- ``GET /model``: name, version, alias, run id, creation time and test metrics of the served version.
- ``GET /features``: the feature columns a row must carry.
- ``POST /predict``: ``{"rows": [{"track_id": "...", "<feature>": <number>, ...}, ...]}`` -> per track
  popularity (0-100), class, and whatever else the model returns (interval, class probabilities), plus the
  model name and version that answered. Every model feature is required; unknown fields, non-numbers,
  NaN/inf, out-of-range values and too many rows answer 422 naming the row and the field.
- ``POST /predict/audio``: multipart upload ``file`` (MP3, WAV, OGG or FLAC) with optional ``lyrics`` and
  ``metadata`` (JSON object of metadata columns, e.g. ``{"artist_popularity": 61}``; absent ones are imputed
  with the training medians). Features are extracted exactly as in the batch pipeline. Empty, undecodable,
  too short, silent: 422 with the reason; too large: 413.

Hot swap: each replica polls the registry every ``poll_interval_s``; when the alias points at another
version it loads that version and swaps it in between two batches, so requests in flight finish on the
version they started with. If the registry is unreachable, replicas keep serving what they have and
``/healthz`` reports ``registry_ok: false``.
"""

# No `from __future__ import annotations` here: FastAPI must see the real request model classes, and Serve's
# ingress wrapper does not resolve string annotations.

import asyncio
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from pydantic import BaseModel, Field
from ray import serve

from hitmodels.config import ServeSettings

PASSTHROUGH = ("track_id",)
log = logging.getLogger("ray.serve")

api = FastAPI(title="HitMusic popularity service",
              description="Predicts track popularity (0-100) and class with the registry's champion model.")


class PredictRequest(BaseModel):
    rows: list[dict[str, Any]] = Field(..., description="feature rows, one per track; optional track_id")


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
    if column in ("n_sentences", "mean_words_sentence", "n_words", "mean_syllables_word", "sentence_similarity",
                  "vocabulary_wealth"):
        return -1.0, math.inf
    if column.startswith(("MEL_", "spectral_", "entropy_energy", "artist_followers", "n_available_markets")) or \
            column.endswith("_std"):
        return 0.0, math.inf
    return -math.inf, math.inf


def validate_rows(rows: list[dict[str, Any]], columns: list[str], max_rows: int = 1024) -> pd.DataFrame:
    """Check feature rows against the model's columns; raise ``HTTPException(422)`` listing every problem as
    ``{"loc": ["body", "rows", i, field], "msg": ...}`` (FastAPI's own error shape)."""
    problems: list[dict] = []
    if not rows:
        problems.append({"loc": ["body", "rows"], "msg": "at least one row is required"})
    if len(rows) > max_rows:
        problems.append({"loc": ["body", "rows"], "msg": f"{len(rows)} rows; at most {max_rows} per request"})
    wanted = set(columns)
    for i, row in enumerate(rows[:max_rows]):
        for f in sorted(set(row) - wanted - set(PASSTHROUGH)):
            problems.append({"loc": ["body", "rows", i, f], "msg": "unknown field"})
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
        if len(problems) > 50:
            break
    if problems:
        raise HTTPException(status_code=422, detail=problems[:50])
    df = pd.DataFrame.from_records(rows)
    # JSON integers arrive as int64; the model's signature says double and MLflow will not cast silently
    df[columns] = df[columns].astype("float64")
    return df


def _jsonable(v):
    """numpy scalars and NaN to what JSON can carry (NaN -> null)."""
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def audio_feature_row(data: bytes, name: str, lyric_text: str) -> dict[str, float]:
    """Features of an uploaded preview, computed as the batch pipeline does; 422 naming the reason if unusable."""
    from hitmodels import audio, lyrics
    from hitmodels.config import FeatureConfig

    cfg = FeatureConfig()
    try:
        y, sr = audio.decode(data, cfg.sr, name=name)
        audio.check_usable(y, sr, cfg, name=name)
    except audio.AudioError as exc:
        raise HTTPException(422, detail=[{"loc": ["body", "file"], "msg": str(exc), "reason": exc.reason}])
    return {**audio.audio_features(y, sr, cfg), **lyrics.lyric_features(lyric_text)}


@dataclass(frozen=True)
class Served:
    """One loaded version; replaced as a whole on hot swap so a batch never mixes versions."""

    name: str
    version: str
    model: Any
    columns: list[str]
    info: dict


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

        name = self.settings.model_name
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        client = mlflow.MlflowClient(self.tracking_uri)
        mv = client.get_model_version(name, version)
        metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        info = {"name": name, "version": version, "alias": self.settings.alias, "run_id": mv.run_id,
                "created": mv.creation_timestamp,
                "test_metrics": {k: v for k, v in metrics.items() if k.startswith("test_")}}
        columns = model.unwrap_python_model().columns
        return Served(name, version, model, list(columns), {**info, "n_features": len(columns)})

    def poll(self) -> bool:
        """Ask the registry where the alias points; load and swap if it moved. Returns True on a swap."""
        self.last_poll = time.time()
        try:
            version = self._resolve()
            self.registry_ok, self.registry_error = True, None
        except Exception as exc:  # unreachable server, auth, deleted alias: keep serving what we have
            self.registry_ok, self.registry_error = False, f"{type(exc).__name__}: {exc}"[:300]
            return False
        if version == self.served.version:
            return False
        try:
            new = self._load(version)
        except Exception as exc:
            self.registry_ok, self.registry_error = False, f"loading version {version}: {exc}"[:300]
            return False
        log.info("hot swap %s: version %s -> %s", self.settings.model_name, self.served.version, version)
        self.served = new
        return True


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=256)
@serve.ingress(api)
class HitMusicService:
    """One replica: a :class:`ModelHolder` polled in a background thread, batched prediction."""

    def __init__(self, settings: dict | None = None):
        self.settings = ServeSettings(**(settings or {}))
        self.holder = ModelHolder(self.settings)
        self._stop = threading.Event()
        threading.Thread(target=self._poll_loop, daemon=True, name="registry-poll").start()
        self._predict_batched.set_max_batch_size(self.settings.max_batch_size)
        self._predict_batched.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.settings.poll_interval_s):
            self.holder.poll()

    def __del__(self):
        self._stop.set()

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.002)
    async def _predict_batched(self, frames: list[pd.DataFrame]) -> list[tuple[Served, pd.DataFrame]]:
        served = self.holder.served  # one version for the whole batch
        sizes = [len(f) for f in frames]
        # Rows were validated and cast to float64 by validate_rows: MLflow's per-call schema enforcement over
        # every column would only repeat that on the hot path, so the Python model is called directly.
        out = served.model.unwrap_python_model().predict(None, pd.concat(frames, ignore_index=True))
        bounds = np.cumsum([0] + sizes)
        return [(served, out.iloc[a:b].reset_index(drop=True)) for a, b in zip(bounds[:-1], bounds[1:])]

    async def _answer(self, df: pd.DataFrame) -> dict:
        served, out = await self._predict_batched(df)
        ids = df["track_id"].astype(str).tolist() if "track_id" in df else [None] * len(df)
        records = out.to_dict(orient="records")
        return {"model_name": served.name, "model_version": served.version,
                "predictions": [{"track_id": t, **{k: _jsonable(v) for k, v in r.items()}}
                                for t, r in zip(ids, records)]}

    @api.get("/")
    @api.get("/healthz")
    def health(self) -> dict:
        h, s = self.holder, self.holder.served
        return {"status": "ok" if h.registry_ok else "degraded", "model_name": s.name, "model_version": s.version,
                "registry_ok": h.registry_ok, "registry_error": h.registry_error,
                "last_registry_poll": h.last_poll}

    @api.get("/model")
    def model_info(self) -> dict:
        return self.holder.served.info

    @api.get("/features")
    def features(self) -> dict:
        """The feature columns every row of ``/predict`` must carry."""
        return {"columns": self.holder.served.columns}

    @api.post("/predict")
    async def predict(self, req: PredictRequest) -> dict:
        df = validate_rows(req.rows, self.holder.served.columns, self.settings.max_rows)
        return await self._answer(df)

    @api.post("/predict/audio")
    async def predict_audio(self, file: UploadFile = File(..., description="MP3, WAV, OGG or FLAC preview"),
                            lyrics: str = Form("", description="lyrics text (optional)"),
                            metadata: str = Form("{}", description="JSON object of metadata columns"),
                            track_id: str = Form("", description="echoed back")) -> dict:
        data = await file.read(int(self.settings.max_upload_mb * 2**20) + 1)
        if len(data) > self.settings.max_upload_mb * 2**20:
            raise HTTPException(413, detail=[{"loc": ["body", "file"],
                                              "msg": f"larger than {self.settings.max_upload_mb} MB"}])
        try:
            meta = json.loads(metadata or "{}")
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise HTTPException(422, detail=[{"loc": ["body", "metadata"], "msg": f"invalid JSON object: {exc}"}])
        # feature extraction takes a few hundred ms of CPU: keep it off the event loop
        row = await asyncio.to_thread(audio_feature_row, data, file.filename or "upload", lyrics)
        columns = self.holder.served.columns
        unknown = sorted(set(meta) - set(columns))
        if unknown:
            raise HTTPException(422, detail=[{"loc": ["body", "metadata", k], "msg": "unknown field"} for k in unknown])
        full = {c: meta.get(c, row.get(c, float("nan"))) for c in columns}
        # absent metadata stays NaN (imputed by the model); what was given must be valid
        given = {c: v for c, v in full.items() if c in meta or c in row}
        validate_rows([given], [c for c in columns if c in given], 1)
        df = pd.DataFrame([full]).astype("float64")
        if track_id:
            df["track_id"] = track_id
        return await self._answer(df)


def build_app(args: dict[str, str]) -> serve.Application:
    """Application builder for ``serve run``/``serve deploy``; arguments are :class:`ServeSettings` fields."""
    from dataclasses import asdict

    return HitMusicService.bind(asdict(ServeSettings.from_args(dict(args))))
