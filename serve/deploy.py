"""Deploy the Serve application on the running Ray instance (what ``hitmusic serve`` does).

    python -m serve.deploy --model hitmusicnet --alias champion --port 8000
"""

from __future__ import annotations

import argparse
import sys

from hitmodels.services import init_ray
from hitmodels.cli import module_main

APP_NAME = "hitmusic"


def deploy(model_name: str = "hitmusicnet", alias: str = "champion", tracking_uri: str | None = None,
           host: str = "127.0.0.1", port: int = 8000) -> str:
    """Start Serve's HTTP proxy on ``host:port`` (if not up) and (re)deploy the app; returns its URL."""
    from ray import serve

    from serve.app import build_app

    init_ray()
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app({"model_name": model_name, "alias": alias, "tracking_uri": tracking_uri}),
              name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="hitmusicnet", help="registered model name (default hitmusicnet)")
    p.add_argument("--alias", default="champion", help="alias or version to serve (default champion)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")


def main_from_args(args: argparse.Namespace) -> int:
    url = deploy(args.model, args.alias, args.tracking_uri, args.host, args.port)
    print(f"serving {args.model}@{args.alias} at {url} (docs: {url}/docs)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main(__doc__, "python -m serve.deploy", add_arguments, main_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
