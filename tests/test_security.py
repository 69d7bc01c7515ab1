"""Safe by default: the input policy and bounds, secrets, models as data, Ray's token auth.

Serve's share (413 before parsing, lyric bounds, offline docs, HAProxy's side ports, short registry
reasons) is in test_serve.py, next to the app it runs against.
"""

from __future__ import annotations

import argparse
import http.server
import io
import os
import pickle
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import FAKE_AWS_KEY_ID, FAKE_AWS_SECRET
from hitmodels import audio, features, fetch, lyrics
from hitmodels.config import InputPolicy, ServiceConfig
from hitmodels.services import ensure_ray_token, free_port, signal_matching, stop_process


def _wav(path: Path, seconds: float = 2.0, sr: int = 22050) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr)
    return path


def _reason(fn, *args) -> str:
    with pytest.raises(fetch.FetchError) as exc:
        fn(*args)
    return exc.value.reason


# ---- local paths ----------------------------------------------------------------------------------------


def test_local_paths_outside_the_roots_are_refused_whether_they_exist_or_not(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    _wav(root / "ok.wav")
    (root / "link.wav").symlink_to("/etc/hostname")
    os.mkfifo(root / "pipe.wav")
    policy = InputPolicy(local_roots=(str(root),))
    assert len(fetch.fetch(str(root / "ok.wav"), policy)) > 1000
    assert len(fetch.fetch((root / "ok.wav").as_uri(), policy)) > 1000
    hostile = ["/etc/passwd", "/etc/no-such-file-here", f"{root}/../../../../etc/hostname", str(root / "link.wav"),
               "/dev/zero", "file:///etc/passwd", "file://otherhost/etc/passwd", "ftp://example.com/a.mp3"]
    messages = {}
    for uri in hostile:
        with pytest.raises(fetch.FetchError) as exc:
            fetch.fetch(uri, policy)
        assert exc.value.reason == "uri_not_allowed", (uri, exc.value)
        messages[uri] = str(exc.value).replace(uri, "URI")
    # an existing and a missing file outside the roots get the same answer: errors reveal nothing
    assert messages["/etc/passwd"] == messages["/etc/no-such-file-here"]
    assert _reason(fetch.fetch, str(root / "pipe.wav"), policy) == "uri_not_allowed"  # not a regular file
    assert _reason(fetch.fetch, str(root / "missing.wav"), policy) == "missing"  # inside: a normal miss


def test_reads_stop_at_the_byte_bound_and_decoding_at_the_duration_bound(tmp_path):
    path = _wav(tmp_path / "a.wav", seconds=3.0)
    assert _reason(fetch.fetch, str(path), InputPolicy(local_roots=(str(tmp_path),), max_audio_bytes=1000)) \
        == "too_large"
    with pytest.raises(audio.AudioError, match="too_long"):
        audio.load(str(path), policy=InputPolicy(local_roots=(str(tmp_path),), max_duration_s=2.0))
    y, sr = audio.load(str(path), policy=InputPolicy(local_roots=(str(tmp_path),), max_duration_s=3.5))
    assert len(y) == 3 * sr


def test_decoding_holds_mono_samples_only_and_refuses_absurd_sample_rates():
    """Channels are mixed down block by block: a file declaring many channels costs its mono length."""
    import tracemalloc

    x = (0.1 * np.random.default_rng(0).standard_normal((48_000 * 20, 8))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, 48_000, format="WAV", subtype="FLOAT")
    data = buf.getvalue()  # 29 MB of 8 channels; mono is 3.7 MB
    tracemalloc.start()
    y, sr = audio.decode(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(y, audio.to_mono(x))
    assert peak < len(data) / 2, f"{peak / 2**20:.1f} MiB for {len(data) / 2**20:.1f} MiB of input"
    buf = io.BytesIO()
    sf.write(buf, x[:1000, :1], 384_000, format="WAV", subtype="FLOAT")
    with pytest.raises(audio.AudioError, match="sample rate"):
        audio.decode(buf.getvalue())


def test_a_jobs_default_policy_is_the_manifests_directory_and_home(tmp_path, monkeypatch):
    for var in ("HITMUSIC_ALLOWED_ROOTS", "HITMUSIC_ALLOWED_S3_BUCKETS", "HITMUSIC_ALLOWED_HTTP_HOSTS",
                "HITMUSIC_ALLOW_PRIVATE_HTTP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HITMUSIC_HOME", str(tmp_path / "home"))
    manifest = tmp_path / "cat" / "manifest.parquet"
    manifest.parent.mkdir()
    p = InputPolicy.for_manifest(manifest)
    assert set(p.local_roots) == {str((tmp_path / "home").resolve()), str(manifest.parent.resolve())}
    assert p.s3_buckets == () and p.http_hosts == () and not p.allow_private_http
    assert InputPolicy.for_manifest("s3://labels-catalogue/in/manifest.csv").s3_buckets == ("labels-catalogue",)
    # the CLI's flags widen it for one job, the environment for every job
    from pipelines.extract import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(manifest), "out", "--allow-root", "/srv/audio", "--allow-bucket", "b",
                              "--allow-host", "cdn.example.com", "--max-duration", "60"])
    wide = fetch.policy_from_args(args, manifest)
    assert "/srv/audio" in wide.local_roots and wide.s3_buckets == ("b",) and wide.max_duration_s == 60
    assert wide.http_hosts == ("cdn.example.com",)
    monkeypatch.setenv("HITMUSIC_ALLOWED_HTTP_HOSTS", "a.example.com, b.example.com:8443")
    assert InputPolicy.for_manifest(manifest).http_hosts == ("a.example.com", "b.example.com:8443")


# ---- HTTP: allow-list, private addresses, redirects, byte bound -----------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """/ok.wav, /big (Content-Length over the bound), /chunked (no length, endless), /to-other (redirect to
    another host name), /to-self (same-host redirect), /loop (redirects to itself), else 404."""

    wav = b""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.paths.append(self.path)
        port = self.server.server_address[1]
        path = self.path.split("?")[0]
        if path == "/ok.wav":
            self._send(200, self.wav)
        elif path == "/big":
            self._send(200, b"\0" * 5000)
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"400\r\n" + b"\0" * 1024 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path in ("/to-other", "/to-self", "/loop"):
            target = {"/to-other": f"http://localhost:{port}/ok.wav", "/to-self": "/ok.wav", "/loop": "/loop"}[path]
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"")

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def web(tmp_path):
    """An HTTP server on a free loopback port that records the paths asked for; yields (base, server)."""
    handler = type("H", (_Handler,), {"wav": _wav(tmp_path / "w.wav").read_bytes()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_http_needs_an_allowed_host_and_never_reaches_private_addresses_unless_allowed(web):
    base, server = web
    host = base.split("//")[1]
    for policy in (InputPolicy(), InputPolicy(http_hosts=("example.com",)), InputPolicy(http_hosts=(host,))):
        assert _reason(fetch.fetch, f"{base}/ok.wav", policy) == "uri_not_allowed"
    # cloud metadata and the MLflow port: refused before any connection (the host is allowed by name here)
    assert _reason(fetch.fetch, "http://169.254.169.254/latest/meta-data/",
                   InputPolicy(http_hosts=("169.254.169.254",))) == "uri_not_allowed"
    assert server.paths == [], "a refused URI reached the server"
    ok = InputPolicy(http_hosts=(host,), allow_private_http=True)
    assert len(fetch.fetch(f"{base}/ok.wav", ok)) > 1000
    assert server.paths == ["/ok.wav"]


def test_http_redirects_stay_on_the_host_and_reads_stop_at_the_bound(web):
    base, server = web
    policy = InputPolicy(http_hosts=(base.split("//")[1], "localhost"), allow_private_http=True,
                         max_audio_bytes=4096)
    assert _reason(fetch.fetch, f"{base}/to-other", policy) == "uri_not_allowed"
    assert "/ok.wav" not in server.paths, "the redirect to another host was followed"
    assert len(fetch.fetch(f"{base}/to-self", replace(policy, max_audio_bytes=2**20))) > 1000
    assert _reason(fetch.fetch, f"{base}/loop", policy) == "fetch_failed"
    assert _reason(fetch.fetch, f"{base}/big", policy) == "too_large"
    assert _reason(fetch.fetch, f"{base}/chunked", policy) == "too_large"
    with pytest.raises(fetch.FetchError) as exc:
        fetch.fetch(f"{base}/gone.wav?X-Amz-Signature=SECRETSIG&X-Amz-Credential=AKIAXX", policy)
    assert exc.value.reason == "fetch_failed" and "HTTP 404" in str(exc.value)
    assert "SECRETSIG" not in str(exc.value) and "AKIAXX" not in str(exc.value)


@pytest.mark.parametrize("ip, public", [
    ("93.184.216.34", True), ("2606:2800:220:1:248:1893:25c8:1946", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.1", False), ("169.254.169.254", False),
    ("100.100.100.200", False),  # shared address space (CGNAT): a cloud's metadata service lives there
    ("0.0.0.0", False), ("::1", False), ("fe80::1", False), ("fd00::1", False),
    ("::ffff:169.254.169.254", False), ("64:ff9b::a9fe:a9fe", False), ("2002:a9fe:a9fe::", False),
])
def test_only_global_addresses_count_as_public(ip, public):
    assert fetch.public_address(ip) is public


def test_http_connects_to_the_address_it_checked(web, monkeypatch):
    """The name is resolved once, checked, and that address is connected to: a resolver that answers
    public first and loopback afterwards (DNS rebinding) cannot move the connection."""
    import socket

    base, server = web
    port = int(base.rsplit(":", 1)[1])
    answers = iter(["127.0.0.1"] + ["93.184.216.34"] * 5)
    real = socket.getaddrinfo

    def resolver(host, *args, **kwargs):
        if host == "audio.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    policy = InputPolicy(http_hosts=("audio.example",))
    assert _reason(fetch.fetch, f"http://audio.example:{port}/ok.wav", policy) == "uri_not_allowed"  # loopback
    assert server.paths == []
    answers = iter(["127.0.0.1"])
    assert len(fetch.fetch(f"http://audio.example:{port}/ok.wav", replace(policy, allow_private_http=True))) > 1000
    assert server.paths == ["/ok.wav"]


def test_odd_uris_are_row_errors_never_crashes():
    policy = InputPolicy(s3_buckets=("allowed",))
    for uri in ("http://[x/a.wav", "http://host:99999/a.wav", "s3://KEY:SECRET@allowed/a.wav",
                "s3://allowed/../other/a.wav", "s3://allowed:9000/a.wav"):
        with pytest.raises(fetch.FetchError) as exc:
            fetch.fetch(uri, policy)
        assert exc.value.reason in ("uri_not_allowed", "fetch_failed"), (uri, exc.value)
        assert "SECRET" not in str(exc.value) and "KEY" not in str(exc.value)
    assert fetch.redact("http://host:99999/a?b") == "http://…"


def test_redaction_drops_userinfo_and_query_strings():
    assert fetch.redact("https://user:pw@cdn.example.com:8443/a.mp3?sig=abc#f") == "https://cdn.example.com:8443/a.mp3?…"
    assert fetch.redact("s3://bucket/key.mp3?versionId=1") == "s3://bucket/key.mp3?…"
    assert fetch.redact("/data/audio/a.mp3") == "/data/audio/a.mp3"


# ---- lyrics -----------------------------------------------------------------------------------------------


def test_lyrics_past_the_bounds_are_refused_and_similarity_memory_stays_bounded():
    import tracemalloc

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    with pytest.raises(lyrics.LyricsError, match="lines"):
        lyrics.lyric_features("a\n" * 20_000)
    with pytest.raises(lyrics.LyricsError, match="characters"):
        lyrics.lyric_features("la " * 40_000)
    with pytest.raises(lyrics.LyricsError, match="sentences"):  # one line, 33,000 sentences
        lyrics.lyric_features("a. " * 33_000)
    rng = np.random.default_rng(0)
    vocab = ["love", "you", "baby", "night", "dance", "fire", "heart", "oh"]
    sents = [" ".join(rng.choice(vocab, rng.integers(1, 5))) for _ in range(700)]
    tfidf = TfidfVectorizer(token_pattern=lyrics._WORD.pattern).fit_transform(sents)
    iu = np.triu_indices(len(sents), k=1)
    dense = float(np.mean(cosine_similarity(tfidf)[iu] >= 0.75 - 1e-12))
    assert lyrics.sentence_similarity(sents) == pytest.approx(dense, abs=1e-12)
    assert lyrics.sentence_similarity(sents, block=7) == pytest.approx(dense, abs=1e-12)
    tracemalloc.start()
    assert lyrics.sentence_similarity(["a"] * 6000) == 1.0  # the dense way: ~600 MB
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100 * 2**20, f"{peak / 2**20:.0f} MiB"


# ---- a whole extraction job against hostile rows ----------------------------------------------------------


def test_extract_job_refuses_hostile_rows_and_keeps_the_good_ones(ray_local, tiny_catalogue, tmp_path):
    from pipelines import extract

    good = pd.read_parquet(tiny_catalogue["manifest"]).head(2)
    hostile = {"t-dev-zero": "/dev/zero", "t-passwd": "/etc/passwd", "t-dotdot": f"{tmp_path}/../../../etc/hostname",
               "t-file-uri": "file:///etc/passwd", "t-metadata": "http://169.254.169.254/latest/meta-data/",
               "t-mlflow": "http://127.0.0.1:5000/", "t-gopher": "gopher://127.0.0.1:70/"}
    rows = [(t, u, "") for t, u in hostile.items()] + list(good.itertuples(index=False, name=None))
    rows.append(("t-lyric-bomb", good.iloc[0]["audio_uri"], "a\n" * 20_000))
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame(rows, columns=["track_id", "audio_uri", "lyrics"]).to_parquet(manifest)

    # the metadata service and MLflow's port allowed by name: refused as private addresses, before connecting
    policy = InputPolicy.for_manifest(manifest, hosts=("169.254.169.254", "127.0.0.1:5000"))
    counts = extract.run(manifest, tmp_path / "out", batch_size=2, block_size=4, policy=policy)

    assert counts == {"ok": 2, "uri_not_allowed": 7, "lyrics_too_long": 1}, counts
    out = extract.read_features(tmp_path / "out").set_index("track_id")
    assert len(out) == len(rows)  # rows in = rows out
    assert out.loc[list(good["track_id"]), "error"].isna().all()
    assert "loopback, link-local or private" in out.loc["t-metadata", "error"]
    assert "loopback, link-local or private" in out.loc["t-mlflow", "error"]


# ---- secrets --------------------------------------------------------------------------------------------


def test_s3_credentials_never_reach_runtime_env_logs_or_mlflow(ray_local, s3_endpoint, mlflow_uri, tiny_catalogue,
                                                               tmp_path):
    """The session's S3 server runs with distinctive fake keys in the environment: after an S3 extraction
    job and a training run, neither key appears in the runtime environment we give tasks, in any Ray log
    of the session, or in the run's parameters and tags."""
    import uuid

    import boto3
    import mlflow

    from hitmodels.config import TrainConfig
    from hitmodels.train import train
    from pipelines import extract
    from tables import random_table

    assert os.environ["AWS_SECRET_ACCESS_KEY"] == FAKE_AWS_SECRET
    bucket = f"secrets-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    uri = pd.read_parquet(tiny_catalogue["manifest"]).iloc[0]["audio_uri"]
    s3.put_object(Bucket=bucket, Key="a.wav", Body=Path(uri).read_bytes())
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame({"track_id": ["s1", "s2"], "audio_uri": [f"s3://{bucket}/a.wav", f"s3://{bucket}/nope.wav"],
                  "lyrics": ["", ""]}).to_parquet(manifest)
    remote_args = extract._task_env(pd.Series([f"s3://{bucket}/a.wav"]))
    assert FAKE_AWS_SECRET not in repr(remote_args) and FAKE_AWS_KEY_ID not in repr(remote_args)
    counts = extract.run(manifest, tmp_path / "out", policy=InputPolicy.for_manifest(manifest, buckets=(bucket,)))
    assert counts == {"ok": 1, "fetch_failed": 1}

    result = train(random_table(5), TrainConfig(ae_epochs=2, mlp_epochs=2, model_name="secrets-test",
                                                experiment="secrets-test"), mlflow_uri)
    run = mlflow.MlflowClient(mlflow_uri).get_run(result.run_id)
    logged = repr(run.data.params) + repr(run.data.tags)
    assert FAKE_AWS_SECRET not in logged and FAKE_AWS_KEY_ID not in logged

    session = Path(ray_local._private.worker._global_node.get_session_dir_path())
    leaked = []
    for f in session.rglob("*"):
        if f.is_file() and f.stat().st_size < 50 * 2**20:
            data = f.read_bytes()
            if FAKE_AWS_SECRET.encode() in data or FAKE_AWS_KEY_ID.encode() in data:
                leaked.append(str(f.relative_to(session)))
    assert not leaked, leaked


# ---- models are data ------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this writes a marker file: a stand-in for code a registry user smuggles into a version."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_registered_versions_hold_no_pickle_and_load_without_unpickling(mlflow_uri, tmp_path):
    import mlflow

    from hitmodels.config import TrainConfig
    from hitmodels.registry import ModelRef, load_model
    from hitmodels.train import train
    from tables import random_table

    result = train(random_table(3), TrainConfig(ae_epochs=2, mlp_epochs=2, model_name="data-test",
                                                experiment="data-test"), mlflow_uri)
    client = mlflow.MlflowClient(mlflow_uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/data-test/{result.version}",
                                                     dst_path=str(tmp_path / "dl"), tracking_uri=mlflow_uri))
    files = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    assert {"artifacts/weights.pt", "artifacts/arch.json", "artifacts/preprocess.json"} <= set(files), files
    assert "python_model.pkl" not in (local / "MLmodel").read_text()
    model = load_model(ModelRef("data-test", result.version), mlflow_uri)
    assert model.columns and {"popularity", "class"} <= set(model.outputs)
    # as a Ray worker of `hitmusic up` loads it: the tracking URI passed, none in the environment
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    code = (f"from hitmodels.registry import ModelRef, load_model; "
            f"print(len(load_model(ModelRef('data-test', '{result.version}'), '{mlflow_uri}').columns))")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.split()[-1] == str(len(model.columns)), done.stderr[-2000:]

    # a version whose weights file is a pickle with a payload: refused, and the payload never runs
    marker = tmp_path / "marker"
    bundle = tmp_path / "evil"
    bundle.mkdir()
    for name in ("arch.json", "preprocess.json"):
        (bundle / name).write_bytes((local / "artifacts" / name).read_bytes())
    (bundle / "weights.pt").write_bytes(pickle.dumps({"w": _Payload(str(marker))}))
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("data-test")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).parents[1] / "hitmodels" / "pyfunc_code.py"),
            artifacts={k: str(bundle / f) for k, f in (("weights", "weights.pt"), ("arch", "arch.json"),
                                                         ("preprocess", "preprocess.json"))},
            registered_model_name="data-test")
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|unsupported"):
        load_model(ModelRef("data-test", str(info.registered_model_version)), mlflow_uri)
    assert not marker.exists(), "loading a registered version ran code from it"


# ---- Ray's token auth ------------------------------------------------------------------------------------


def test_token_file_is_created_private_and_a_loose_one_is_tightened(tmp_path):
    old = os.umask(0)
    try:
        path = ensure_ray_token(tmp_path / "t")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_text()) == 64
    token = path.read_text()
    path.chmod(0o644)
    assert ensure_ray_token(path).read_text() == token and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_haproxy_wrapper_moves_side_listeners_to_loopback(tmp_path):
    from hitmodels.services import HAPROXY_WRAPPER

    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text("global\n    stats socket /x/admin.sock mode 666 level admin expose-fd listeners\n"
                   "frontend prometheus\n    bind :9101\nfrontend http_frontend\n    bind 127.0.0.1:8000\n"
                   "listen stats\n  bind *:8404\n  stats enable\n")
    fake = tmp_path / "haproxy"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/argv\n")
    fake.chmod(0o755)
    done = subprocess.run([str(HAPROXY_WRAPPER), "-db", "-f", str(cfg), "-sf", "123"], capture_output=True,
                          env=dict(os.environ, HITMUSIC_HAPROXY_REAL=str(fake)), timeout=30)
    assert done.returncode == 0, done.stderr
    text = cfg.read_text()
    assert "bind 127.0.0.1:9101" in text and "bind 127.0.0.1:8404" in text and "bind 127.0.0.1:8000" in text
    assert "mode 600 level admin" in text and "mode 666" not in text
    assert (tmp_path / "argv").read_text().split() == ["-db", "-f", str(cfg), "-sf", "123"]
    # fails closed: a template whose stats line it cannot rewrite, or a bind that is not an address
    (tmp_path / "argv").unlink()
    cfg.write_text("listen stats\n  bind *:8404 ssl crt /x.pem\n")
    changed = subprocess.run([str(HAPROXY_WRAPPER), "-db", "-f", str(cfg)], capture_output=True, text=True,
                             env=dict(os.environ, HITMUSIC_HAPROXY_REAL=str(fake)), timeout=30)
    assert changed.returncode == 1 and "every interface" in changed.stderr and not (tmp_path / "argv").exists()
    odd = subprocess.run([str(HAPROXY_WRAPPER), "-db", "-f", str(cfg)], capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, HITMUSIC_HAPROXY_REAL=str(fake), HITMUSIC_HAPROXY_BIND="1.2.3.4/x;rm"))
    assert odd.returncode == 1 and not (tmp_path / "argv").exists()


def test_hitmusic_up_runs_ray_with_token_auth_on_a_fresh_machine(tmp_path, monkeypatch):
    """A fresh HOME (no ~/.ray/auth_token anywhere): `hitmusic up` creates the project's token (0600), the
    jobs API refuses requests without it (401/403) and accepts them with it, a second `hitmusic up` exits 0
    saying what already runs, and `ray job submit` works with the documented environment."""
    import httpx

    from hitmodels.services import up

    home = tmp_path / "home"
    tag = tempfile.mkdtemp(prefix="hm-up-", dir="/tmp")  # short: Ray's socket paths live under it
    monkeypatch.setenv("HOME", str(tmp_path / "fresh-home"))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    cfg = ServiceConfig(home=home, mlflow_port=free_port(), ray_port=free_port(), ray_dashboard_port=free_port())
    ray_args = ("--temp-dir", tag, "--num-cpus", "1", "--include-dashboard", "true",
                "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
                "--object-store-memory", str(100 * 2**20))
    try:
        info = up(cfg, ray_args)
        token_file = home / "ray_auth_token"
        assert info["ray_token"] == str(token_file) and info["already_running"] == ""
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert not (tmp_path / "fresh-home" / ".ray" / "auth_token").exists()
        jobs = f"http://127.0.0.1:{cfg.ray_dashboard_port}/api/jobs/"
        deadline = time.monotonic() + 60
        while True:
            try:
                anonymous = httpx.get(jobs, timeout=10)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the dashboard never answered"
                time.sleep(1)
        assert anonymous.status_code in (401, 403), anonymous.text
        token = token_file.read_text().strip()
        assert httpx.get(jobs, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200

        again = subprocess.run([sys.executable, "-m", "hitmodels.cli", "up", "--home", str(home), "--mlflow-port",
                                str(cfg.mlflow_port), "--ray-port", str(cfg.ray_port), "--dashboard-port",
                                str(cfg.ray_dashboard_port)], capture_output=True, text=True, timeout=180)
        assert again.returncode == 0, again.stderr
        assert "already running: mlflow, ray" in again.stdout and f"RAY_AUTH_TOKEN_PATH={token_file}" in again.stdout

        env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
        ray_bin = str(Path(sys.executable).parent / "ray")
        submit = subprocess.run([ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{cfg.ray_dashboard_port}",
                                 "--", "python", "-c", "print('hello from a job')"], env=env, capture_output=True,
                                text=True, timeout=180)
        assert submit.returncode == 0 and "hello from a job" in submit.stdout, submit.stdout + submit.stderr
    finally:
        pid_file = cfg.run_dir / "mlflow.pid"
        if pid_file.exists():
            stop_process(int(pid_file.read_text()))
        # our own head only: `ray stop` would stop every Ray on this machine, the session's included
        signal_matching(lambda argv: any(tag.encode() in a for a in argv), 9)
        time.sleep(1)
        signal_matching(lambda argv: any(tag.encode() in a for a in argv), 9)
