"""``anya-resource up/status/leases/what-if/down`` in subprocesses, against a private Ray.

One 1 head + 1 worker ``ray.cluster_utils.Cluster`` on loopback for the module, kept
alive by this process and shut down at the end; each command runs as a user would run
it, in its own process, with ``--address``. This process also holds a few leases
(a driver on the same cluster) so that ``leases``, ``what-if`` and ``down`` have
something to show. The tests run in file order: ``down`` is last.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray.cluster_utils import Cluster

from anya_resource import Lease, SyncResourceManager
from anya_resource.actors import deploy
from tests.raytools import GiB, assert_loopback

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 120
POLICY = {
    "heartbeat_s": 0.2,
    "reserve": {"memory": 0, "cpu": 0},
    "lease": {"default_ttl": 30.0, "renew_every": 5.0, "preemption_grace_s": 1.0},
    "tenants": {"ml": {"limit": {"memory": "6GiB"}}},
    "pools": {"postgres": {"size": 2}},
}


Call = tuple[str, ...]


def _environment(env: dict[str, str] | None) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    environment.update(env or {})
    return environment


def clis(*calls: Call, env: dict[str, str] | None = None) -> list[subprocess.CompletedProcess[str]]:
    """Run ``anya-resource ARGS`` for each call, each in a new process, all at once."""
    started = [
        (
            call,
            subprocess.Popen(
                [sys.executable, "-c", "from anya_resource.cli import main; main()", *call],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_environment(env),
                cwd=REPO,
            ),
        )
        for call in calls
    ]
    results = []
    for call, process in started:
        try:
            out, err = process.communicate(timeout=CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        results.append(subprocess.CompletedProcess(list(call), process.returncode, out, err))
    return results


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``anya-resource ARGS`` in a new process, as a user would."""
    return clis(args, env=env)[0]


def parsed(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def ok_json(*args: str) -> Any:
    return parsed(cli(*args, "--json"))


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The single error line, after checking the exit status and that nothing else came."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("anya-resource: error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    started = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "memory": 4 * GiB,
            "include_dashboard": False,
        },
    )
    try:
        started.add_node(num_cpus=2, memory=4 * GiB)
        started.wait_for_nodes()
        yield started
    finally:
        started.shutdown()


@pytest.fixture(scope="module")
def address(cluster: Cluster) -> str:
    gcs: str = cluster.address
    assert gcs.startswith("127.0.0.1:"), gcs
    return gcs


@pytest.fixture(scope="module")
def deployed(address: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``anya-resource up`` with a test policy: the report it printed."""
    policy = tmp_path_factory.mktemp("policy") / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    report: dict[str, Any] = ok_json("up", "--address", address, "--policy", str(policy))
    report["policy_file"] = str(policy)
    return report


@pytest.fixture(scope="module")
def held(address: str, deployed: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """This process holds leases: two for tenant ml, one preemptible batch lease."""
    ray.init(address=address, logging_level="ERROR")
    assert_loopback()  # the module's cluster binds 127.0.0.1 (conftest sets Ray's flag)
    manager = SyncResourceManager.connect(address=address)
    leases: dict[str, Any] = {"manager": manager}
    try:
        leases["ml"] = [
            manager.acquire({"memory": "1GiB"}, priority="high", tenant="ml") for _ in range(2)
        ]
        leases["batch"] = manager.acquire(
            {"cpu": 1, "memory": "512MiB"}, priority="batch", tenant="batch", preemptible=True
        )
        yield leases
    finally:
        manager.close()
        deploy.forget_handles()
        ray.shutdown()


def test_up_deploys_once_and_keeps_its_policy(address: str, deployed: dict[str, Any]) -> None:
    assert deployed["status"] == "deployed"
    assert deployed["nodes"] == 2 and deployed["agents"] == 2
    again = ok_json("up", "--address", address, "--policy", deployed["policy_file"])
    assert again["status"] == "already-up"
    assert again["epoch"] == deployed["epoch"]
    other = cli("up", "--address", address, "--policy", str(REPO / "cluster-configs/policy.yaml"))
    assert "already up" in one_line_error(other, 1) and "another policy" in other.stderr


def test_status(address: str, held: dict[str, Any]) -> None:
    as_json, table = clis(
        ("status", "--address", address, "--json"),
        ("status", "--address", address),
        env={"COLUMNS": "120"},
    )
    report = parsed(as_json)
    snapshot, health = report["snapshot"], report["health"]
    assert len(snapshot["nodes"]) == 2
    assert snapshot["leases"] == 3
    assert snapshot["pools"]["postgres"]["size"] == 2
    assert snapshot["resources"]["cpu"]["granted"] == 1000  # core units: thousandths
    assert {"is_healthy", "nodes", "bottlenecks", "reasons"} <= set(health)

    assert table.returncode == 0, table.stderr
    for expected in ("Nodes", "memory", "cpu", "Pools", "postgres", "Tenants", "ml"):
        assert expected in table.stdout
    assert "Bottlenecks" in table.stdout


def test_leases_lists_and_filters_without_tokens(address: str, held: dict[str, Any]) -> None:
    node = held["batch"].node_id
    everything, ml, on_node, table = clis(
        ("leases", "--address", address, "--json"),
        ("leases", "--address", address, "--tenant", "ml", "--json"),
        ("leases", "--address", address, "--node", node[:8], "--priority", "BATCH", "--json"),
        ("leases", "--address", address, "--priority", "high"),
        env={"COLUMNS": "200"},
    )
    ours: list[Lease] = [*held["ml"], held["batch"]]
    listed = parsed(everything)
    assert {lease["lease_id"] for lease in listed} == {lease.lease_id for lease in ours}
    assert sorted(x["lease_id"] for x in parsed(ml)) == sorted(x.lease_id for x in held["ml"])
    assert [x["lease_id"] for x in parsed(on_node)] == [held["batch"].lease_id]

    assert table.returncode == 0, table.stderr
    assert all(lease.lease_id in table.stdout for lease in held["ml"])
    assert held["batch"].lease_id not in table.stdout
    assert "1 filtered out" in table.stdout
    for output in (table.stdout, everything.stdout):
        assert not any(lease.token in output for lease in ours)  # the secret never shows


def test_what_if_names_what_would_be_preempted(address: str, held: dict[str, Any]) -> None:
    as_json, table, unknown = clis(
        ("what-if", "cpu=1", "--count", "4", "--priority", "high", "--address", address, "--json"),
        ("what-if", '{"memory": "1GiB", "cpu": 1}', "--count", "5", "--address", address),
        ("what-if", "nosuchpool=1", "--address", address),
        env={"COLUMNS": "200"},
    )
    # 4 cores, 1 held by the preemptible batch lease: 3 fit now, the 4th preempts it.
    plan = parsed(as_json)
    assert plan["requested"] == 4
    assert plan["granted_now"] == 3
    assert plan["granted_after_preemption"] == 1
    assert [lease["lease_id"] for lease in plan["preempted"]] == [held["batch"].lease_id]

    assert table.returncode == 0, table.stderr
    assert "What if 5" in table.stdout and "would wait" in table.stdout
    assert "nosuchpool" in one_line_error(unknown, 2)
    # The dry runs changed nothing.
    assert len(held["manager"].leases()) == 3


def test_bad_input_and_unreachable_cluster_fail_in_one_line() -> None:
    port = closed_port()
    nowhere = f"127.0.0.1:{port}"
    started = time.monotonic()
    bad, bad_json, no_cluster, unreachable, down = clis(
        ("what-if", "memory=4GiB,cpu", "--address", "127.0.0.1:1"),
        ("what-if", "{memory: 4GiB}", "--local"),
        ("status",),
        ("status", "--address", nowhere),
        ("down", "--address", nowhere),
    )
    assert time.monotonic() - started < 60  # not Ray's minutes of retries
    assert "RESOURCES" in one_line_error(bad, 2)
    assert "not valid JSON" in one_line_error(bad_json, 2)
    assert "no cluster given" in one_line_error(no_cluster, 2)
    line = one_line_error(unreachable, 1)
    assert "ManagerUnavailable" in line and nowhere in line
    assert nowhere in one_line_error(down, 1)
    via_env = cli("leases", env={"RAY_ADDRESS": nowhere})
    assert nowhere in one_line_error(via_env, 1)


def test_down_refuses_while_leases_are_held_then_removes(
    address: str, held: dict[str, Any]
) -> None:
    refused = cli("down", "--address", address)
    assert "3 lease(s) are held" in one_line_error(refused, 1)

    held["manager"].close()  # gives every lease back
    removed = ok_json("down", "--address", address)
    assert removed["status"] == "removed"

    gone = cli("status", "--address", address)
    assert "not deployed" in one_line_error(gone, 1)
    assert ok_json("down", "--address", address)["status"] == "not-deployed"
