"""The deployment files: Kubernetes manifests checked against the real Kubernetes schemas (no cluster runs here),
and every command they run parsed by the service's own command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from recommender.cli.arguments import parser as command_line

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.33"


def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    return data


def manifests() -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, document)
        for name in kustomization()["resources"]
        for document in yaml.safe_load_all((KUBERNETES / name).read_text())
    ]


def containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    spec = manifest.get("spec", {})
    pod = spec["jobTemplate"]["spec"]["template"] if manifest["kind"] == "CronJob" else spec.get("template")
    return list(pod["spec"]["containers"]) if pod else []


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("name", kustomization()["resources"])
def test_each_manifest_passes_the_kubernetes_schema(name: str) -> None:
    for document in yaml.safe_load_all((KUBERNETES / name).read_text()):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_a_broken_manifest_fails_the_schema_check() -> None:
    """The check is real: a misspelt field is caught."""
    deployment = next(doc for name, doc in manifests() if doc["kind"] == "Deployment")
    deployment["spec"]["replica"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_what_the_cluster_needs_is_there() -> None:
    kinds = {doc["kind"]: doc for _name, doc in manifests()}
    assert {"Deployment", "Service", "Secret", "CronJob", "PodDisruptionBudget"} <= set(kinds)
    replicas = next(d for _n, d in manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "recommender")
    assert replicas["spec"]["replicas"] >= 2
    container = containers(replicas)[0]
    assert container["readinessProbe"]["grpc"] == {"port": 50051, "service": "recommender.v1.Recommender"}
    assert {"name": "RECOMMENDER_ARTIFACT_STORE", "value": "postgres"} in container["env"]
    secret = kinds["Secret"]
    assert {"DATABASE_URL", "RECOMMENDER_API_KEY"} <= set(secret["stringData"])
    headless = next(doc for _n, doc in manifests() if doc["metadata"]["name"] == "recommender-grpc")
    assert headless["spec"]["clusterIP"] == "None"


def test_every_command_the_deployment_runs_is_one_the_service_takes() -> None:
    commands = [c["args"] for _name, doc in manifests() for c in containers(doc)]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    commands += [service["command"] for service in compose["services"].values() if "command" in service]
    assert len(commands) >= 5
    for args in commands:
        parsed = command_line().parse_args(args)
        assert parsed.command in ("serve", "gateway", "train", "tune")


def test_the_compose_file_runs_two_replicas_behind_one_gateway_on_one_database() -> None:
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    replicas = [s for s in services.values() if s.get("command", [""])[0] == "serve"]
    assert len(replicas) == 2
    assert len({r["environment"]["DATABASE_URL"] for r in replicas}) == 1
    gateway = services["gateway"]["command"]
    upstreams = [gateway[i + 1] for i, arg in enumerate(gateway) if arg == "--upstream"]
    assert sorted(upstreams) == sorted(f"{name}:50051" for name, s in services.items() if s in replicas)
