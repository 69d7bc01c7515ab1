"""A hot swap between versions with different columns while requests wait in the batcher: each request is
scored by the version it was validated against (issue 16: the version is captured once per request and the
batcher groups by version), never rows of one schema through the other's model."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import orjson
from ray import serve

from hitmodels.config import ServeSettings
from serve.app import HitMusicService, Rows, Served


class SumModel:
    """A model on ``d`` columns answering their weighted sum: the answer shows which model scored a row."""

    def __init__(self, d: int, weight: float):
        self.d, self.weight, self.calls = d, weight, []

    def predict_array(self, X: np.ndarray) -> dict[str, np.ndarray]:
        assert X.shape[1] == self.d, f"rows of {X.shape[1]} columns through a model on {self.d}"
        self.calls.append(len(X))
        return {"popularity": self.weight * X.sum(axis=1)}


def test_requests_validated_for_two_versions_are_batched_per_version(monkeypatch):
    from types import SimpleNamespace

    # @serve.batch asks the replica context for max_ongoing_requests; outside a replica there is none
    monkeypatch.setattr(serve, "get_replica_context",
                        lambda: SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=256)))
    v1 = Served("m", "1", SumModel(2, 1.0), ["a", "b"], {})
    v2 = Served("m", "2", SumModel(3, 10.0), ["a", "b", "c"], {})
    # the replica's own class, without Serve or a registry; its batcher made afresh, since a batcher keeps its
    # queue (and event loop) on the function, which Serve pickles with the class when a later test deploys it
    user_class = next(k for k in HitMusicService.func_or_class.__mro__ if "_predict_batched" in k.__dict__)

    class Replica(user_class):
        _predict_batched = serve.batch(max_batch_size=16, batch_wait_timeout_s=0.2)(
            user_class.__dict__["_predict_batched"].__wrapped__)

    svc = object.__new__(Replica)
    svc.settings = ServeSettings(max_batch_size=16, batch_wait_timeout_s=0.2)
    svc.requests_batched = svc.requests_direct = 0
    svc._stop = threading.Event()  # what the replica's __del__ sets
    svc._in_flight = 8  # as if overlapping: every request goes through the batcher
    requests = [(v1 if i % 2 else v2, Rows(np.full((i % 3 + 1, v1.model.d if i % 2 else 3), float(i)),
                                           [f"t{i}"] * (i % 3 + 1))) for i in range(8)]

    async def main():
        return await asyncio.gather(*(svc._answer(rows, served) for served, rows in requests))

    answers = [orjson.loads(r.body) for r in asyncio.run(main())]
    sent = sum(len(rows.X) for _, rows in requests)
    got = sum(len(a["predictions"]) for a in answers)
    print(f"8 requests ({sent} rows) for versions 1 (2 columns) and 2 (3 columns) in the batcher at once: "
          f"{got} rows answered; model calls v1 {v1.model.calls}, v2 {v2.model.calls}")
    assert got == sent and svc.requests_batched == 8
    for (served, rows), a in zip(requests, answers):
        assert a["model_version"] == served.version
        expected = served.model.weight * rows.X.sum(axis=1)
        assert [p["popularity"] for p in a["predictions"]] == expected.tolist()
    assert len(v1.model.calls) < 4 and len(v2.model.calls) < 4  # batched: fewer calls than requests
