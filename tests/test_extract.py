"""The extraction job on a real local Ray: every kind of bad input, resuming after an interrupted run, and
audio fetched from an S3-compatible server (conftest's moto) and an HTTP server, both real servers on
loopback, stopped by their fixtures."""

from __future__ import annotations

import functools
import http.server
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from hitmodels import features
from hitmodels.config import FeatureConfig, InputPolicy, TrainConfig
from hitmodels.services import free_port, free_ports, signal_matching, stop_process
from pipelines import extract

pytestmark = pytest.mark.integration

FEATURES = list(features.feature_names(FeatureConfig()))


def _manifest(path: Path, rows: list[tuple]) -> Path:
    pd.DataFrame(rows, columns=["track_id", "audio_uri", "lyrics"]).to_parquet(path)
    return path


def _good_tracks(catalogue: dict, n: int) -> pd.DataFrame:
    return pd.read_parquet(catalogue["manifest"]).head(n)


def _raw_rows(out_dir: Path) -> pd.DataFrame:
    """Every row of every part file, without de-duplication: what is really on disk."""
    parts = sorted(out_dir.glob("*.parquet"))
    assert parts, f"no part files in {out_dir}"
    for p in parts:
        # the job adds each row's attempt (hitmodels.outdir) to the feature schema
        assert pq.read_schema(p) == features.output_schema().append(pa.field("attempt", pa.int32())), p
    return pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)


def _assert_ok_rows(table: pd.DataFrame) -> None:
    ok = table[table["error"].isna()]
    assert np.isfinite(ok[FEATURES].to_numpy(dtype=float)).all()


def test_every_kind_of_bad_input_gives_one_row_with_its_reason(ray_local, tiny_catalogue, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "garbage.mp3").write_bytes(b"ID3 but not really an mp3 " * 64)
    sf.write(tmp_path / "short.wav", (0.1 * rng.standard_normal(6000)).astype(np.float32), 22050)  # 0.27 s
    sf.write(tmp_path / "silent.wav", np.zeros(2 * 22050, dtype=np.float32), 22050)
    closed_port = free_port()  # nothing listens there
    bad = {
        "t-missing-file": (str(tmp_path / "nope.wav"), "missing"),
        "t-missing-uri": (None, "missing"),
        "t-empty": (str(tmp_path / "empty.wav"), "empty"),
        "t-undecodable": (str(tmp_path / "garbage.mp3"), "undecodable"),
        "t-too-short": (str(tmp_path / "short.wav"), "too_short"),
        "t-silent": (str(tmp_path / "silent.wav"), "silent"),
        "t-unreachable": (f"http://127.0.0.1:{closed_port}/x.wav", "fetch_failed"),
        "t-outside-roots": ("/etc/hostname", "uri_not_allowed"),
    }
    good = _good_tracks(tiny_catalogue, 3)
    rows = [(t, u, "la la la") for t, (u, _) in bad.items()] + list(good.itertuples(index=False, name=None))
    rows.append(rows[0])  # a duplicated manifest row: a row of its own, saying so (rows in = rows out)
    rows.append((None, str(tiny_catalogue["root"]), "la"))  # and a row without a track_id
    manifest = _manifest(tmp_path / "manifest.parquet", rows)

    # the closed port's host is allowed, so that fetching it fails rather than being refused
    policy = InputPolicy.for_manifest(manifest, hosts=(f"127.0.0.1:{closed_port}",), allow_private_http=True)
    counts = extract.run(manifest, tmp_path / "out", batch_size=2, block_size=3, policy=policy)

    assert counts == {"ok": 3, "missing": 2, "empty": 1, "undecodable": 1, "too_short": 1, "silent": 1,
                      "fetch_failed": 1, "uri_not_allowed": 1, "duplicate_track_id": 1, "missing_track_id": 1}
    raw = _raw_rows(tmp_path / "out")
    assert len(raw) == len(rows) and raw["row_key"].is_unique  # rows in = rows out, each once
    keyed = raw.set_index("row_key")
    assert keyed.loc["t-missing-file#2", "error"] == "duplicate_track_id: 't-missing-file' is also manifest row 1"
    assert keyed.loc["t-missing-file#2", "track_id"] == "t-missing-file"
    assert keyed.loc[f"#row{len(rows)}", "error"].startswith("missing_track_id: manifest row")
    assert pd.isna(keyed.loc[f"#row{len(rows)}", "track_id"])
    by_id = raw[raw["row_key"] == raw["track_id"]].set_index("track_id")
    for track_id, (_, reason) in bad.items():
        assert features.error_reason(by_id.loc[track_id, "error"]) == reason, by_id.loc[track_id, "error"]
        assert by_id.loc[track_id, FEATURES].isna().all(), track_id
    assert by_id.loc[list(good["track_id"]), "error"].isna().all()
    _assert_ok_rows(raw)


def test_resume_skips_done_tracks_and_repairs_an_interrupted_run(ray_local, tiny_catalogue, tmp_path):
    good = _good_tracks(tiny_catalogue, 12)
    manifest = _manifest(tmp_path / "manifest.parquet", list(good.itertuples(index=False, name=None)))
    out = tmp_path / "out"
    assert extract.run(manifest, out, batch_size=2, block_size=3) == {"ok": 12}
    parts = sorted(out.glob("*.parquet"))
    assert len(parts) >= 3, "the test needs several part files to lose some of them"
    ids_in = {p: set(pq.read_table(p, columns=["track_id"])["track_id"].to_pylist()) for p in parts}

    # An interrupted run: one part never written, one cut off while being written.
    lost, cut, kept = parts[0], parts[1], parts[2:]
    lost.unlink()
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept}

    assert extract.run(manifest, out, batch_size=2, block_size=3) == {"ok": 12}

    assert (out / extract.QUARANTINE / cut.name).exists()
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept} == before  # done parts untouched
    new_parts = set(out.glob("*.parquet")) - set(kept)
    redone = set().union(*(pq.read_table(p, columns=["track_id"])["track_id"].to_pylist() for p in new_parts))
    assert redone == ids_in[lost] | ids_in[cut]  # only the lost tracks were extracted again
    raw = _raw_rows(out)
    assert sorted(raw["track_id"]) == sorted(good["track_id"])  # every track exactly once
    _assert_ok_rows(raw)

    # a third run finds nothing to do and writes nothing
    files = sorted(out.glob("*.parquet"))
    assert extract.run(manifest, out, batch_size=2, block_size=3) == {"ok": 12}
    assert sorted(out.glob("*.parquet")) == files


def _local_rows(good: pd.DataFrame) -> pd.DataFrame:
    rows = [features.extract_row(t, u, lyr) for t, u, lyr in good.itertuples(index=False, name=None)]
    return pd.DataFrame(rows).set_index("track_id")[FEATURES]


@pytest.mark.s3
def test_audio_from_s3_compatible_store(ray_local, tiny_catalogue, tmp_path, s3_endpoint):
    """Previews read from a bucket and features written into one (conftest's session-wide moto server; its
    endpoint reaches the tasks through AWS_ENDPOINT_URL_S3 and its dummy keys through the environment the
    workers inherit, never the runtime environment), resumed from there."""
    import uuid

    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = f"previews-{uuid.uuid4().hex[:8]}"  # the server is shared with other tests
    s3.create_bucket(Bucket=bucket)
    good = _good_tracks(tiny_catalogue, 3)
    rows = []
    for t, uri, lyr in good.itertuples(index=False, name=None):
        s3.put_object(Bucket=bucket, Key=f"audio/{Path(uri).name}", Body=Path(uri).read_bytes())
        rows.append((t, f"s3://{bucket}/audio/{Path(uri).name}", lyr))
    s3.put_object(Bucket=bucket, Key="audio/empty.wav", Body=b"")
    rows += [("t-s3-empty", f"s3://{bucket}/audio/empty.wav", ""),
             ("t-s3-no-key", f"s3://{bucket}/audio/nope.wav", ""),
             ("t-s3-no-bucket", "s3://no-such-bucket/a.wav", "")]
    rows.append(("t-s3-other-bucket", "s3://not-allowed-bucket/a.wav", ""))
    manifest = _manifest(tmp_path / "manifest.parquet", rows)

    policy = InputPolicy.for_manifest(manifest, buckets=(bucket, "no-such-bucket"))
    out = f"s3://{bucket}/features"  # previews from a bucket, features into one
    counts = extract.run(manifest, out, batch_size=2, block_size=3, policy=policy)

    assert counts == {"ok": 3, "empty": 1, "fetch_failed": 2, "uri_not_allowed": 1}
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="features/")["Contents"]}
    assert f"features/{extract.FEATURE_CONFIG_FILE}" in keys and any(k.endswith(".parquet") for k in keys)
    # a re-run resumes from the bucket: the rows done stay done, the failed fetches are tried again
    assert extract.run(manifest, out, batch_size=2, block_size=3, policy=policy) == counts
    table = extract.read_features(out).set_index("track_id")
    assert len(table) == len(rows) and table.loc["t-s3-no-key", "attempt"] == 2
    assert (table.loc[list(good["track_id"]), "attempt"] == 1).all()
    assert "NoSuchKey" in table.loc["t-s3-no-key", "error"]
    # the same bytes give the same features as the local files
    pd.testing.assert_frame_equal(table.loc[list(good["track_id"]), FEATURES], _local_rows(good),
                                  check_exact=False, rtol=1e-6)  # float32 features; BLAS threads differ


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture()
def http_root(tmp_path):
    """A threaded HTTP server on a free loopback port serving ``tmp_path / "www"``; yields (dir, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_audio_over_http(ray_local, tiny_catalogue, tmp_path, http_root):
    root, base = http_root
    good = _good_tracks(tiny_catalogue, 3)
    rows = []
    for t, uri, lyr in good.itertuples(index=False, name=None):
        shutil.copy(uri, root / Path(uri).name)
        rows.append((t, f"{base}/{Path(uri).name}", lyr))
    (root / "empty.wav").write_bytes(b"")
    rows += [("t-http-empty", f"{base}/empty.wav", ""), ("t-http-404", f"{base}/nope.wav", "")]
    manifest = _manifest(tmp_path / "manifest.parquet", rows)

    # the test server is on loopback: allowed by name, and private addresses allowed for it
    policy = InputPolicy.for_manifest(manifest, hosts=(base.split("//")[1],), allow_private_http=True)
    counts = extract.run(manifest, tmp_path / "out", batch_size=2, block_size=3, policy=policy)

    assert counts == {"ok": 3, "empty": 1, "fetch_failed": 1}
    table = extract.read_features(tmp_path / "out").set_index("track_id")
    assert "404" in table.loc["t-http-404", "error"]
    pd.testing.assert_frame_equal(table.loc[list(good["track_id"]), FEATURES], _local_rows(good),
                                  check_exact=False, rtol=1e-6)  # float32 features; BLAS threads differ


# ---- a two-node Ray cluster on this machine -------------------------------------------------------------

def _kill_leftovers(tag: str) -> None:
    """SIGKILL processes of ours that outlived their process group: those whose command line names our own
    temp dir. Nothing else on the machine is touched (no `ray stop`, which stops every Ray here)."""
    signal_matching(lambda argv: any(tag.encode() in a for a in argv), signal.SIGKILL)


def _wait_started(proc: subprocess.Popen, log: Path, name: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while b"Ray runtime started" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            state = f"exited with {proc.returncode}" if proc.returncode is not None else f"not up in {timeout_s:.0f} s"
            pytest.fail(f"`ray start` of {name} {state}:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.3)


@pytest.fixture()
def two_node_cluster_with_jobs():
    yield from _two_nodes(dashboard=True)


def _two_nodes(dashboard: bool):
    """`ray start --head` and a second `ray start --address` node, 1 CPU each, on free loopback ports with
    their own temp dirs; yields the address (and, with ``dashboard``, the jobs API's URL: the dashboard that
    `ray job submit` talks to). Stopped by killing our own process groups."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    # Short: Ray's Unix sockets live under it, and socket paths are limited to 107 bytes.
    tmp = tempfile.mkdtemp(prefix="hm-ray-", dir="/tmp")
    port, dashboard_port, client_port, *agent_ports = free_ports(5)  # distinct: `ray start` refuses a repeat
    # token auth as everywhere in this project, with a token of the fixture's own: a fresh machine has no
    # ~/.ray/auth_token, and the user's is neither read nor written
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    env.pop("RAY_ADDRESS", None)
    common = ["--num-cpus", "1", "--object-store-memory", str(150 * 2**20), "--node-ip-address", "127.0.0.1",
              "--disable-usage-stats", "--block"]
    nodes = {
        "head": ["--head", "--port", str(port), "--include-dashboard", str(dashboard).lower(), "--dashboard-host",
                 "127.0.0.1", "--dashboard-port", str(dashboard_port), "--ray-client-server-port", str(client_port)],
        "node2": ["--address", f"127.0.0.1:{port}"],
    }
    procs, logs = [], []
    try:
        for (name, args), agent_port in zip(nodes.items(), agent_ports):
            logs.append(open(f"{tmp}/{name}.log", "wb"))
            procs.append(subprocess.Popen(
                [ray_bin, "start", *args, "--temp-dir", f"{tmp}/{name}", "--dashboard-agent-listen-port",
                 str(agent_port), *common], env=env, stdout=logs[-1], stderr=subprocess.STDOUT,
                start_new_session=True))
            # each node must be up before the next joins and the driver connects: a node that dies or hangs
            # fails here with its log, not as a driver that waits on an absent GCS until the test's timeout
            _wait_started(procs[-1], Path(f"{tmp}/{name}.log"), name)
        yield {"address": f"127.0.0.1:{port}", "env": env, "tmp": Path(tmp),
               "jobs": f"http://127.0.0.1:{dashboard_port}" if dashboard else None}
    finally:
        for p in reversed(procs):
            # `ray start --block` takes ~20 s to wind its node down on SIGTERM; a throwaway cluster need not
            stop_process(p, timeout_s=10.0, term_grace_s=3.0)
        for f in logs:
            f.close()
        _kill_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


_TASK_NODES = """
import json, sys
from ray.job_submission import JobSubmissionClient
from ray.util.state import list_tasks

address, submission = sys.argv[1:3]
info = JobSubmissionClient(address).get_job_info(submission)
tasks = list_tasks(address=address, filters=[("job_id", "=", info.job_id)], limit=10000, detail=True,
                   raise_on_missing_output=False)
work = {t.node_id for t in tasks if "MapBatches" in t.name or "score_into" in t.name}  # Ray Data's, scoring's
print(json.dumps({"status": str(info.status), "nodes": sorted(work)}))
"""


@pytest.mark.integration
def test_jobs_submitted_with_ray_job_submit_spread_over_a_two_node_cluster(tiny_catalogue, tmp_path, mlflow_uri,
                                                                           two_node_cluster_with_jobs):
    """The public path of cluster/README: `ray job submit` (token auth) of the extraction job and of the
    scoring job to a head with a second node joined; both finish with every row, and the tasks of each ran
    on both nodes (Ray's state API)."""
    from hitmodels.registry import promote
    from hitmodels.train import train
    from pipelines import score
    from tables import random_table

    cluster = two_node_cluster_with_jobs
    env = dict(cluster["env"])
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).parent / "ray")
    runtime_env = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": mlflow_uri,
                                           "HITMUSIC_ALLOWED_ROOTS": os.environ.get("HITMUSIC_ALLOWED_ROOTS", "")}})
    logs = lambda: "".join(p.read_text(errors="replace")[-2000:] for p in cluster["tmp"].glob("*.log"))

    def submit(name: str, *argv: str) -> list[str]:
        try:
            done = subprocess.run([ray_bin, "job", "submit", "--address", cluster["jobs"], "--submission-id", name,
                                   "--runtime-env-json", runtime_env, "--", sys.executable, "-m", *argv],
                                  env=env, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{name} timed out: {(exc.stdout or b'')[-3000:]!r}\nnode logs:\n{logs()}")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + logs()
        nodes = subprocess.run([sys.executable, "-c", _TASK_NODES, cluster["jobs"], name], env=env,
                               capture_output=True, text=True, timeout=120)
        assert nodes.returncode == 0, nodes.stderr[-3000:]
        result = json.loads(nodes.stdout.strip().splitlines()[-1])
        print(f"{name}: {result}")
        assert result["status"].endswith("SUCCEEDED")
        return result["nodes"]

    good = _good_tracks(tiny_catalogue, 16)
    manifest = _manifest(tmp_path / "manifest.parquet", list(good.itertuples(index=False, name=None)))
    ran = submit("extract-job", "pipelines.extract", str(manifest), str(tmp_path / "features"), "--batch-size", "1",
                 "--block-size", "2")
    assert len(ran) == 2, "extraction ran on one node only"
    assert sorted(_raw_rows(tmp_path / "features")["track_id"]) == sorted(good["track_id"])

    cfg = TrainConfig(family="lasso", model_name="two-node", experiment="two-node")
    promote("two-node", train(random_table(2), cfg, mlflow_uri).version, tracking_uri=mlflow_uri)
    table = random_table(3, n=2000)
    table.to_parquet(tmp_path / "catalogue.parquet", row_group_size=250)  # 8 row groups: 8 tasks
    ran = submit("score-job", "pipelines.score", str(tmp_path / "catalogue.parquet"), str(tmp_path / "scores"),
                 "--model", "two-node", "--batch-size", "250")
    assert len(ran) == 2, "scoring ran on one node only"
    scores = score.read_scores(tmp_path / "scores")
    assert sorted(scores["track_id"]) == sorted(table["track_id"]) and scores["error"].isna().all()

