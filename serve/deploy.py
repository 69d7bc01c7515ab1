"""Deploy the Serve application on the running Ray instance (what ``hitmusic serve`` does).

    python -m serve.deploy --model hitmusicnet --alias champion --port 8000
    python -m serve.deploy --model siamese-cnn           # beside it, under /siamese-cnn

Equivalent to ``serve deploy serve/config.yaml`` with the same arguments; the config file is the place for
replicas and autoscaling on a cluster. Each registered model is an application of its own: ``hitmusicnet``
(the champion of the families on feature rows) at ``/``, any other model at ``/<model name>`` (its own
application, ``hitmusic-<model name>``), so that a HitMusicNet and a Siamese champion are served side by side
by the same HTTP proxy; ``--route-prefix`` overrides.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from hitmodels.entry import module_main
from hitmodels.config import ServeSettings
from hitmodels.services import init_ray

APP_NAME = "hitmusic"
# the proxy, like the replicas, writes no line per request (see serve/app.py)
PROXY_LOGGING = {"enable_access_log": False}


# Below this many CPUs in the cluster one replica is the default: two replicas hold a CPU between them (0.5
# each), and the batch jobs of a 2-core machine need one each.
MIN_CPUS_FOR_TWO_REPLICAS = 4


def default_replicas() -> int:
    """Replicas of ``--replicas auto``: two (a replica can die without an outage) where the cluster has
    :data:`MIN_CPUS_FOR_TWO_REPLICAS` CPUs, else one."""
    import ray

    return 2 if ray.cluster_resources().get("CPU", 0) >= MIN_CPUS_FOR_TWO_REPLICAS else 1


def deploy(settings: ServeSettings = ServeSettings(), host: str = "127.0.0.1", port: int = 8000,
           app_name: str = APP_NAME, route_prefix: str = "/", replicas: int | None = None) -> str:
    """Start Serve's HTTP proxy on ``host:port`` (if it is not up yet) and (re)deploy the app with
    ``replicas`` replicas (default :func:`default_replicas`); returns the app's base URL. An already running
    proxy keeps its own address, which is what the URL reports."""
    from ray import serve

    from serve.app import HitMusicService

    init_ray()
    replicas = replicas or default_replicas()
    serve.start(http_options={"host": host, "port": port}, logging_config=PROXY_LOGGING)
    serve.run(HitMusicService.options(num_replicas=replicas).bind(asdict(settings)), name=app_name,
              route_prefix=route_prefix)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def placement(model_name: str) -> tuple[str, str]:
    """``(application name, route prefix)`` of a registered model's service."""
    if model_name == ServeSettings.model_name:
        return APP_NAME, "/"
    return f"{APP_NAME}-{model_name}", f"/{model_name}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ServeSettings()
    p.add_argument("--model", default=d.model_name, help=f"registered model name (default {d.model_name})")
    p.add_argument("--alias", default=d.alias, help=f"alias or version to serve (default {d.alias})")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--poll-interval", type=float, default=d.poll_interval_s,
                   help=f"seconds between registry polls for a moved alias (default {d.poll_interval_s})")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--replicas", default="auto",
                   help="replicas of the service: a number, or auto (default: 2 where the cluster has at least "
                        f"{MIN_CPUS_FOR_TWO_REPLICAS} CPUs, so that one can die without an outage; else 1, and "
                        "while that one restarts requests answer 503 within about a second)")
    p.add_argument("--route-prefix", default=None,
                   help="URL prefix of the service (default / for hitmusicnet, /<model> for any other model)")


def main_from_args(args: argparse.Namespace) -> int:
    settings = ServeSettings(model_name=args.model, alias=args.alias, tracking_uri=args.tracking_uri,
                             poll_interval_s=args.poll_interval)
    app_name, prefix = placement(args.model)
    replicas = None if args.replicas == "auto" else int(args.replicas)
    if replicas is not None and replicas < 1:
        raise ValueError(f"--replicas {args.replicas}: at least 1")
    url = deploy(settings, args.host, args.port, app_name, args.route_prefix or prefix, replicas)
    print(f"serving {args.model}@{args.alias} at {url} (docs: {url}/docs)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main(__doc__, "python -m serve.deploy", add_arguments, main_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
