"""The coordinator's placement groups, on the fake transport of the shell tests (no Ray):
a reserved grant is told only once its group is ready, the group is pinned where the
core placed each bundle and goes when the lease ends, a restart removes strays and
remakes what is missing, and plain Ray work outside every lease is not granted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from anya_resource.actors.reservations import GROUP_PREFIX, lease_of
from anya_resource.actors.wire import lease_from_wire
from anya_resource.core.spares import KEEP_S
from anya_resource.errors import InvalidRequest
from anya_resource.quantities import MILLI
from tests.unit.test_coordinator_shell import (
    NODE,
    FakeTransport,
    capacity,
    coordinator,
    events_of,
    run,
    spec,
    started,
)

OTHER = "b" * 56
THIRD = "c" * 56


def gang_spec(channel: str, n: int, count: int, strategy: str, cpu: float = 1) -> dict[str, Any]:
    made = spec(channel, n, 11)
    made["resources"] = {}
    made["bundles"] = [{"cpu": cpu} for _ in range(count)]
    made["strategy"] = strategy
    return made


def test_a_gang_is_told_only_once_ray_reserved_it_pinned_where_the_core_placed_it() -> None:
    async def scenario() -> None:
        nodes = {NODE: capacity(cpu=2), OTHER: capacity(cpu=2)}
        async with started(nodes) as (shell, transport, clock):
            transport.hold_groups = asyncio.Event()
            call = asyncio.ensure_future(
                shell.acquire_many([gang_spec("manager1", 1, 2, "STRICT_SPREAD")])
            )
            await asyncio.sleep(0.05)
            assert not call.done()  # written, but Ray has not reserved it yet
            transport.hold_groups.set()
            [answer] = await call
            lease = lease_from_wire(answer[1])  # type: ignore[arg-type]
            (name,) = transport.groups
            assert lease_of(name) == lease.lease_id and name.startswith(GROUP_PREFIX)
            group_id, bundles, selectors = transport.groups[name]
            assert lease.placement_group == group_id  # kept by the journal too
            assert bundles == [{"CPU": 1.0}, {"CPU": 1.0}]
            assert [s["ray.io/node-id"] for s in selectors] == lease.nodes()
            assert sorted(lease.nodes()) == sorted(nodes)
            await shell.release(lease.lease_id, lease.token)
            # Kept a moment as a spare: the same gang again takes it, with no Ray call.
            assert list(transport.groups) == [name] and transport.removed == []
            [again] = await shell.acquire_many([gang_spec("manager1", 2, 2, "STRICT_SPREAD")])
            second = lease_from_wire(again[1])  # type: ignore[arg-type]
            assert second.placement_group == group_id and list(transport.groups) == [name]
            await shell.release(second.lease_id, second.token)
            clock.advance(0.5)
            shell.reservations.sweep()
            assert list(transport.groups) == [name]  # not yet
            clock.advance(KEEP_S)
            shell.reservations.sweep()
            assert transport.groups == {} and transport.removed == [name]

    run(scenario)


def test_a_waiting_gang_hears_its_grant_after_its_group_is_ready() -> None:
    async def scenario() -> None:
        async with started({NODE: capacity(cpu=2), OTHER: capacity(cpu=2)}) as (
            shell,
            transport,
            _clock,
        ):
            [first] = await shell.acquire_many([spec("manager1", 1, 11, cpu=2)])
            [queued] = await shell.acquire_many([gang_spec("manager2", 1, 2, "STRICT_SPREAD")])
            assert queued == ["queued"]
            transport.hold_groups = asyncio.Event()
            lease = lease_from_wire(first[1])  # type: ignore[arg-type]
            await shell.release(lease.lease_id, lease.token)
            await asyncio.sleep(0.05)
            reply = await shell.watch("manager2", 0, timeout=0.05)
            assert [e for e in reply["events"] if e["kind"] == "granted"] == []
            transport.hold_groups.set()
            [granted] = await events_of(shell, "manager2", kind="granted")
            gang = lease_from_wire(granted["lease"])  # type: ignore[typeddict-item]
            assert gang.placement_group is not None and len(gang.placed()) == 2

    run(scenario)


def test_a_one_node_lease_is_reserved_at_its_first_use_and_a_draw_runs_in_its_budget() -> None:
    async def scenario() -> None:
        async with started({NODE: capacity(cpu=2)}) as (shell, transport, _clock):
            [answer] = await shell.acquire_many([spec("manager1", 1, 11, cpu=1)])
            lease = lease_from_wire(answer[1])  # type: ignore[arg-type]
            assert lease.placement_group is None and transport.groups == {}  # first_use
            group = await shell.reserve(lease.lease_id, lease.token)
            assert await shell.reserve(lease.lease_id, lease.token) == group  # once only
            assert next(iter(transport.groups.values()))[1] == [{"CPU": 1.0}]
            key = await shell.budget_key(lease.lease_id, lease.token)
            drawn_spec = spec("manager1", 2, 11, cpu=0.5)
            drawn_spec["within"] = [lease.lease_id, key]
            [drawn_answer] = await shell.acquire_many([drawn_spec])
            drawn = lease_from_wire(drawn_answer[1])  # type: ignore[arg-type]
            assert await shell.reserve(drawn.lease_id, drawn.token) == group
            assert len(transport.groups) == 1
            pools = spec("manager1", 3, 11)
            pools["resources"] = {"pools": {"rpc": 1}}
            [slot_answer] = await shell.acquire_many([pools])
            slot = lease_from_wire(slot_answer[1])  # type: ignore[arg-type]
            with pytest.raises(InvalidRequest, match="nothing Ray can reserve"):
                await shell.reserve(slot.lease_id, slot.token)

    run(scenario)


def test_a_restart_removes_stray_groups_and_remakes_lost_ones() -> None:
    async def scenario() -> None:
        nodes = {NODE: capacity(cpu=2), OTHER: capacity(cpu=2), THIRD: capacity(cpu=2)}
        transport = FakeTransport(nodes)
        from tests.unit.test_coordinator_shell import FakeClock

        clock = FakeClock()
        async with coordinator(transport, clock) as shell:
            [kept] = await shell.acquire_many([gang_spec("manager1", 1, 2, "STRICT_SPREAD")])
            [lost] = await shell.acquire_many([gang_spec("manager1", 2, 2, "SPREAD")])
        kept_lease = lease_from_wire(kept[1])  # type: ignore[arg-type]
        lost_lease = lease_from_wire(lost[1])  # type: ignore[arg-type]
        # A group Ray kept for a lease the journal does not hold, and one Ray lost.
        transport.groups[GROUP_PREFIX + "lease-stray"] = ("ff", [{"CPU": 1.0}], [{}])
        del transport.groups[GROUP_PREFIX + lost_lease.lease_id]
        clock.advance(1)
        async with coordinator(transport, clock) as restarted:
            await asyncio.sleep(0.05)
            assert GROUP_PREFIX + "lease-stray" not in transport.groups
            remade = transport.groups[GROUP_PREFIX + lost_lease.lease_id]
            active = restarted.scheduler.leases.active
            assert active[lost_lease.lease_id].placement_group == remade[0]
            assert active[kept_lease.lease_id].placement_group == kept_lease.placement_group

    run(scenario)


def test_plain_ray_work_outside_every_lease_is_not_granted() -> None:
    async def scenario() -> None:
        async with started({NODE: capacity(cpu=2)}) as (shell, transport, _clock):
            [half] = await shell.acquire_many([spec("manager2", 1, 22, cpu=0.5)])
            lease = lease_from_wire(half[1])  # type: ignore[arg-type]
            await shell.reserve(lease.lease_id, lease.token)
            transport.plain_use[NODE] = {"cpu": 1000}
            await shell._sync_nodes()
            assert shell.scheduler.nodes[NODE].outside == {}  # seen once: maybe a ghost
            await shell._sync_nodes()
            # A group of ours is not plain work: only the plain task's CPU is outside.
            assert shell.scheduler.nodes[NODE].outside == {"cpu": 1000}
            [answer] = await shell.acquire_many([spec("manager1", 1, 11, cpu=1)])
            assert answer == ["queued"]  # half a CPU left that nobody uses
            transport.plain_use.clear()
            await shell._sync_nodes()
            [granted] = await events_of(shell, "manager1", kind="granted")
            assert lease_from_wire(granted["lease"]).resources == {"cpu": MILLI}  # type: ignore[typeddict-item]

    run(scenario)


def test_a_spare_is_given_up_when_a_grant_needs_its_room() -> None:
    async def scenario() -> None:
        async with started({NODE: capacity(cpu=2)}) as (shell, transport, _clock):
            [first] = await shell.acquire_many([reserved_spec("manager1", 1, cpu=2)])
            lease = lease_from_wire(first[1])  # type: ignore[arg-type]
            await shell.release(lease.lease_id, lease.token)
            assert len(transport.groups) == 1  # a spare of 2 CPUs
            # Another layout on the same node: the spare holds the room it needs.
            [second] = await shell.acquire_many([reserved_spec("manager1", 2, cpu=1)])
            other = lease_from_wire(second[1])  # type: ignore[arg-type]
            assert other.placement_group != lease.placement_group
            assert len(transport.removed) == 1 and len(transport.groups) == 1
            # Room beside a spare: it stays.
            await shell.release(other.lease_id, other.token)
            [third] = await shell.acquire_many([reserved_spec("manager1", 3, cpu=0.5)])
            assert len(transport.groups) == 2 and len(transport.removed) == 1
            assert shell.reservations.held_on()[NODE]["cpu"] == 1500  # spares count as ours
            assert third[0] == "granted"

    run(scenario)


def reserved_spec(channel: str, n: int, cpu: float) -> dict[str, Any]:
    made = spec(channel, n, 11, cpu=cpu)
    made["reserve"] = True
    return made


def test_a_group_asked_for_while_rays_view_lags_a_removal_is_asked_for_again() -> None:
    async def scenario() -> None:
        async with started({NODE: capacity(cpu=2)}) as (shell, transport, _clock):
            [first] = await shell.acquire_many([reserved_spec("manager1", 1, cpu=2)])
            lease = lease_from_wire(first[1])  # type: ignore[arg-type]
            await shell.release(lease.lease_id, lease.token)
            # Ray does not place what is asked for now (its view still has the spare's
            # room taken): the first group never becomes ready.
            transport.hold_groups = asyncio.Event()
            call = asyncio.ensure_future(shell.acquire_many([reserved_spec("manager1", 2, cpu=1)]))
            await asyncio.sleep(0.35)  # past ASK_AGAIN_AFTER_S: asked for again
            transport.hold_groups.set()
            [answer] = await call
            other = lease_from_wire(answer[1])  # type: ignore[arg-type]
            (name,) = transport.groups
            group_id = transport.groups[name][0]
            assert other.placement_group == group_id  # told the group that stands
            assert len(transport.removed) == 2  # the spare, then the group Ray did not place
            active = shell.scheduler.leases.active[other.lease_id]
            assert active.placement_group == group_id  # and the journal keeps it

    run(scenario)
