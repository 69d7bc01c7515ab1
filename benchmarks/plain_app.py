"""The peer of the Serve app in ``bench_online.py``: the same model and validation in one plain FastAPI
process under uvicorn, no Ray. ``BENCH_MODEL`` names the model URI."""

from __future__ import annotations

import os

import mlflow
from fastapi import FastAPI

from serve.app import PredictRequest, validate_rows

model = mlflow.pyfunc.load_model(os.environ.get("BENCH_MODEL", "models:/hitmusicnet@champion"))
columns = model.unwrap_python_model().columns
app = FastAPI()


@app.get("/healthz")
def health() -> dict:
    return {"status": "ok"}


@app.post("/predict")
def predict(req: PredictRequest) -> dict:
    df = validate_rows(req.rows, columns, 1024)
    out = model.predict(df)
    return {"predictions": out.to_dict(orient="records")}
