"""Transient S3 errors (issue 16; the storage side of issue 15): a loopback proxy in front of the test's
S3-compatible server answers one request in ten with 503 SlowDown, 500, or a connection dropped without an
answer, and refuses the first four PUTs of every object; the scoring job reads its table from the bucket and
writes its scores into it through the proxy, and every row arrives exactly once. What makes it hold: the
retries of :func:`hitmodels.storage.s3_max_attempts` on every request, carried to the tasks
(:class:`hitmodels.storage.RetryingS3FileSystem`), and :func:`hitmodels.storage.s3_read` around the job's
reads, since pyarrow's S3 client retries neither a 5xx answer nor a dropped connection during a GET of a
small byte range (``INTERNAL_FAILURE ... Failed to flush response stream``)."""

from __future__ import annotations

import http.client
import http.server
import io
import itertools
import threading
from urllib.parse import urlsplit

import pandas as pd
import pyarrow.parquet as pq
import pytest

from hitmodels.config import TrainConfig
from hitmodels.services import free_port
from tests.tables import random_table

pytestmark = [pytest.mark.integration, pytest.mark.s3]
MODEL = "s3-faults"
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class FaultyProxy:
    """HTTP proxy on 127.0.0.1 to ``upstream``; of every ``every`` requests one gets a fault, the ``kinds``
    in turn: ``"503"`` (SlowDown), ``"500"``, or ``"drop"`` (the connection closed without an answer).
    Besides, the first ``put_burst`` PUTs of every object answer 503 in a row (``"503 burst"``)."""

    def __init__(self, upstream: str, every: int = 4, kinds: tuple[str, ...] = ("503", "500"), put_burst: int = 0):
        target = urlsplit(upstream)
        counter, faults = itertools.count(1), itertools.cycle(kinds)
        self.injected: dict[str, int] = {k: 0 for k in kinds} | ({"503 burst": 0} if put_burst else {})
        puts: dict[str, int] = {}
        self.forwarded = 0
        self.methods: dict[str, int] = {}  # faults per request method
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                with lock:
                    fault = next(faults) if next(counter) % every == 0 else None
                    if self.command == "PUT" and fault is None:
                        puts[self.path] = puts.get(self.path, 0) + 1
                        fault = "503 burst" if puts[self.path] <= put_burst else None
                    if fault:
                        proxy.injected[fault] += 1
                        proxy.methods[f"{self.command} {fault}"] = proxy.methods.get(f"{self.command} {fault}", 0) + 1
                    else:
                        proxy.forwarded += 1
                if fault == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault:
                    self.send_response(int(fault.split()[0]))
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                # a HEAD answer has no body but the object's length
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_scoring_from_and_into_a_bucket_survives_throttling_and_5xx(
        ray_local, mlflow_uri, s3_endpoint, tmp_path, monkeypatch):
    import boto3

    from hitmodels.registry import promote
    from hitmodels.train import train
    from pipelines import score

    promote(MODEL, train(random_table(4), TrainConfig(family="lasso", model_name=MODEL, experiment=MODEL),
                         mlflow_uri).version, tracking_uri=mlflow_uri)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="flaky")
    table = random_table(9, n=600)
    table.to_parquet(tmp_path / "t.parquet", row_group_size=100)  # six tasks, six parts
    s3.upload_file(str(tmp_path / "t.parquet"), "flaky", "in/t.parquet")
    # 10 % (a sustained 25 % empties the SDKs' retry quota, by design). 4 refusals in a row of every PUT: past
    # the SDKs' default of 3 attempts, so the job's bound must reach the tasks that write its parts
    with FaultyProxy(s3_endpoint, every=10, put_burst=4, kinds=("503", "500", "drop")) as proxy:
        # the job's filesystem is made on the driver and handed to its tasks: all S3 traffic goes through
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        score.run("s3://flaky/in/t.parquet", "s3://flaky/scores", MODEL, batch_size=100)  # a task per row group
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    out = score.read_scores("s3://flaky/scores")
    print(f"S3 requests forwarded {proxy.forwarded}, faults injected {proxy.injected} ({proxy.methods}); rows in {len(table)}, "
          f"rows out {len(out)}")
    assert sum(proxy.injected.values()) >= 3 and all(proxy.injected.values())
    # every part as written, straight from the server: every row once, none lost or doubled by a retry
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="flaky", Prefix="scores/")["Contents"]
            if o["Key"].endswith(".parquet")]
    rows = pd.concat([pq.read_table(io.BytesIO(s3.get_object(Bucket="flaky", Key=k)["Body"].read())).to_pandas()
                      for k in keys], ignore_index=True)
    assert len(rows) == len(table) and rows["row_key"].is_unique
    assert proxy.injected["503 burst"] >= 4 * len(keys)
    assert sorted(out["track_id"]) == sorted(table["track_id"]) and out["error"].isna().all()
