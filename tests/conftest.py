"""Session-wide real services: one local Ray instance, one ``mlflow server`` (SQLite backend), Serve's proxy.

All bind to 127.0.0.1 on free ports and are stopped at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from hitmodels.config import ServiceConfig, SynthConfig
from hitmodels.services import (ensure_ray_token, free_port, refresh_ray_auth, serve_runtime_env, start_mlflow,
                                stop_process)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HITMUSIC_SHARED", REPO.parent / "shared"))
# The S3 test server's credentials: distinctive, so tests can prove they never reach logs, MLflow or Ray's
# runtime environments.
FAKE_AWS_KEY_ID = "AKIAHITMUSICFAKE7Q2Z"
FAKE_AWS_SECRET = "hitmusicFakeSecret/9vX2kLq8RwT5nZ3mB7cD1fH4jK6pS0u"


@pytest.fixture(scope="session", autouse=True)
def trusted_roots(tmp_path_factory):
    """The tests' own data (../shared and pytest's temp dirs, where catalogues and manifests are generated)
    is where jobs may read audio from, as a user widens the input policy with HITMUSIC_ALLOWED_ROOTS; set
    before Ray starts so that drivers and workers agree. Tests of the policy itself build theirs explicitly."""
    old = os.environ.get("HITMUSIC_ALLOWED_ROOTS")
    os.environ["HITMUSIC_ALLOWED_ROOTS"] = os.pathsep.join([str(SHARED), str(tmp_path_factory.getbasetemp())])
    yield
    _restore({"HITMUSIC_ALLOWED_ROOTS": old})


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(f"../shared is absent ({SHARED}): real SPD rows and previews are only in the team checkout")
    return SHARED


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    home = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = start_mlflow(home, "127.0.0.1", port)
    uri = f"http://127.0.0.1:{port}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    stop_process(proc)
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3-compatible server (moto's) on loopback, for the whole session. Its endpoint and dummy
    credentials go into the environment before Ray starts, so Ray workers see them too."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": FAKE_AWS_KEY_ID, "AWS_SECRET_ACCESS_KEY": FAKE_AWS_SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": endpoint}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    _restore(old)


def _restore(old: dict[str, str | None]) -> None:
    """Put environment variables back as they were (None: unset)."""
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local(mlflow_uri, s3_endpoint, trusted_roots):
    """A real local Ray instance (2 CPUs, like CI); workers inherit MLFLOW_TRACKING_URI and the S3 endpoint."""
    import ray

    # Serve as `hitmusic up` runs it (HAProxy ingress where installed), on ports and paths of its own so
    # that a user's running services on this machine are not touched; set before Ray or Serve is imported
    haproxy_dir = Path(tempfile.mkdtemp(prefix="hm-hap-", dir="/tmp"))  # short: Unix socket paths
    serve_env = serve_runtime_env(ServiceConfig().serve_ingress, private_dir=haproxy_dir)
    # token auth as everywhere, with a token file of the session's own (mode 0600): the user's
    # ~/.ray/auth_token is neither read nor written
    token = ensure_ray_token(haproxy_dir / "ray_auth_token")
    serve_env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    old = {k: os.environ.get(k) for k in [*serve_env, "RAY_AUTH_TOKEN"]}
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(serve_env)
    refresh_ray_auth()  # test modules imported Ray before this fixture set the mode
    # address="local": always a fresh instance of our own, even if a `ray start` cluster runs on this machine.
    # S3 credentials reach the workers as they would on a real node, through the environment they inherit
    # (set by s3_endpoint before Ray starts), never through the runtime environment.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {k: os.environ[k] for k in (
                 "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")}})
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()
        _restore(old)
        shutil.rmtree(haproxy_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def serve_port(ray_local) -> int:
    """Serve's HTTP proxy on a free loopback port; tests deploy their apps under their own route prefixes."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


@pytest.fixture(scope="session")
def tiny_catalogue(tmp_path_factory) -> dict[str, Path]:
    """40 tracks of 3-second previews, 10 artists; generated once per session."""
    from hitmodels.synth import generate

    root = tmp_path_factory.mktemp("catalogue")
    paths = generate(root, SynthConfig(n_tracks=48, tracks_per_artist=4, duration_s=3.0, sr=22050, seed=3))
    return {"root": root, **paths}
