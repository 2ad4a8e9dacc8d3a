"""The coordinator's shell with no Ray: a fake transport, a fake clock.

The coordinator decides nothing (docs/architecture.md, "Layers"): it turns calls into
core events and the core's decisions into replies and events. Run here on an
in-memory store, a list of nodes and a clock the test moves, it must answer what the
core decided, tell nothing before it is written, lose a silent node on the clock's
word only, and come back from its store after a restart. The same shell on a real Ray
is covered by tests/integration and tests/chaos.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from hypothesis import event as note_event
from hypothesis import given, settings
from hypothesis import strategies as st

from anya_resource.actors.coordinator import CoordinatorImpl
from anya_resource.actors.wire import lease_from_wire
from anya_resource.config import Policy
from anya_resource.core.agents import AGENT_START_GRACE_S, lost_after
from anya_resource.core.journal import Write
from anya_resource.core.leases import new_secret
from anya_resource.messages import Event
from anya_resource.quantities import MILLI
from tests.unit.core_support import Store

T = TypeVar("T")
GIB = 1 << 30
NODE = "a" * 56
OTHER = "b" * 56


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.mono = 100.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


class FakeTransport:
    """Ray's side as a dict: nodes, ended jobs, the GCS store; it records agent starts."""

    def __init__(self, nodes: dict[str, dict[str, int]]) -> None:
        self.nodes = nodes
        self.ended: set[str] = set()
        self.store = Store()  # the GCS store, as the journal uses it
        self.kv = self.store.kv
        self.agents: list[str] = []
        self.writes = 0
        self.hold_writes: asyncio.Event | None = None  # set: writes go through
        # Ray's placement groups: name -> (id, bundles, selectors); the ready ones; and
        # what plain Ray work uses per node (outside every lease).
        self.groups: dict[str, tuple[str, list[dict[str, float]], list[dict[str, str]]]] = {}
        self.hold_groups: asyncio.Event | None = None  # set: groups become ready
        self.removed: list[str] = []
        self.plain_use: dict[str, dict[str, int]] = {}

    def alive_nodes(self) -> dict[str, dict[str, int]]:
        return {node_id: dict(capacity) for node_id, capacity in self.nodes.items()}

    def ended_jobs(self) -> set[str]:
        return set(self.ended)

    def available_nodes(self) -> dict[str, dict[str, int]]:
        """Ray's available figures: capacity less plain work less the groups' bundles."""
        ray_names = {"CPU": ("cpu", 1000), "GPU": ("gpu", 1000), "memory": ("memory", 1)}
        free = {node_id: dict(capacity) for node_id, capacity in self.nodes.items()}
        for node_id, use in self.plain_use.items():
            for resource, amount in use.items():
                free[node_id][resource] -= amount
        for _, bundles, selectors in self.groups.values():
            for bundle, selector in zip(bundles, selectors, strict=True):
                node_id = selector["ray.io/node-id"]
                for name, amount in bundle.items():
                    resource, scale = ray_names[name]
                    free[node_id][resource] -= round(amount * scale)
        return free

    def create_group(
        self,
        name: str,
        bundles: list[dict[str, float]],
        selectors: list[dict[str, str]],
        strategy: str,
    ) -> tuple[str, str]:
        group_id = f"{len(self.groups) + len(self.removed) + 1:x}"
        self.groups[name] = (group_id, bundles, selectors)
        return group_id, name

    async def group_ready(self, handle: str) -> None:
        if self.hold_groups is not None:
            await self.hold_groups.wait()

    def remove_group(self, handle: str) -> None:
        if self.groups.pop(handle, None) is not None:
            self.removed.append(handle)

    def our_groups(self) -> dict[str, tuple[str, str]]:
        return {name: (group[0], name) for name, group in self.groups.items()}

    def start_agent(self, node_id: str, heartbeat_s: float) -> str:
        self.agents.append(node_id)
        return f"agent-{node_id[:8]}"

    def stored_policy(self) -> bytes | None:
        return self.kv.get("policy")

    def keep_policy(self, policy_json: bytes) -> None:
        self.kv["policy"] = policy_json

    def next_epoch(self) -> int:
        epoch = int(self.kv["epoch"]) + 1 if "epoch" in self.kv else 0
        self.kv["epoch"] = str(epoch).encode()
        return epoch

    def cluster_secret(self) -> bytes:
        self.kv.setdefault("secret", new_secret())
        return self.kv["secret"]

    def journal(self) -> dict[str, bytes]:
        return {k: v for k, v in self.kv.items() if k.startswith("journal/")}

    def write_now(self, write: Write) -> None:
        self.store.write(write)

    async def write(self, write: Write) -> None:
        if self.hold_writes is not None:
            await self.hold_writes.wait()
        self.writes += 1
        self.write_now(write)


def capacity(cpu: float = 2, memory: int = 4 * GIB) -> dict[str, int]:
    return {"memory": memory, "cpu": round(cpu * MILLI), "gpu": 0, "disk": 0}


def health(node_id: str, *, memory_total: int = 64 * GIB, cpu_count: float = 16) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "address": "127.0.0.1",
        "memory_total": memory_total,
        "memory_available": memory_total // 2,
        "memory_percent": 10.0,
        "cpu_count": cpu_count,
        "cpu_percent": 5.0,
        "load_average": [0.1, 0.1, 0.1],
        "disk_percent": 10.0,
        "gpus": 0,
        "gpu_memory_percent": None,
        "node_rss": 1 << 20,
        "node_cpu_percent": 1.0,
        "holders": {},
        "sampled_at": 0.0,
    }


def spec(channel: str, n: int, pid: int, node: str = NODE, **resources: Any) -> dict[str, Any]:
    return {
        "resources": resources or {"cpu": 1},
        "idempotency_key": f"{channel}/{n}",
        "holder": {"pid": pid, "create_time": 1.0, "node_id": node, "job_id": "01000000"},
    }


def policy(**changes: Any) -> str:
    base = {"reserve": {"cpu": 0, "memory": 0}, "pools": {"rpc": {"size": 1}}, "default_pool": None}
    return Policy.from_dict({**base, **changes}).model_dump_json()


@contextlib.asynccontextmanager
async def coordinator(
    transport: FakeTransport, clock: FakeClock, policy_json: str | None = None
) -> AsyncIterator[CoordinatorImpl]:
    shell = CoordinatorImpl(policy_json or policy(), transport=transport, clock=clock)
    try:
        yield shell
    finally:
        for task in shell._tasks:
            task.cancel()
        await asyncio.gather(*shell._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def started(
    nodes: dict[str, dict[str, int]],
) -> AsyncIterator[tuple[CoordinatorImpl, FakeTransport, FakeClock]]:
    """A coordinator on a fake transport with ``nodes`` and a fake clock."""
    transport, clock = FakeTransport(nodes), FakeClock()
    async with coordinator(transport, clock) as shell:
        yield shell, transport, clock


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(test(), timeout=30))  # type: ignore[arg-type]


async def events_of(
    shell: CoordinatorImpl, channel: str, after: int = 0, kind: str | None = None
) -> list[Event]:
    reply = await shell.watch(channel, after, timeout=0.5)
    return [e for e in reply["events"] if kind is None or e["kind"] == kind]


def test_a_grant_is_answered_once_it_is_written() -> None:
    async def scenario() -> None:
        async with started({NODE: capacity()}) as (shell, transport, clock):
            assert transport.agents == [NODE]  # an agent per alive node
            transport.hold_writes = asyncio.Event()
            call = asyncio.ensure_future(shell.acquire_many([spec("manager1", 1, 11)]))
            await asyncio.sleep(0.05)
            assert not call.done()  # nothing is told before the write that holds it
            transport.hold_writes.set()
            [answer] = await call
            assert answer[0] == "granted"
            assert isinstance(answer[1], bytes)
            lease = lease_from_wire(answer[1])
            assert lease.node_id == NODE and lease.resources == {"cpu": MILLI}
            assert lease.granted_at == clock.now  # the injected clock, not the machine's
            assert transport.writes >= 1

    run(scenario)


def test_a_waiter_hears_its_grant_on_its_channel() -> None:
    async def scenario() -> None:
        async with started({NODE: capacity(cpu=1)}) as (shell, _transport, _clock):
            [first] = await shell.acquire_many([spec("manager1", 1, 11)])
            [second] = await shell.acquire_many([spec("manager2", 1, 22)])
            assert second == ["queued"]
            lease = lease_from_wire(first[1])  # type: ignore[arg-type]
            await shell.release(lease.lease_id, lease.token)
            [event] = await events_of(shell, "manager2")
            assert event["kind"] == "granted" and event["key"] == "manager2/1"
            assert lease_from_wire(event["lease"]).resources == {"cpu": MILLI}

    run(scenario)


def test_bad_input_is_an_error_answer_and_changes_nothing() -> None:
    async def scenario() -> None:
        async with started({NODE: capacity()}) as (shell, _transport, _clock):
            answers = await shell.acquire_many(
                [
                    spec("manager1", 1, 11, cpu=-1),
                    spec("manager1", 2, 11, cpu=64),
                    spec("manager1", 3, 11, nope=1),
                ]
            )
            assert [a[0] for a in answers] == ["error"] * 3
            assert [a[1] for a in answers] == ["InvalidRequest", "Infeasible", "InvalidRequest"]
            assert (await shell.snapshot())["leases"] == 0
            assert await shell.invariants() == []

    run(scenario)


def test_a_silent_agent_loses_its_node_on_the_clocks_word() -> None:
    async def scenario() -> None:
        transport = FakeTransport({NODE: capacity(), OTHER: capacity()})
        clock = FakeClock()
        async with coordinator(transport, clock) as shell:
            [answer] = await shell.acquire_many([{**spec("manager1", 1, 11), "node": OTHER}])
            lease = lease_from_wire(answer[1])  # type: ignore[arg-type]
            await shell.heartbeat(NODE, health(NODE), [])
            await shell.heartbeat(OTHER, health(OTHER), [])
            limit = lost_after(shell.policy)
            clock.advance(limit - 1)
            await shell.heartbeat(NODE, health(NODE), [])  # only NODE's agent beats on
            await shell._sync_nodes()
            assert set(shell.scheduler.nodes) == {NODE, OTHER}
            clock.advance(2)  # OTHER silent past the limit; NODE beat 2 s ago
            await shell._sync_nodes()
            assert set(shell.scheduler.nodes) == {NODE}
            ended = [e for e in await events_of(shell, "manager1") if e["kind"] == "ended"]
            assert ended == [{"kind": "ended", "lease_id": lease.lease_id, "reason": "node_lost"}]
            assert await shell.invariants() == []

    run(scenario)


def test_an_agent_that_never_beat_gets_the_start_grace() -> None:
    async def scenario() -> None:
        async with started({NODE: capacity()}) as (shell, transport, clock):
            clock.advance(lost_after(shell.policy) + AGENT_START_GRACE_S - 1)
            await shell._sync_nodes()
            assert NODE in shell.scheduler.nodes
            clock.advance(2)
            await shell._sync_nodes()
            assert NODE not in shell.scheduler.nodes
            transport.nodes[OTHER] = capacity()  # a new node: an agent is started for it
            await shell._sync_nodes()  # (and NODE's agent again: Ray still has it alive)
            assert set(transport.agents[-2:]) == {NODE, OTHER}
            assert OTHER in shell.scheduler.nodes

    run(scenario)


def test_capacity_is_capped_by_what_the_agent_measured() -> None:
    async def scenario() -> None:
        async with started({NODE: capacity(cpu=8, memory=32 * GIB)}) as (shell, _transport, _clock):
            reply = await shell.heartbeat(NODE, health(NODE, memory_total=8 * GIB, cpu_count=2), [])
            assert reply["known"] and reply["holders"] == []
            # Ray's logical CPUs stand (Ray schedules and reserves by them); memory is capped.
            assert shell.scheduler.nodes[NODE].capacity["cpu"] == 8 * MILLI
            assert shell.scheduler.nodes[NODE].capacity["memory"] == 8 * GIB

    run(scenario)


def test_a_dead_holders_waiter_is_aborted_and_its_lease_reclaimed() -> None:
    async def scenario() -> None:
        async with started({NODE: capacity(cpu=1)}) as (shell, _transport, _clock):
            [held] = await shell.acquire_many([spec("manager1", 1, 11)])
            assert held[0] == "granted"
            assert await shell.acquire_many([spec("manager2", 1, 22)]) == [["queued"]]
            reply = await shell.heartbeat(NODE, health(NODE), [])
            assert {h[1] for h in reply["holders"]} == {11}  # holders of leases are watched
            waiter_key = f"{NODE}:22:1.0"
            await shell.heartbeat(NODE, health(NODE), [waiter_key])
            [event] = await events_of(shell, "manager2")
            # Never granted: not "revoked" (issue 14: a name that says what happened).
            assert event["kind"] == "rejected" and event["error"] == "AcquireAborted"
            await shell.heartbeat(NODE, health(NODE), [f"{NODE}:11:1.0"])
            assert (await shell.snapshot())["leases"] == 0

    run(scenario)


def test_an_ended_ray_job_gives_its_leases_back() -> None:
    async def scenario() -> None:
        async with started({NODE: capacity()}) as (shell, transport, _clock):
            await shell.acquire_many([spec("manager1", 1, 11)])
            transport.ended.add("01000000")
            await shell._reclaim_ended_jobs()
            [event] = await events_of(shell, "manager1")
            assert event["kind"] == "ended" and event["reason"] == "job_ended"
            await shell._reclaim_ended_jobs()  # told once
            assert (await shell.snapshot())["leases"] == 0

    run(scenario)


def test_pool_holders_hear_once_that_others_wait() -> None:
    async def scenario() -> None:
        async with started({NODE: capacity()}) as (shell, _transport, clock):
            [held] = await shell.acquire_many([spec("manager1", 1, 11, pools={"rpc": 1})])
            assert held[0] == "granted"
            assert await shell.acquire_many([spec("manager2", 1, 22, pools={"rpc": 1})]) == [
                ["queued"]
            ]
            clock.advance(1)
            assert await shell.acquire_many([spec("manager2", 2, 22, pools={"rpc": 1})]) == [
                ["queued"]
            ]
            shell._tell_all(shell.give_back.repeat(shell.scheduler.state))
            reply = await shell.watch("manager1", 0, timeout=0.1)
            hints = [e for e in reply["events"] if e["kind"] == "pool_wanted"]
            assert hints == [{"kind": "pool_wanted", "pool": "rpc"}]  # once until read
            read = await shell.watch("manager1", reply["cursor"], timeout=0.1)
            assert [e for e in read["events"] if e["kind"] == "pool_wanted"] == []
            shell._tell_all(shell.give_back.repeat(shell.scheduler.state))
            again = await events_of(shell, "manager1", read["cursor"])
            assert again == [{"kind": "pool_wanted", "pool": "rpc"}]  # told again once read
            assert await events_of(shell, "manager2", kind="pool_wanted") == []  # the waiter

    run(scenario)


def test_a_restart_restores_exactly_what_was_written() -> None:
    async def scenario() -> None:
        async with started({NODE: capacity(cpu=2)}) as (shell, transport, clock):
            [kept] = await shell.acquire_many([spec("manager1", 1, 11)])
            [gone] = await shell.acquire_many([spec("manager1", 2, 11)])
            gone_lease = lease_from_wire(gone[1])  # type: ignore[arg-type]
            await shell.release(gone_lease.lease_id, gone_lease.token)
        kept_lease = lease_from_wire(kept[1])  # type: ignore[arg-type]
        clock.advance(1)
        async with coordinator(transport, clock) as restarted:  # all memory lost
            assert restarted.epoch == 1
            assert set(restarted.scheduler.leases.active) == {kept_lease.lease_id}
            assert (await restarted.ping())["recovering"] == 1
            claimed = await restarted.claim(
                "manager1", [[kept_lease.lease_id, kept_lease.token]], []
            )
            assert claimed[kept_lease.lease_id] is not None
            forged = await restarted.claim(
                "manager1", [[gone_lease.lease_id, gone_lease.token]], []
            )
            assert forged[gone_lease.lease_id] is None  # a released lease stays released
            assert (await restarted.ping())["recovering"] == 0
            assert await restarted.invariants() == []

    run(scenario)


def test_a_stall_of_the_coordinator_is_not_an_agents_silence() -> None:
    async def scenario() -> None:
        async with started({NODE: capacity()}) as (shell, _, clock):
            [answer] = await shell.acquire_many([spec("manager1", 1, 11)])
            lease = lease_from_wire(answer[1])  # type: ignore[arg-type]
            await shell.heartbeat(NODE, health(NODE), [])
            woke = clock.monotonic()
            clock.advance(30)  # one sleep of the node loop that woke 29 s late
            await shell._node_turn(woke)
            # Nobody could be heard meanwhile: the node and its lease stay.
            assert lease.lease_id in shell.scheduler.leases.active
            # On time, the same silence loses the node, and the lease with it.
            for _ in range(int(lost_after(shell.policy)) + 2):
                woke = clock.monotonic()
                clock.advance(shell.policy.heartbeat_s)
                await shell._node_turn(woke)
            assert lease.lease_id not in shell.scheduler.leases.active
            ended = await events_of(shell, "manager1", kind="ended")
            assert [e["reason"] for e in ended] == ["node_lost"]

    run(scenario)


# -- random runs of the shell: managers, restarts, silent agents, the clock --------------


class Client:
    """What one manager knows: the leases it holds, the acquires it waits on."""

    def __init__(self, index: int) -> None:
        self.channel = f"manager{index}"
        self.pid = 100 + index
        self.held: dict[str, str] = {}  # lease id -> token
        self.waiting: dict[str, dict[str, Any]] = {}  # key -> spec, to send again
        self.cursor = 0
        self.sent = 0
        self.heard: set[str] = set()  # kinds of event heard (for the run's statistics)

    def spec(self, cpu: float, node: str | None) -> dict[str, Any]:
        self.sent += 1
        made = spec(self.channel, self.sent, self.pid, cpu=cpu)
        return {**made, "node": node} if node else made

    def answered(self, key: str, answer: list[Any]) -> None:
        if answer[0] == "granted":
            lease = lease_from_wire(answer[1])
            self.held[lease.lease_id] = lease.token
            self.waiting.pop(key, None)
        elif answer[0] == "error":
            self.waiting.pop(key, None)

    async def poll(self, shell: CoordinatorImpl) -> None:
        reply = await shell.watch(self.channel, self.cursor, timeout=0)
        self.cursor = reply["cursor"]
        for event in reply["events"]:
            self.heard.add(event["kind"])
            if event["kind"] == "granted" and event["key"] in self.waiting:
                self.answered(event["key"], ["granted", event["lease"]])
            elif event["kind"] == "rejected":
                self.waiting.pop(event["key"], None)
            elif event["kind"] == "ended":
                self.held.pop(event["lease_id"], None)
            elif event["kind"] == "revoked" and event["lease_id"] in self.held:
                token = self.held.pop(event["lease_id"])  # a holder that lets go at once
                await shell.release(event["lease_id"], token)


OPS = st.one_of(
    st.tuples(st.just("acquire"), st.integers(0, 2), st.sampled_from([0.5, 1, 2, 3])),
    st.tuples(st.just("acquire_on"), st.integers(0, 2), st.sampled_from([NODE, OTHER])),
    st.tuples(st.just("release"), st.integers(0, 2), st.integers(0, 5)),
    st.tuples(st.just("poll"), st.integers(0, 2)),
    st.tuples(st.just("beat"), st.sampled_from([NODE, OTHER])),
    st.tuples(st.just("advance"), st.sampled_from([0.1, 2.0, 11.0, 31.0, 61.0])),
    st.tuples(st.just("sync")),
    st.tuples(st.just("restart")),
)


async def _drain(shell: CoordinatorImpl, clients: list[Client]) -> None:
    """Let every write land and every manager hear everything (revoked leases let go)."""
    for _ in range(3):
        await shell._durable()
        await asyncio.sleep(0)
        for client in clients:
            await client.poll(shell)


async def _restart(
    shell: CoordinatorImpl, transport: FakeTransport, clock: FakeClock, clients: list[Client]
) -> CoordinatorImpl:
    """All memory lost; each manager sends its census, then its waiting acquires again."""
    for task in shell._tasks:
        task.cancel()
    await asyncio.gather(*shell._tasks, return_exceptions=True)
    shell = CoordinatorImpl(policy(), transport=transport, clock=clock)
    for client in clients:
        client.cursor = 0
        claimed = await shell.claim(
            client.channel, [[i, t] for i, t in client.held.items()], list(client.waiting)
        )
        for lease_id, expiry in claimed.items():
            if expiry is None:
                client.held.pop(lease_id)
        keys = list(client.waiting)
        answers = await shell.acquire_many([client.waiting[k] for k in keys])
        for key, answer in zip(keys, answers, strict=True):
            client.answered(key, answer)
    return shell


async def _step(
    op: tuple[Any, ...], shell: CoordinatorImpl, clients: list[Client], clock: FakeClock
) -> None:
    name = op[0]
    if name in ("acquire", "acquire_on"):
        client = clients[op[1]]
        made = client.spec(op[2], None) if name == "acquire" else client.spec(1, op[2])
        client.waiting[made["idempotency_key"]] = made
        [answer] = await shell.acquire_many([made])
        client.answered(made["idempotency_key"], answer)
    elif name == "release":
        client = clients[op[1]]
        if client.held:
            lease_id = sorted(client.held)[op[2] % len(client.held)]
            await shell.release(lease_id, client.held.pop(lease_id))
    elif name == "poll":
        await clients[op[1]].poll(shell)
    elif name == "beat":
        await shell.heartbeat(op[1], health(op[1]), [])
    elif name == "advance":
        clock.advance(op[1])
        shell._apply(shell.scheduler.tick(clock.time()))
    elif name == "sync":
        await shell._sync_nodes()


@settings(max_examples=int(os.environ.get("ANYA_SOAK_ITERATIONS", "60")), deadline=None)
@given(st.lists(OPS, min_size=1, max_size=40))
def test_random_runs_lose_nothing_and_resurrect_nothing(ops: list[tuple[Any, ...]]) -> None:
    """After any run of calls, restarts, silences and clock jumps, once every manager
    has heard everything: the coordinator holds exactly the leases its managers hold
    (none released comes back, none is counted twice), and every invariant holds."""

    async def scenario() -> None:
        transport = FakeTransport({NODE: capacity(cpu=3), OTHER: capacity(cpu=2)})
        clock = FakeClock()
        clients = [Client(i) for i in range(3)]
        shell = CoordinatorImpl(policy(), transport=transport, clock=clock)
        try:
            for op in ops:
                if op[0] == "restart":
                    shell = await _restart(shell, transport, clock, clients)
                else:
                    await _step(op, shell, clients, clock)
                assert await shell.invariants() == [], op
            await _drain(shell, clients)
            held = {lease_id for client in clients for lease_id in client.held}
            active = set(shell.scheduler.leases.active)
            assert active == held
            granted = sum(shell.scheduler.leases.active[i].resources.get("cpu", 0) for i in held)
            snap = await shell.snapshot()
            assert snap["resources"]["cpu"]["granted"] == granted
            for kind in sorted(set().union(*(client.heard for client in clients))):
                note_event(f"heard {kind}")
            note_event(f"held at the end: {min(len(held), 3)}+")
        finally:
            for task in shell._tasks:
                task.cancel()
            await asyncio.gather(*shell._tasks, return_exceptions=True)

    run(scenario)
