"""The peer of the Serve app in ``bench_online.py``: the same model, parsing, validation and encoding in one
plain FastAPI process under uvicorn, no Ray, no batching. ``BENCH_MODEL`` names the model URI."""

from __future__ import annotations

import os

import orjson
from fastapi import FastAPI, Request, Response

from hitmodels.registry import load_model, resolve
from serve.app import parse_rows, validate_rows

# models:/NAME@ALIAS or models:/NAME/VERSION
name, _, version = os.environ.get("BENCH_MODEL", "models:/hitmusicnet@champion").removeprefix("models:/") \
    .replace("@", "/").partition("/")
python_model = load_model(resolve(name, version))  # loaded and called as the Serve app does
columns = python_model.columns
app = FastAPI()


@app.get("/healthz")
def health() -> dict:
    return {"status": "ok"}


@app.post("/predict")
async def predict(request: Request) -> Response:
    rows = validate_rows(parse_rows(await request.body()), columns, 1024)
    out = {k: v.tolist() for k, v in python_model.predict_array(rows.X).items()}
    return Response(orjson.dumps({"predictions": [{"track_id": t, **{k: out[k][i] for k in out}}
                                                  for i, t in enumerate(rows.track_ids)]}),
                    media_type="application/json")
