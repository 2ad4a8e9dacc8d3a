"""Chaos on a real Ray: the shells carry out what the recovery protocol decided.

One private Ray on loopback for the module. Client processes (``churn.py``) take and
give back slots of a 2-slot pool and 1 GiB of memory while the coordinator is killed,
alternately with ``ray.kill(..., no_restart=False)`` and SIGKILL of its process; each
client records every hold. Then: holders at once never exceeded the pool's size or the
node's memory, no lease id or fencing token was handed out twice, fencing order follows
grant order, no release was refused, and everything is free once the clients closed,
and again once their processes are killed. Other runs kill agents with leases held,
pause an agent past node loss and restart the coordinator, kill a holder during the
outage, restart twice in quick succession, and SIGKILL a storm of holders.

``ANYA_CHAOS_KILLS`` sets the number of coordinator kills of the churn run (default 4,
which keeps this module to a few minutes); ``ANYA_CHAOS_REPORT=path.json`` saves the
figures. docs/reliability.md has those of a 100-kill run.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from anya_resource import ResourceManager
from anya_resource.actors.naming import COORDINATOR_NAME, NAMESPACE, agent_name
from tests.raytools import GiB, Loop, deployed, eventually, local_ray

pytestmark = [pytest.mark.ray, pytest.mark.chaos]

KILLS = int(os.environ.get("ANYA_CHAOS_KILLS", "4"))
CLIENTS = 4
HEARTBEAT = 0.5
SLOTS = 2
MEMORY = 8 * GiB
POLICY = {
    "heartbeat_s": HEARTBEAT,
    "reserve": {"memory": 0, "cpu": 0},
    "pressure": {"memory_high": 99, "memory_low": 98},
    "lease": {"default_ttl": 30, "renew_every": 10, "preemption_grace_s": 1},
    "pools": {"slots": {"size": SLOTS}, "probe": {"size": 1}, "storm": {"size": 16}},
    "aging": {"per_second": 0.0},
}
CHURN = Path(__file__).with_name("churn.py")
GANGS = 4  # churn's gangs of two quarter CPUs, on the 2 CPUs of this Ray
REPORT: dict[str, Any] = {}


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    with local_ray(num_cpus=2, memory=MEMORY):
        yield Loop()
    path = os.environ.get("ANYA_CHAOS_REPORT")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(REPORT, indent=2))


@pytest.fixture(scope="module")
def manager(loop: Loop) -> ResourceManager:
    return deployed(loop, POLICY, nodes=1)


# -- processes ---------------------------------------------------------------------------


def spawn(*args: str) -> subprocess.Popen[str]:
    address = ray.get_runtime_context().gcs_address
    return subprocess.Popen(
        [sys.executable, str(CHURN), address, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The process's next line of output, or fail after ``timeout`` seconds."""
    import selectors

    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no output from pid {process.pid} within {timeout} s")
    return process.stdout.readline().strip()


def sigkill(*processes: subprocess.Popen[str]) -> None:
    for process in processes:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
    for process in processes:
        process.wait(timeout=30)


def coordinator() -> Any:
    return ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)


def kill_coordinator(how: str) -> None:
    """``ray.kill`` with restart, or SIGKILL of the actor's process (Ray restarts it)."""
    handle = coordinator()
    if how == "ray.kill":
        ray.kill(handle, no_restart=False)
    else:
        os.kill(ray.get(handle.ping.remote(), timeout=60)["pid"], signal.SIGKILL)


def agent() -> Any:
    node_id = ray.get_runtime_context().get_node_id()
    return ray.get_actor(agent_name(node_id), namespace=NAMESPACE)


async def lease_ids(manager: ResourceManager) -> set[str]:
    return {row["lease_id"] for row in await manager.leases()}


async def resume_time(manager: ResourceManager, killed_at: float) -> float:
    """Seconds from the kill until a new grant came back (the probe pool is never busy)."""
    lease = await manager.acquire({"pools": {"probe": 1}}, timeout=60)
    resumed = time.monotonic() - killed_at
    await manager.release(lease)
    return resumed


async def all_free(manager: ResourceManager) -> bool:
    snap = await manager.snapshot()
    memory = snap["resources"]["memory"]
    return (
        snap["leases"] == 0
        and all(row["in_use"] == 0 for row in snap["pools"].values())
        and memory["granted"] == 0
        and memory["free"] == memory["grantable"]
        and snap["resources"]["cpu"]["granted"] == 0
    )


async def no_group_left() -> bool:
    """Ray keeps no placement group of a lease: every one went with its lease."""
    from ray.util.placement_group import placement_group_table

    from anya_resource.actors.reservations import GROUP_PREFIX

    rows = placement_group_table().values()
    return not [r for r in rows if r["name"].startswith(GROUP_PREFIX) and r["state"] != "REMOVED"]


async def invariants(manager: ResourceManager) -> list[str]:
    problems: list[str] = await manager._call(lambda c: c.invariants.remote())
    return problems


# -- checking what the clients recorded -------------------------------------------------


def check_holds(holds: list[dict[str, Any]], memory_leases: int) -> dict[str, int]:
    """Every check of the churn run over the recorded holds; returns the counts."""
    # A warm lease serves several holds of its own process in turn: one grant, one
    # fencing token, holds that never overlap. Each grant is the first hold of its id.
    by_id: dict[str, list[dict[str, Any]]] = {}
    for h in sorted(holds, key=lambda h: h["start"]):
        by_id.setdefault(h["lease_id"], []).append(h)
    for lease_id, uses in by_id.items():
        assert len({(h["pid"], h["fencing"]) for h in uses}) == 1, (
            f"{lease_id} was handed out twice (to two processes, or with two tokens)"
        )
        for earlier, later in itertools.pairwise(uses):
            assert later["start"] >= earlier["end"], f"{lease_id} was used twice at once"
    grants = [uses[0] for uses in by_id.values()]
    fencing = [h["fencing"] for h in grants]
    assert len(set(fencing)) == len(fencing), "a fencing token was handed out twice"
    # A recorded hold lies inside the real one (its start after the grant came back, its
    # end before the release went out): if the recorded ones never overlap past the
    # limit, the real ones did not either.
    for kind, limit in (("slot", SLOTS), ("memory", memory_leases), ("gang", GANGS)):
        events = sorted(
            (t, step)
            for h in holds
            if h["kind"] == kind and h["valid"]
            for t, step in ((h["start"], 1), (h["end"], -1))
        )
        at_once = most = 0
        for _, step in sorted(events, key=lambda e: (e[0], e[1])):
            at_once += step
            most = max(most, at_once)
        assert most <= limit, f"{most} {kind} holds at once, limit {limit}"
    # Fencing follows grant order: a lease granted before another was asked for
    # (its grant came back before the other's acquire was sent) has the lower token.
    by_start = sorted(grants, key=lambda h: h["start"])
    starts = [h["start"] for h in by_start]
    highest: list[int] = []
    for h in by_start:
        highest.append(max(h["fencing"], highest[-1] if highest else -1))
    for h in grants:
        before = bisect.bisect_left(starts, h["sent"])
        if before:
            assert highest[before - 1] < h["fencing"], (
                f"{h['lease_id']} was asked for after a grant with a higher fencing token"
            )
    return {
        "holds": len(holds),
        "grants": len(grants),
        "warm_reuses": len(holds) - len(grants),
        "invalid": sum(1 for h in holds if not h["valid"]),
    }


# -- the runs --------------------------------------------------------------------------


@pytest.mark.timeout(300 + KILLS * 15)  # ~6 s a kill: 100 kills take ~10 minutes
def test_coordinator_kill_loop_under_churn(manager: ResourceManager, loop: Loop) -> None:
    interval = 2.5
    seconds = KILLS * (interval + 3.0) + 6.0
    outputs = [f"/tmp/anya-chaos-{os.getpid()}-{i}.json" for i in range(CLIENTS)]
    clients = [spawn(str(seconds), out) for out in outputs]
    resumes: list[float] = []
    try:
        time.sleep(4.0)  # the clients start up and churn
        for kill in range(KILLS):
            time.sleep(interval)
            killed_at = time.monotonic()
            kill_coordinator("ray.kill" if kill % 2 == 0 else "sigkill")
            resumes.append(loop.run(resume_time(manager, killed_at), timeout=120))
        for client in clients:
            assert read_line(client, timeout=seconds + 120) == "closed"
        results = [json.loads(Path(out).read_text()) for out in outputs]
        holds = [h for r in results for h in r["holds"]]
        refused = [x for r in results for x in r["refused"]]
        assert refused == [], f"releases refused: {refused[:5]}"
        counts = check_holds(holds, MEMORY // GiB)
        assert counts["holds"] > 20 * CLIENTS, f"too little churn: {counts}"
        # Every client closed: nothing is held, and nothing is counted twice; and no
        # placement group outlives its lease, across every kill.
        loop.run(eventually(lambda: all_free(manager), timeout=30))
        assert loop.run(invariants(manager)) == []
        assert sum(1 for h in holds if h["kind"] == "gang") > 0, "no gang in the churn"
        loop.run(eventually(no_group_left, timeout=30))
    finally:
        sigkill(*clients)
        for out in outputs:
            Path(out).unlink(missing_ok=True)
    time.sleep(3 * HEARTBEAT)
    assert loop.run(all_free(manager)), "after the clients' processes died"
    ordered = sorted(resumes)
    REPORT["coordinator_kills"] = {
        "kills": KILLS,
        "clients": CLIENTS,
        "holds_checked": counts["holds"],
        "grants": counts["grants"],
        "warm_reuses": counts["warm_reuses"],
        "holds_invalid_at_end": counts["invalid"],
        "releases_refused": len(refused),
        "resume_p50_s": statistics.median(ordered),
        "resume_p99_s": ordered[min(len(ordered) - 1, round(0.99 * len(ordered)))],
        "resume_max_s": ordered[-1],
    }
    print("\nchaos:", json.dumps(REPORT["coordinator_kills"]))
    assert max(resumes) < 30, f"grants resumed only after {max(resumes):.1f} s"


def test_agent_kill_loop_with_leases_held(manager: ResourceManager, loop: Loop) -> None:
    holders = [spawn("hold", "storm") for _ in range(2)]
    try:
        held = {read_line(h, timeout=60) for h in holders}
        for kill in range(max(2, KILLS // 2)):
            handle = agent()
            if kill % 2 == 0:
                ray.kill(handle, no_restart=False)
            else:
                os.kill(ray.get(handle.status.remote(), timeout=30)["pid"], signal.SIGKILL)
            time.sleep(4 * HEARTBEAT)
            assert held <= loop.run(lease_ids(manager)), "an agent's restart lost a lease"
        # The restarted agent watches the holders it was told of: a death is still seen.
        sigkill(holders[0])
        loop.run(eventually(lambda: _gone(manager, held, 1), timeout=20))
        restart(loop, manager, "sigkill")
        assert len(held & loop.run(lease_ids(manager))) == 1  # the reclaimed one stays gone
    finally:
        sigkill(*holders)
    loop.run(eventually(lambda: all_free(manager), timeout=30))


async def _gone(manager: ResourceManager, held: set[str], count: int) -> bool:
    return len(held - await lease_ids(manager)) >= count


def restart(loop: Loop, manager: ResourceManager, *kills: str) -> None:
    """Kill the coordinator (each way of ``kills`` in turn), until a newer one answers."""
    before = loop.run(manager.snapshot())["epoch"]
    for index, how in enumerate(kills):
        if index:
            time.sleep(0.3)  # may hit the previous restart before it served anything
        kill_coordinator(how)
    loop.run(eventually(lambda: _epoch_above(manager, before), timeout=90))


async def _epoch_above(manager: ResourceManager, epoch: int) -> bool:
    return bool((await manager.snapshot())["epoch"] > epoch)


def test_agent_paused_past_node_loss_then_a_coordinator_restart(
    manager: ResourceManager, loop: Loop
) -> None:
    holder = spawn("hold", "storm")
    pid = ray.get(agent().status.remote(), timeout=30)["pid"]
    try:
        lease_id = read_line(holder, timeout=60)
        os.kill(pid, signal.SIGSTOP)
        # Silent past the limit (10 s at least): the node counts as lost, its leases go.
        try:
            loop.run(eventually(lambda: _without(manager, lease_id), timeout=40))
        except AssertionError:
            health = loop.run(manager.check_resource_health())
            os.kill(pid, signal.SIGCONT)
            status = ray.get(agent().status.remote(), timeout=30)
            raise AssertionError(
                f"the node was not lost: {health}; {status}, paused {pid}"
            ) from None
        restart(loop, manager, "ray.kill")
        assert lease_id not in loop.run(lease_ids(manager)), "a reclaimed lease came back"
    finally:
        os.kill(pid, signal.SIGCONT)
        sigkill(holder)
    loop.run(eventually(lambda: all_free(manager), timeout=30))
    assert loop.run(invariants(manager)) == []


async def _without(manager: ResourceManager, lease_id: str) -> bool:
    return lease_id not in await lease_ids(manager)


def test_holder_killed_during_the_outage_is_reclaimed(manager: ResourceManager, loop: Loop) -> None:
    holder = spawn("hold", "storm")
    try:
        lease_id = read_line(holder, timeout=60)
        before = loop.run(manager.snapshot())["epoch"]
        kill_coordinator("sigkill")
        sigkill(holder)  # dies while no coordinator runs
        loop.run(eventually(lambda: _epoch_above(manager, before), timeout=90))
        back = time.monotonic()
        loop.run(eventually(lambda: _without(manager, lease_id), timeout=20))
        REPORT["holder_dead_during_outage_reclaimed_s"] = time.monotonic() - back
    finally:
        sigkill(holder)
    loop.run(eventually(lambda: all_free(manager), timeout=30))


def test_two_restarts_in_quick_succession(manager: ResourceManager, loop: Loop) -> None:
    holder = spawn("hold", "storm")
    try:
        lease_id = read_line(holder, timeout=60)
        restart(loop, manager, "sigkill", "ray.kill")
        # The holder is alive and claims its lease: still counted, once.
        assert lease_id in loop.run(lease_ids(manager))
        snap = loop.run(manager.snapshot())
        assert snap["pools"]["storm"]["in_use"] == 1
        assert loop.run(invariants(manager)) == []
        loop.run(eventually(lambda: _claimed(manager), timeout=20))
    finally:
        sigkill(holder)
    loop.run(eventually(lambda: all_free(manager), timeout=30))


async def _claimed(manager: ResourceManager) -> bool:
    return (await manager.snapshot())["recovery"]["unclaimed"] == 0


def test_holder_sigkill_storm(manager: ResourceManager, loop: Loop) -> None:
    holders = [spawn("hold", "storm") for _ in range(8)]
    try:
        held = {read_line(h, timeout=120) for h in holders}
        assert len(held) == 8
        assert loop.run(manager.snapshot())["pools"]["storm"]["in_use"] == 8
        killed = time.monotonic()
        sigkill(*holders)
        loop.run(eventually(lambda: all_free(manager), timeout=30))
        REPORT["storm_of_8_reclaimed_s"] = time.monotonic() - killed
    finally:
        sigkill(*holders)
    assert loop.run(invariants(manager)) == []
