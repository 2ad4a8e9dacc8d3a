"""The deployment files in cluster-configs/: they parse, have what their tool expects,
start anya-resource once Ray is up, and the policy each one names loads."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml

from anya_resource.config import Policy

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "cluster-configs"
LAUNCHER_FILES = {"onprem.yaml": "local", "aws.yaml": "aws"}
KUBERAY = CONFIGS / "kuberay.yaml"
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name}: expected a mapping at the top"
    return data


def _up_command(commands: list[str]) -> list[str]:
    """The `anya-resource up ...` command among ``commands``, split into words."""
    for line in commands:
        for part in re.split(r";|&&|\|\|", line):
            words = _without_env(shlex.split(part))
            if words[:2] == ["anya-resource", "up"]:
                return words
    raise AssertionError(f"no `anya-resource up` in {commands}")


def _without_env(words: list[str]) -> list[str]:
    """``words`` without the ``NAME=value`` settings that lead a shell command."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]
    return words


def _env_of(command: str, program: str) -> dict[str, str]:
    """The ``NAME=value`` settings in front of ``program`` in a shell line."""
    for part in re.split(r";|&&|\|\|", command):
        words = shlex.split(part)
        rest = _without_env(words)
        if rest[:1] == [program]:
            return dict(w.split("=", 1) for w in words[: len(words) - len(rest)])
    return {}


@pytest.mark.parametrize("name", sorted(LAUNCHER_FILES))
def test_launcher_files_carry_the_token_to_every_node_and_client(name: str) -> None:
    """Ray 2.60 token authentication: one token file on every node, token mode on each."""
    config = _load(CONFIGS / name)
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    starts = [
        line
        for key in ("head_start_ray_commands", "worker_start_ray_commands")
        for line in config[key]
        if "ray start" in line
    ]
    assert len(starts) == 2
    ups = [c for c in config["head_start_ray_commands"] if "anya-resource" in c]
    for line in starts + ups:
        program = "anya-resource" if "anya-resource" in line else "ray"
        assert _env_of(line, program).get("RAY_AUTH_MODE") == "token", line


def test_kuberay_turns_token_authentication_on_for_every_pod() -> None:
    cluster = _load(KUBERAY)
    # The operator sets RAY_AUTH_MODE and RAY_AUTH_TOKEN in every Ray container, the
    # head's (where `anya-resource up` runs) and the workers' alike.
    assert cluster["spec"]["authOptions"] == {"mode": "token"}


def _option(words: list[str], name: str) -> str:
    assert name in words, f"{name} missing from {' '.join(words)}"
    return words[words.index(name) + 1]


@pytest.mark.parametrize(("name", "provider"), sorted(LAUNCHER_FILES.items()))
def test_launcher_file_matches_rays_schema(name: str, provider: str) -> None:
    config = _load(CONFIGS / name)
    schema = json.loads(RAY_SCHEMA.read_text())
    jsonschema.validate(config, schema)  # unknown top-level keys are errors there too
    assert config["provider"]["type"] == provider
    for key in ("cluster_name", "auth", "file_mounts", "setup_commands"):
        assert key in config, f"{name}: no {key}"
    if provider == "local":
        assert config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    else:
        assert config["provider"]["region"]
        assert config["head_node_type"] in config["available_node_types"]


@pytest.mark.parametrize("name", sorted(LAUNCHER_FILES))
def test_launcher_file_passes_rays_own_preparation(name: str) -> None:
    """What `ray up` does first: fill in the provider's defaults, then validate."""
    util = pytest.importorskip("ray.autoscaler._private.util")
    config = util.prepare_config(_load(CONFIGS / name))
    util.validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]


@pytest.mark.parametrize("name", sorted(LAUNCHER_FILES))
def test_launcher_deploys_with_a_policy_that_loads(name: str) -> None:
    config = _load(CONFIGS / name)
    head = config["head_start_ray_commands"]
    starts = [i for i, line in enumerate(head) if "ray start --head" in line]
    ups = [i for i, line in enumerate(head) if "anya-resource up" in line]
    assert starts and ups and starts[0] < ups[0], "anya-resource up must come after ray start"
    words = _up_command(head)
    assert _option(words, "--address") == "auto"  # the Ray started on the line before
    remote = _option(words, "--policy")
    # The policy travels with the synced repository: map the remote path back to ours.
    mounts = config["file_mounts"]
    matches = [(target, source) for target, source in mounts.items() if remote.startswith(target)]
    assert matches, f"{name}: {remote} is not under any of file_mounts {sorted(mounts)}"
    target, source = matches[0]
    local = (REPO / source / remote[len(target) :].lstrip("/")).resolve()
    assert local == CONFIGS / "policy.yaml"
    assert Policy.load(local) == Policy.default()
    for line in config["setup_commands"]:
        if "ray[default]==" in line:
            assert f"ray[default]=={ray.__version__}" in line, "pin the tested Ray version"


def test_kuberay_manifest_deploys_the_shipped_policy() -> None:
    documents = [doc for doc in yaml.safe_load_all(KUBERAY.read_text()) if doc]
    clusters = [doc for doc in documents if doc.get("kind") == "RayCluster"]
    assert len(clusters) == 1
    cluster = clusters[0]
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["metadata"]["name"]
    spec = cluster["spec"]
    assert {"rayVersion", "headGroupSpec", "workerGroupSpecs"} <= set(spec)
    head_pod = spec["headGroupSpec"]["template"]["spec"]
    head = head_pod["containers"][0]

    # The postStart hook waits for Ray (bounded), then runs `anya-resource up`.
    script = head["lifecycle"]["postStart"]["exec"]["command"][-1]
    assert re.search(r"for i in \$\(seq 1 \d+\)", script), "the wait for Ray must be bounded"
    assert script.index("ray health-check") < script.index("anya-resource up")
    words = _up_command([script])
    policy_path = _option(words, "--policy")

    # ... with the policy mounted from a ConfigMap made from the file the annotation names.
    mounts = {m["name"]: m["mountPath"] for m in head["volumeMounts"]}
    volumes = {v["name"]: v for v in head_pod["volumes"]}
    mounted = [name for name, path in mounts.items() if policy_path.startswith(path + "/")]
    assert mounted, f"{policy_path} is not on a mounted volume"
    assert "configMap" in volumes[mounted[0]]
    assert Path(policy_path).name == "policy.yaml"  # the key of --from-file=policy.yaml=...
    source = REPO / cluster["metadata"]["annotations"]["anya-resource/policy-source"]
    assert Policy.load(source) == Policy.default()
    assert str(source.relative_to(REPO)) in KUBERAY.read_text().split("apiVersion")[0], (
        "the kubectl create configmap line in the header must name the same file"
    )

    # Every pod runs the same image, built from the Dockerfile with the same Ray.
    images = {head["image"]} | {
        container["image"]
        for group in spec["workerGroupSpecs"]
        for container in group["template"]["spec"]["containers"]
    }
    assert len(images) == 1
    base = re.search(r"^FROM rayproject/ray:(\S+)", (CONFIGS / "Dockerfile").read_text(), re.M)
    assert base is not None
    assert base.group(1).split("-")[0] == spec["rayVersion"] == ray.__version__


def test_every_policy_file_in_cluster_configs_loads() -> None:
    policies = [CONFIGS / "policy.yaml", *sorted((CONFIGS / "examples").glob("*.yaml"))]
    assert len(policies) >= 3
    for path in policies:
        Policy.load(path)
