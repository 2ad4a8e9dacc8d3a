"""Node health sampling against real processes: psutil is read, never mocked."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from anya_resource.health import (
    NodeHealth,
    NodeSampler,
    ResourceHealth,
    find_own_raylet_pid,
    find_raylet_pid,
    holder_alive,
    node_cpu_percent,
    node_memory_percent,
    process_identity,
    process_tree,
    read_cgroup_memory,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
DEADLINE_S = 8.0

SLEEPER = "import time; time.sleep(120)"
SPINNER = "while True: pass"
# Writing one byte per page makes every page resident, whatever the allocator does.
ALLOCATOR = textwrap.dedent(
    """
    import sys, time
    size = 200 * 1024 * 1024
    block = bytearray(size)
    block[::4096] = b"\\x01" * (size // 4096)
    print("ready", flush=True)
    time.sleep(120)
    """
)


def _spawn(code: str, *args: str, executable: str = sys.executable) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [executable, "-c", code, *args], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(code: str, *args: str, executable: str = sys.executable) -> subprocess.Popen[str]:
        proc = _spawn(code, *args, executable=executable)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        _stop(proc)


def _poll(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _health(**overrides: object) -> NodeHealth:
    fields: dict[str, object] = {
        "node_id": "ab" * 28,
        "address": "127.0.0.1",
        "memory_total": 16 * GiB,
        "memory_available": 8 * GiB,
        "memory_percent": 40.0,
        "cpu_count": 4.0,
        "cpu_percent": 30.0,
        "load_average": (0.5, 0.25, 0.125),
        "disk_percent": 22.0,
        "gpus": 0,
        "gpu_memory_percent": None,
        "node_rss": 3 * GiB,
        "node_cpu_percent": 25.0,
        "holders": {1234: 100 * MiB, 5678: 0},
        "sampled_at": 1_700_000_000.5,
    }
    fields.update(overrides)
    return NodeHealth(**fields)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- sampling ----------------------------------------------------------------------------


def test_sample_of_own_process_tree() -> None:
    sampler = NodeSampler("n1", "127.0.0.1", os.getpid())
    before = time.time()
    health = sampler.sample()
    sampler.close()

    assert health.node_id == "n1"
    assert health.address == "127.0.0.1"
    assert health.node_rss > 0
    assert health.memory_total > 0
    assert 0 < health.memory_available <= health.memory_total
    assert 0.0 <= health.memory_percent <= 100.0
    assert 0.0 <= health.cpu_percent <= 100.0
    assert health.cpu_count >= 1
    assert len(health.load_average) == 3
    assert 0.0 <= health.disk_percent <= 100.0
    assert health.gpus >= 0
    if health.gpus == 0:
        assert health.gpu_memory_percent is None
    assert health.holders == {}
    assert before <= health.sampled_at <= time.time()
    assert health.alive
    assert health.missed_heartbeats == 0


def test_child_allocation_raises_node_rss(spawn: Callable[..., subprocess.Popen[str]]) -> None:
    sampler = NodeSampler("n1", "127.0.0.1", os.getpid(), gpus=False)
    baseline = sampler.sample().node_rss
    child = spawn(ALLOCATOR)

    _poll(
        lambda: sampler.sample().node_rss - baseline >= 150 * MiB,
        "a 200 MB child to show in node_rss",
    )

    _stop(child)
    _poll(lambda: sampler.sample().node_rss - baseline < 150 * MiB, "node_rss to drop again")


def test_busy_child_raises_node_cpu(spawn: Callable[..., subprocess.Popen[str]]) -> None:
    sampler = NodeSampler("n1", "127.0.0.1", os.getpid(), gpus=False)
    spawn(SPINNER)
    # One spinning core is 100 / cores percent of the machine; ask for well under that.
    _poll(lambda: sampler.sample().node_cpu_percent > 10.0, "a spinning child to show as CPU")


def test_sampler_with_custom_filter_and_clock() -> None:
    sampler = NodeSampler("n2", "127.0.0.1", lambda: [os.getpid()], gpus=False, clock=lambda: 42.0)
    health = sampler.sample([os.getpid()])
    assert health.sampled_at == 42.0
    assert health.node_rss > 0
    assert set(health.holders) == {os.getpid()}


def test_holders_report_live_pids_and_drop_dead_ones(
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    reaped, zombie = spawn(SLEEPER), spawn(SLEEPER)
    sampler = NodeSampler("n1", "127.0.0.1", os.getpid(), gpus=False)

    holders = sampler.sample([reaped.pid, zombie.pid, os.getpid()]).holders
    assert set(holders) == {reaped.pid, zombie.pid, os.getpid()}
    assert holders[os.getpid()] > 0

    _stop(reaped)
    # Killed and not yet waited for: a zombie, which has exited and must count as gone.
    zombie.kill()
    _poll(
        lambda: set(sampler.sample([reaped.pid, zombie.pid, os.getpid()]).holders) == {os.getpid()},
        "killed holders to leave the holders map",
    )


# -- process identity ----------------------------------------------------------------------


def test_holder_alive_follows_pid_and_create_time(
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    child = spawn(SLEEPER)
    identity = process_identity(child.pid)
    assert identity is not None
    pid, created = identity
    assert pid == child.pid
    assert abs(created - time.time()) < 60

    assert holder_alive(pid, created)
    # Same pid, another creation time: the pid was reused by someone else.
    assert not holder_alive(pid, created - 3600.0)

    _stop(child)
    assert not holder_alive(pid, created)
    assert process_identity(pid) is None


def test_holder_alive_sees_zombie_as_dead(spawn: Callable[..., subprocess.Popen[str]]) -> None:
    child = spawn(SLEEPER)
    identity = process_identity(child.pid)
    assert identity is not None
    os.kill(child.pid, signal.SIGKILL)
    _poll(lambda: not holder_alive(*identity), "the killed, unreaped child to read as dead")


def test_process_tree_follows_root() -> None:
    pids = process_tree(os.getpid())()
    assert os.getpid() in list(pids)

    proc = _spawn(SLEEPER)
    tree = process_tree(proc.pid)
    assert list(tree()) == [proc.pid]
    _stop(proc)
    assert list(tree()) == []
    with pytest.raises(ProcessLookupError):
        process_tree(proc.pid)


# -- finding raylets -------------------------------------------------------------------------


def test_find_raylet_pid_for_unused_port_is_none() -> None:
    assert find_raylet_pid(_free_port()) is None
    assert find_raylet_pid(node_id="00" * 28) is None
    with pytest.raises(ValueError):
        find_raylet_pid()


FAKE_RAYLET = textwrap.dedent(
    """
    import socket, subprocess, sys, time
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    worker = subprocess.Popen([sys.argv[-1], "-c", "import time; time.sleep(120)"])
    print(server.getsockname()[1], worker.pid, flush=True)
    try:
        time.sleep(120)
    finally:
        worker.kill()
    """
)


def test_find_raylet_pid_matches_a_raylet_like_process(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    # A process named "raylet" started the way Ray 2.60 starts one: port 0 on the command
    # line, the real port only visible as a listening socket.
    raylet_exe = tmp_path / "raylet"
    raylet_exe.symlink_to(os.path.realpath(sys.executable))
    node_id = "cd" * 28
    raylet = spawn(
        FAKE_RAYLET,
        "--node_manager_port=0",
        f"--node_id={node_id}",
        sys.executable,
        executable=str(raylet_exe),
    )
    assert raylet.stdout is not None
    port_text, worker_text = raylet.stdout.readline().split()
    port, worker = int(port_text), int(worker_text)

    assert find_raylet_pid(port) == raylet.pid
    assert find_raylet_pid(node_id=node_id) == raylet.pid
    assert find_raylet_pid(_free_port(), node_id=node_id) == raylet.pid
    assert find_own_raylet_pid(worker) == raylet.pid
    assert set(process_tree(raylet.pid)()) == {raylet.pid, worker}

    # A sampler given the raylet pid measures that tree.
    health = NodeSampler(node_id, "127.0.0.1", raylet.pid, gpus=False).sample()
    assert health.node_rss > 0


def test_find_own_raylet_pid_outside_ray_is_none() -> None:
    assert find_own_raylet_pid() is None


# -- pressure math ---------------------------------------------------------------------------


def test_node_memory_percent_takes_the_worse_of_machine_and_node() -> None:
    health = _health(memory_percent=40.0, node_rss=3 * GiB)
    assert node_memory_percent(health, 4 * GiB) == pytest.approx(75.0)
    assert node_memory_percent(health, 10 * GiB) == pytest.approx(40.0)
    assert node_memory_percent(health, 2 * GiB) == pytest.approx(150.0)
    assert node_memory_percent(health, 0) == pytest.approx(40.0)


def test_node_cpu_percent_scales_to_the_node_share() -> None:
    # One core busy on a 4-core machine is 25 % of the machine.
    health = _health(cpu_count=4.0, cpu_percent=30.0, node_cpu_percent=25.0)
    assert node_cpu_percent(health, 1.0) == pytest.approx(100.0)
    assert node_cpu_percent(health, 2.0) == pytest.approx(50.0)
    assert node_cpu_percent(health, 4.0) == pytest.approx(30.0)
    assert node_cpu_percent(health, 0.0) == pytest.approx(30.0)


# -- serialisation ---------------------------------------------------------------------------


def test_node_health_round_trip() -> None:
    health = _health(gpus=2, gpu_memory_percent=12.5, alive=False, missed_heartbeats=3)
    assert NodeHealth.from_dict(health.to_dict()) == health
    # Through JSON the pid keys become strings and the tuple a list.
    assert NodeHealth.from_dict(json.loads(json.dumps(health.to_dict()))) == health


def test_resource_health_round_trip() -> None:
    report = ResourceHealth(
        is_healthy=False,
        memory_usage_percent=91.0,
        cpu_percent=20.0,
        disk_percent=22.0,
        nodes=[_health(), _health(node_id="ef" * 28, holders={})],
        bottlenecks=[{"resource": "memory", "node_id": "ab" * 28, "free": 0}],
        reasons=["memory pressure on node abab"],
        checked_at=1_700_000_001.0,
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data["nodes"][0]["node_id"] == "ab" * 28
    assert ResourceHealth.from_dict(data) == report


# -- cgroups ---------------------------------------------------------------------------------


def test_read_cgroup_memory_v2_and_v1(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text(f"{4 * GiB}\n")
    (v2 / "memory.current").write_text(f"{3 * GiB}\n")
    (v2 / "memory.stat").write_text(f"anon 1\ninactive_file {GiB}\nactive_file 5\n")
    assert read_cgroup_memory(v2) == (4 * GiB, 2 * GiB)

    (v2 / "memory.max").write_text("max\n")
    assert read_cgroup_memory(v2) is None

    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{8 * GiB}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{GiB}\n")
    (v1 / "memory.stat").write_text(f"cache 5\ntotal_inactive_file {512 * MiB}\n")
    assert read_cgroup_memory(tmp_path / "v1") == (8 * GiB, 512 * MiB)

    assert read_cgroup_memory(tmp_path / "nothing") is None
