"""The operator commands' pure parts, without Ray: RESOURCES parsing, addresses, lease
filters, the rendered tables (fed from the real core's snapshot), and the errors the
commands give before they ever connect."""

from __future__ import annotations

import pytest
from rich.console import Console
from typer.testing import CliRunner

from anya_resource.cli import app
from anya_resource.cli_ops import _host_port, _matches, parse_resources
from anya_resource.core.bottleneck import find_bottlenecks
from anya_resource.errors import InvalidRequest
from anya_resource.render import leases_table, render_status, render_what_if
from tests.unit.core_support import GIB, Harness, make_policy

NODE_A = "a" * 56
NODE_B = "b" * 56


def _text(renderable: object, width: int = 100) -> str:
    console = Console(width=width, record=True)
    console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("memory=4GiB,cpu=1", {"memory": "4GiB", "cpu": 1}),
        (" cpu = 0.5 , postgres=2 ", {"cpu": 0.5, "postgres": 2}),
        (
            '{"memory": "4GiB", "pools": {"postgres": 1}}',
            {"memory": "4GiB", "pools": {"postgres": 1}},
        ),
        ("gpu=1e-1", {"gpu": 0.1}),
    ],
)
def test_parse_resources(text: str, expected: dict[str, object]) -> None:
    assert parse_resources(text) == expected


@pytest.mark.parametrize(
    "text", ["", "memory", "memory=", "=1", "cpu=1,", "cpu=1,cpu=2", "{", "[1]", "{}", '"cpu"']
)
def test_parse_resources_rejects_with_the_argument_named(text: str) -> None:
    with pytest.raises(InvalidRequest, match="RESOURCES"):
        parse_resources(text)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:6380", ("127.0.0.1", 6380)),
        ("head.example.internal", ("head.example.internal", 6379)),
        ("ray://head:10001", ("head", 10001)),
        ("[::1]:6390", ("::1", 6390)),
        ("auto", None),
    ],
)
def test_host_port(address: str, expected: tuple[str, int] | None) -> None:
    assert _host_port(address) == expected


@pytest.mark.parametrize("address", ["head:port", ":6379", "head:99999"])
def test_host_port_rejects_malformed_addresses(address: str) -> None:
    with pytest.raises(InvalidRequest, match="--address"):
        _host_port(address)


def test_lease_filters() -> None:
    lease = {"tenant": "ml", "node_id": NODE_A, "priority": "high"}
    assert _matches(lease, None, None, None)
    assert _matches(lease, "ml", "AAAA", "HIGH")
    assert not _matches(lease, "batch", None, None)
    assert not _matches(lease, None, "b", None)
    assert not _matches(lease, None, None, "low")


def _busy_snapshot() -> tuple[dict[str, object], Harness]:
    """A two-node core with grants, a full pool with waiters, a tenant and a hot node."""
    h = Harness(
        make_policy(
            pools={"default": {"size": 4}, "postgres": {"size": 1}},
            tenants={"ml": {"limit": {"memory": "6GiB"}}},
            reserve={"memory": "1GiB"},
        )
    )
    h.node(NODE_A, cpu=4, memory=8 * GIB)
    h.node(NODE_B, cpu=4, memory=8 * GIB)
    h.acquire({"memory": "6GiB"}, tenant="ml", priority="high")
    h.acquire({"cpu": 4}, priority="batch", preemptible=True)
    h.acquire({"postgres": 1})
    h.wait({"postgres": 1})
    snapshot = h.s.snapshot(h.now)
    return snapshot, h


def test_status_renders_nodes_pools_tenants_and_bottlenecks() -> None:
    snapshot, _ = _busy_snapshot()
    health = {
        "is_healthy": False,
        "memory_usage_percent": 91.0,
        "cpu_percent": 12.0,
        "reasons": [f"node {NODE_A[:12]} under memory pressure"],
        "nodes": [
            {
                "node_id": NODE_A,
                "address": "127.0.0.1",
                "memory_percent": 91.0,
                "cpu_percent": 12.0,
                "missed_heartbeats": 2,
            }
        ],
        "bottlenecks": find_bottlenecks(snapshot),
    }
    text = _text(render_status(snapshot, health), width=80)
    assert "UNHEALTHY" in text and "under memory pressure" in text
    assert "aaaaaaaaaaaa" in text and "bbbbbbbbbbbb" in text
    assert "none yet" in text  # node B has not reported
    assert "2 missed" in text
    assert "cluster" in text and "16.0 GiB" in text  # totals
    assert "postgres" in text and "1 waiting" in text
    assert "postgres pool: 1/1 in use, 1 waiting" in text
    assert "raise the pool size" in text
    assert "ml" in text and "6.0 GiB" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "\u2026" not in text, "a cell was cut short at 80 columns"
    # Each node's facts are one row, not a stack of lines beside its resources.
    [row] = [
        line for line in text.splitlines() if line.strip().startswith("aaaaaaaaaaaa  127.0.0.1")
    ]
    assert "91%" in row and "12%" in row and "2 missed" in row


def test_leases_at_80_columns_show_whole_cells() -> None:
    _, h = _busy_snapshot()
    leases = h.s.lease_list()
    narrow = _text(leases_table(leases, h.now, width=80), width=80)
    assert all(len(line) <= 80 for line in narrow.splitlines())
    assert "\u2026" not in narrow
    for lease in leases:
        assert lease["lease_id"] in narrow and lease["tenant"] in narrow
    assert "(p): preemptible" in narrow
    wide = _text(leases_table(leases, h.now, width=160), width=160)
    assert "holder" in wide and "holder" not in narrow


def test_status_of_an_idle_cluster() -> None:
    h = Harness()
    h.node(NODE_A, cpu=2, memory=4 * GIB)
    snapshot = h.s.snapshot(h.now)
    health = {"is_healthy": True, "nodes": [], "bottlenecks": [], "reasons": []}
    text = _text(render_status(snapshot, health))
    assert "healthy" in text and "Bottlenecks: none" in text
    assert "gpu" not in text  # no node has one: no rows for it


def test_leases_and_what_if_render() -> None:
    _, h = _busy_snapshot()
    leases = h.s.lease_list()
    text = _text(leases_table(leases, h.now), width=160)
    assert all(lease["lease_id"] in text for lease in leases)
    assert "preemptible" in text and "ml" in text
    plan = h.s.what_if(h.request({"cpu": 2}, priority="high"), 4, h.now).to_dict()
    assert plan["preempted"], plan
    text = _text(render_what_if(plan, "cpu=2", h.now), width=160)
    assert "What if 4 x (cpu=2)" in text
    assert "Leases that would be preempted" in text
    assert plan["preempted"][0]["lease_id"] in text


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["status"], 2, "no cluster given"),
        (["leases", "--local", "--address", "h:1"], 2, "cannot be combined"),
        (["what-if", "cpu", "--address", "h:1"], 2, "RESOURCES"),
        (["what-if", "cpu=1", "--count", "0", "--address", "h:1"], 2, "--count"),
        (["status", "--address", "h:1", "--policy", "p.yaml"], 2, "only applies to --local"),
        (["up", "--address", "h:1", "--policy", "/nonexistent/policy.yaml"], 2, "policy.yaml"),
        (["down"], 2, "no cluster given"),
        (["what-if", '{"memory": ' + "9" * 5000 + "}", "--address", "h:1"], 2, "digits"),
        (["what-if", '{"cpu": NaN}', "--address", "h:1"], 2, "NaN"),
    ],
)
def test_errors_before_connecting_are_one_line(args: list[str], code: int, message: str) -> None:
    result = CliRunner().invoke(app, args, env={"RAY_ADDRESS": ""})
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("anya-resource: error:"), result.output
    assert message in lines[0]


def test_warm_leases_show_their_use_at_any_width() -> None:
    _, h = _busy_snapshot()
    leases = h.s.lease_list()
    leases[0]["warm"] = "idle"
    leases[1]["warm"] = "busy"
    narrow = _text(leases_table(leases, h.now, width=80), width=80)
    assert "(idle)" in narrow and "(busy)" in narrow
    assert all(len(line) <= 80 for line in narrow.splitlines())
    wide = _text(leases_table(leases, h.now, width=160), width=160)
    assert "warm idle" in wide and "warm busy" in wide
    snapshot = h.s.snapshot(h.now)
    snapshot["warm"] = {"idle": 3, "busy": 1}
    health = {"is_healthy": True, "nodes": [], "bottlenecks": [], "reasons": []}
    assert "(3 warm idle)" in _text(render_status(snapshot, health))
