"""Ray Serve application: the registry's champion behind HTTP.

    serve run serve.app:build_app model_name=hitmusicnet alias=champion tracking_uri=http://127.0.0.1:5000
    serve deploy serve/config.yaml          # same app, settings from the config file
    hitmusic serve                          # what the demo runs

Endpoints (OpenAPI docs at ``/docs``):

- ``GET /`` and ``GET /healthz``: health plus the served model's name and version.
- ``GET /model``: name, version, alias, run id and test metrics of the served version.
- ``POST /predict``: ``{"rows": [{"track_id": "...", "<feature>": <number>, ...}, ...]}`` ->
  ``{"model_name", "model_version", "predictions": [{"track_id", "popularity", "class"}]}``.
  Every model feature is required, unknown fields, non-numbers, NaN/inf and too many rows answer 422 with
  the row and the field named.
"""

# No `from __future__ import annotations` here: FastAPI must see the real request model class to read the
# body, and Serve's ingress wrapper does not resolve string annotations.
import math
from typing import Any

import pandas as pd
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from ray import serve

MAX_ROWS = 1024
PASSTHROUGH = ("track_id",)

api = FastAPI(title="HitMusic popularity service",
              description="Predicts track popularity (0-100) and class with the registry's champion model.")


class PredictRequest(BaseModel):
    rows: list[dict[str, Any]] = Field(..., description="feature rows, one per track; optional track_id")


def validate_rows(rows: list[dict[str, Any]], columns: list[str], max_rows: int = MAX_ROWS) -> pd.DataFrame:
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
        if len(problems) > 50:
            break
    if problems:
        raise HTTPException(status_code=422, detail=problems[:50])
    return pd.DataFrame.from_records(rows)


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(api)
class HitMusicService:
    """One replica holds one loaded model version, resolved from the alias at start."""

    def __init__(self, model_name: str = "hitmusicnet", alias: str = "champion", tracking_uri: str | None = None):
        import mlflow

        from hitmodels.config import tracking_uri as resolve_tracking_uri
        from hitmodels.registry import resolve

        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        mlflow.set_tracking_uri(self.tracking_uri)
        self.alias = alias
        self.ref = resolve(model_name, alias, self.tracking_uri)
        self.model = mlflow.pyfunc.load_model(self.ref.uri)
        self.columns = self.model.unwrap_python_model().columns
        mv = mlflow.MlflowClient().get_model_version(self.ref.name, self.ref.version)
        run = mlflow.MlflowClient().get_run(mv.run_id) if mv.run_id else None
        self.info = {"name": self.ref.name, "version": self.ref.version, "alias": alias, "run_id": mv.run_id,
                     "created": mv.creation_timestamp, "n_features": len(self.columns),
                     "test_metrics": {k: v for k, v in (run.data.metrics.items() if run else [])
                                      if k.startswith("test_")}}

    @api.get("/")
    @api.get("/healthz")
    def health(self) -> dict:
        return {"status": "ok", "model_name": self.ref.name, "model_version": self.ref.version}

    @api.get("/model")
    def model_info(self) -> dict:
        return self.info

    @api.get("/features")
    def features(self) -> dict:
        """The feature columns every row of ``/predict`` must carry."""
        return {"columns": self.columns}

    @api.post("/predict")
    def predict(self, req: PredictRequest) -> dict:
        df = validate_rows(req.rows, self.columns)
        out = self.model.predict(df)
        ids = df["track_id"].astype(str).tolist() if "track_id" in df else [None] * len(df)
        return {"model_name": self.ref.name, "model_version": self.ref.version,
                "predictions": [{"track_id": t, "popularity": float(p), "class": c}
                                for t, p, c in zip(ids, out["popularity"], out["class"])]}


def build_app(args: dict[str, str]) -> serve.Application:
    """Application builder for ``serve run``/``serve deploy`` (arguments: model_name, alias, tracking_uri)."""
    return HitMusicService.bind(args.get("model_name", "hitmusicnet"), args.get("alias", "champion"),
                                args.get("tracking_uri"))
