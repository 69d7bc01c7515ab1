"""cluster/: the AWS launcher config and the KubeRay manifests validate offline, and everything they name exists.

- KubeRay manifests against the v1.7.0 CRD schemas in strict mode (an unknown key is an error), from
  ``../shared/reference/cluster/`` (skipped when absent);
- the launcher YAML through Ray's own ``prepare_config`` + ``validate_config`` (what ``ray up`` runs first);
- every ``python -m pipelines.<stage> ...`` a config runs parses with that stage's own CLI; Ray, MLflow and
  project versions and image tags match ``constraints.txt`` and ``pyproject.toml``; token auth everywhere;
  the RayService carries ``serve/config.yaml``'s application.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SHARED

CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
CRDS = SHARED / "reference" / "cluster" / "kuberay-crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
# the kinds the manifests may hold besides KubeRay's (no schema offline: checked for apiVersion and name)
CORE_KINDS = {"Namespace": "v1", "ServiceAccount": "v1", "Service": "v1", "Deployment": "apps/v1",
              "NetworkPolicy": "networking.k8s.io/v1"}
TOKEN_SECRET = "hitmusic-ray-token"


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            out[name.strip().lower()] = version.strip()
    return out


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def manifests() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def ray_cluster_specs() -> list[tuple[str, dict]]:
    """Every RayCluster spec in the manifests: a RayCluster's own, a RayJob's and a RayService's."""
    key = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}
    return [(f"{name}:{d['kind']}", d["spec"] if key[d["kind"]] is None else d["spec"][key[d["kind"]]])
            for name, d in manifests() if d["kind"] in key]


def containers(spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    return [(group, c) for group, g in groups for c in g["template"]["spec"]["containers"]]


def strict(schema):
    """The CRD schema with ``additionalProperties: false`` wherever it lists properties and does not
    preserve unknown fields (Kubernetes itself drops unknown keys silently: a typo would pass)."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        for v in schema.values():
            strict(v)
    elif isinstance(schema, list):
        for v in schema:
            strict(v)
    return schema


@pytest.fixture(scope="module")
def validators():
    import jsonschema

    if not CRDS.is_dir():
        pytest.skip(f"the KubeRay CRDs are absent ({CRDS}): they are only in the team checkout's ../shared")
    out = {}
    for kind, file in CRD_FILES.items():
        crd = yaml.safe_load((CRDS / file).read_text())
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        out[kind] = jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))
    return out


def errors_of(validators, doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validators[doc["kind"]].iter_errors(doc)]


def test_kuberay_manifests_validate_against_the_crds_in_strict_mode(validators):
    kinds = set()
    for name, doc in manifests():
        kinds.add(doc["kind"])
        if doc["kind"] in CRD_FILES:
            assert doc["apiVersion"] == "ray.io/v1", name
            assert errors_of(validators, doc) == [], name
        else:
            assert CORE_KINDS.get(doc["kind"]) == doc["apiVersion"], (name, doc["kind"])
            assert doc["metadata"]["name"]
    assert {"RayCluster", "RayJob", "RayService", "Deployment", "Service"} <= kinds
    print(f"validated {len(manifests())} documents: {sorted(kinds)}")


def test_the_strict_check_catches_a_misspelt_key_and_a_wrong_value(validators):
    """The check can fail: a RayCluster with a misspelt spec key, an unknown auth mode and a text replica
    count gets three errors."""
    doc = copy.deepcopy(next(d for _, d in manifests() if d["kind"] == "RayCluster"))
    doc["spec"]["workerGroupSpec"] = doc["spec"]["workerGroupSpecs"]
    doc["spec"]["authOptions"]["mode"] = "oauth"
    doc["spec"]["workerGroupSpecs"][0]["replicas"] = "one"
    found = errors_of(validators, doc)
    print(found)
    assert any("workerGroupSpec' was unexpected" in e for e in found)
    assert any(e.startswith("spec/authOptions/mode") for e in found)
    assert any(e.startswith("spec/workerGroupSpecs/0/replicas") for e in found)


def test_launcher_config_passes_rays_own_checks():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(cfg)))
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}  # the head runs no tasks
    assert {"cpu", "gpu"} <= set(types) and types["gpu"]["resources"].get("GPU", 0) >= 1
    assert types["cpu"]["max_workers"] > types["cpu"]["min_workers"]  # autoscaling
    for name, t in types.items():  # S3 from an instance profile on every node type
        assert t["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
    broken = copy.deepcopy(cfg)
    broken["available_node_types"]["cpu"]["resources"] = {"CPU": 0.5}
    with pytest.raises(Exception, match="integer"):
        validate_config(prepare_config(broken))


def commands() -> list[tuple[str, str]]:
    """Every shell command the configs run: RayJob entrypoints, launcher commands, the Dockerfile's RUN."""
    out = [(f"{name}:{d['metadata']['name']}", d["spec"]["entrypoint"]) for name, d in manifests()
           if d["kind"] == "RayJob"]
    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
                "worker_start_ray_commands"):
        out += [(f"aws.yaml:{key}", c) for c in cfg[key]]
    for name, t in cfg["available_node_types"].items():
        out += [(f"aws.yaml:{name}", c) for c in t.get("worker_setup_commands", [])]
    return out


def stage_calls(command: str) -> list[tuple[str, list[str]]]:
    """``(module, argv)`` of each ``python -m MODULE ARGS`` in a shell command."""
    calls = []
    for part in re.split(r"&&|;|\|", command):
        words = shlex.split(part)
        for i in range(len(words) - 2):
            if words[i] in ("python", "python3") and words[i + 1] == "-m":
                calls.append((words[i + 2], words[i + 3:]))
    return calls


def test_every_stage_a_config_runs_exists_and_takes_its_arguments():
    calls = [(where, m, argv) for where, c in commands() for m, argv in stage_calls(c)]
    assert {m for _, m, _ in calls} >= {"pipelines.score", "pipelines.tune"}
    for where, module, argv in calls:
        mod = importlib.import_module(module)
        parser = argparse.ArgumentParser(prog=module, exit_on_error=False)
        mod.add_arguments(parser)
        try:
            parser.parse_args(argv)
        except (argparse.ArgumentError, SystemExit) as exc:
            pytest.fail(f"{where}: python -m {module} {' '.join(argv)}: {exc}")
    print(f"{len(calls)} stage commands parse: {sorted({m for _, m, _ in calls})}")


def test_versions_and_images_match_the_tested_set():
    ray, mlflow, version = pins()["ray"], pins()["mlflow"], project_version()
    for where, spec in ray_cluster_specs():
        assert spec["rayVersion"] == ray, where
        for group, c in containers(spec):
            gpu = "nvidia.com/gpu" in c["resources"].get("limits", {})
            assert c["image"] == f"REGISTRY/hitmusic:{version}-py311{'-gpu' if gpu else ''}", (where, group)
    for name, d in manifests():
        if d["kind"] == "RayJob":
            image = d["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["image"]
            assert image == f"REGISTRY/hitmusic:{version}-py311", name
        if d["kind"] == "Deployment":
            assert d["spec"]["template"]["spec"]["containers"][0]["image"] == f"ghcr.io/mlflow/mlflow:v{mlflow}-full"
    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    assert cfg["docker"]["image"] == f"rayproject/ray:{ray}-py311"
    assert cfg["available_node_types"]["gpu"]["docker"]["worker_image"] == f"rayproject/ray:{ray}-py311-gpu"
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"ARG BASE=rayproject/ray:{ray}-py311\n" in dockerfile and f"rayproject/ray:{ray}-py311-gpu" in dockerfile
    assert "-c constraints.txt" in dockerfile
    for where, c in commands():  # installs follow the pins
        if "pip install" in c:
            assert "-c ~/hitmusic/constraints.txt" in c, where


def test_token_auth_everywhere_and_gpus_requested():
    for where, spec in ray_cluster_specs():
        assert spec["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}, where
        assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", where
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
        assert gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"] == "1", where
        assert groups["cpu"]["maxReplicas"] > groups["cpu"]["minReplicas"], where
        for group, c in containers(spec):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.hitmusic.svc.cluster.local:5000", (where, group)
    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    assert "-e RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    token = next(k for k in cfg["file_mounts"] if k.endswith("ray_auth_token"))
    assert f"RAY_AUTH_TOKEN_PATH={token}" in " ".join(cfg["docker"]["run_options"])
    # no secret is written into a config: tokens and database URIs come from files and Secrets
    assert not [d for _, d in manifests() if d["kind"] == "Secret"]  # created by kubectl, never applied from here
    for path in [*KUBERAY.glob("*.yaml"), CLUSTER / "aws.yaml", CLUSTER / "Dockerfile"]:
        text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r"[0-9a-f]{32}|postgresql://|AWS_SECRET_ACCESS_KEY|password", text, re.I), path


def test_mlflow_server_accepts_the_host_the_pods_dial():
    deployment = next(d for _, d in manifests() if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    allowed = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert "mlflow.hitmusic.svc.cluster.local:5000" in allowed and "localhost:5000" in allowed
    assert any(a.startswith("--artifacts-destination=s3://") for a in args)
    assert not any(a.startswith("--default-artifact-root") for a in args)  # proxied: clients need no S3 keys
    service = next(d for _, d in manifests() if d["kind"] == "Service")
    assert service["metadata"]["name"] == "mlflow" and service["spec"]["type"] == "ClusterIP"


def test_rayservice_carries_the_serve_apps_config():
    """The RayService's application is serve/config.yaml's: same import path, arguments (the registry's
    address aside), deployments; Serve listens on all interfaces of the pod for the Service."""
    local = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    service = next(d for _, d in manifests() if d["kind"] == "RayService")
    remote = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert remote["http_options"] == {**local["http_options"], "host": "0.0.0.0"}
    assert len(remote["applications"]) == len(local["applications"]) == 1
    a, b = local["applications"][0], remote["applications"][0]
    assert {k: v for k, v in a.items() if k != "args"} == {k: v for k, v in b.items() if k != "args"}
    assert {**a["args"], "tracking_uri": None} == {**b["args"], "tracking_uri": None}
    assert b["args"]["tracking_uri"] == "http://mlflow.hitmusic.svc.cluster.local:5000"
    module, _, attr = b["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_an_installed_project_has_every_package():
    """The image installs the project non-editable (``pip install .``): every package of the checkout,
    the model families' subpackages included, must be in what setuptools finds."""
    import setuptools

    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = set(setuptools.find_packages(str(REPO), include=find["include"]))
    packages = {".".join(p.parent.relative_to(REPO).parts) for top in ("hitmodels", "pipelines", "serve")
                for p in (REPO / top).rglob("__init__.py")}
    assert "hitmodels.families.hitmusicnet" in packages and packages <= found


def test_each_aws_node_type_installs_one_torch_build_and_only_the_head_reads_mlflows_secret():
    """What each node type runs, as Ray's launcher merges it (``merge_setup_commands``: setup_commands +
    head_setup_commands on the head, setup_commands + worker_setup_commands on a worker; a node type's own
    worker_setup_commands replace both): the token made private everywhere, exactly one torch build (its
    CUDA build on the gpu type), MLflow's Postgres driver on the head. File mounts reach every node, so the
    Postgres URI is not one; it comes from SSM, and a failed lookup stops the server from starting on a
    local store instead."""
    from ray.autoscaler._private.util import merge_setup_commands

    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    merged = merge_setup_commands(copy.deepcopy(cfg))
    effective = {"head": merged["head_setup_commands"], "cpu": merged["worker_setup_commands"],
                 "gpu": cfg["available_node_types"]["gpu"]["worker_setup_commands"]}
    assert "worker_setup_commands" not in cfg["available_node_types"]["cpu"]
    for name, wheel in (("head", "whl/cpu"), ("cpu", "whl/cpu"), ("gpu", "whl/cu128")):
        assert any(c.startswith("chmod 600 ~/.hitmusic-cluster/ray_auth_token") for c in effective[name]), name
        indexes = [c for c in effective[name] if "download.pytorch.org" in c]
        assert len(indexes) == 1 and wheel in indexes[0], name
    assert any("psycopg2" in c for c in effective["head"])  # MLflow's Postgres backend store
    assert list(cfg["file_mounts"]) == ["/home/ray/hitmusic", "/home/ray/.hitmusic-cluster/ray_auth_token"]
    server = next(c for c in cfg["head_start_ray_commands"] if "mlflow server" in c)
    assert "ssm" in server and "--backend-store-uri" not in server  # from the environment, not on argv
    assert '[ -n "$STORE" ]' in server
    assert f"-e AWS_DEFAULT_REGION={cfg['provider']['region']}" in cfg["docker"]["run_options"]
