"""The Kubernetes manifests hold together: the node's config loads, ports and probes match."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from node_agent.config import NodeSettings

K8S = Path(__file__).resolve().parents[2] / "k8s"


def documents(name: str) -> dict[str, dict]:
    return {
        d["kind"] + "/" + d["metadata"]["name"]: d
        for d in yaml.safe_load_all((K8S / name).read_text())
    }


def config_map_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NodeSettings:
    """The node configuration in the manifest's ConfigMap, loaded as the agent would."""
    config = tmp_path / "node.toml"
    config.write_text(
        documents("node-agent.yaml")["ConfigMap/tessera-node-config"]["data"]["node.toml"]
    )
    monkeypatch.setenv("TESSERA_API_KEY", "tn_0123456789abcdef.secret")
    return NodeSettings.load(config)


def test_the_node_config_map_is_a_valid_node_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = documents("node-agent.yaml")
    settings = config_map_settings(tmp_path, monkeypatch)
    low, high = settings.port_range
    service_ports = {p["port"] for p in docs["Service/tessera-node-mpc"]["spec"]["ports"]}
    assert service_ports == set(range(low, high + 1))
    container = docs["Deployment/tessera-node"]["spec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in container["ports"]} == service_ports
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert str(settings.work_dir) in mounts and not mounts[str(settings.work_dir)].get("readOnly")
    assert settings.environment == "production"
    # the node's key is made once, by the init container, in the same writable volume
    [init] = docs["Deployment/tessera-node"]["spec"]["template"]["spec"]["initContainers"]
    script = " ".join(init["args"])
    key = f"{settings.work_dir}/identity/node_key.pem"
    assert (
        f"test -f {key}" in script and "tessera node init --config /etc/tessera/node.toml" in script
    )
    init_mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    assert init_mounts[str(settings.work_dir)]["name"] == mounts[str(settings.work_dir)]["name"]
    assert not init_mounts[str(settings.work_dir)].get("readOnly")


def test_the_coordinator_probes_point_at_real_routes() -> None:
    from api import create_app

    routes = set(create_app().openapi()["paths"])
    container = documents("coordinator.yaml")["Deployment/tessera-coordinator"]["spec"]["template"][
        "spec"
    ]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TESSERA_ENVIRONMENT"] == "production"
    # every replica signs the audit trail and the tasks with one mounted key
    key = Path(env["TESSERA_SIGNING_KEY_FILE"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts.get(str(key.parent)) == "signing"


def test_the_node_config_map_lets_stewards_release_synthetic_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = config_map_settings(tmp_path, monkeypatch).policy.synthesis
    assert rules is not None and rules.approvals_required <= len(rules.stewards)


def test_the_gpu_patch_targets_the_node_agent_container() -> None:
    patch = yaml.safe_load((K8S / "node-agent-gpu.yaml").read_text())
    deployment = documents("node-agent.yaml")["Deployment/tessera-node"]
    names = [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    [container] = patch["spec"]["template"]["spec"]["containers"]
    assert container["name"] in names
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
