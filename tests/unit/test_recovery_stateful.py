"""Recovery, model-checked: the coordinator crashes (all memory lost) between any two events.

A hypothesis state machine runs the whole protocol around the real core: client
processes acquire, release (also with another process's token), renew, give up and
cancel, claim their leases when they see a new epoch, and die; their calls travel as
messages that are delivered in any order, twice, late (to the next coordinator, as Ray
holds calls made while an actor restarts) or fail when the coordinator dies; the
coordinator's group commit writes one segment at a time to a fake GCS store, and a
crash may come while a write is in flight (it lands or not); agents beat, crash and
come back; nodes go and return; time jumps. The coordinator's side is what
``actors/coordinator.py`` does, in the same order: every event into the core, the
journal staged, and no reply and no event told before the write holding it landed.
Startup is the real ``core/recovery.start``.

After every step:

* the core's own invariants (never more granted than capacity, pool size or tenant
  limit; free + granted = capacity);
* what live clients believe they hold fits every pool and node, also during an outage,
  and is active at the coordinator whenever one runs (except leases whose node was lost,
  revoked leases in their grace period, and leases released by another process, which
  their holders hear of next);
* a release once confirmed is never undone; no release of a holder is refused;
* lease ids are never reused and fencing tokens strictly increase, across crashes;
* at quiescence (every message delivered, every write landed, agents beaten): recovery
  is complete, and every counted lease is held by a live holder that knows it (no
  phantom).

``ANYA_SOAK_ITERATIONS`` raises the number of examples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from anya_resource.config import Policy
from anya_resource.core import (
    Grant,
    Holder,
    Reclaim,
    Reject,
    Revoke,
    build_request,
    check_invariants,
)
from anya_resource.core.journal import Write
from anya_resource.core.leases import TokenMinter
from anya_resource.core.model import Decision
from anya_resource.core.recovery import recovering, start
from anya_resource.errors import (
    Infeasible,
    InvalidRequest,
    LeaseExpired,
    LeaseRevoked,
    NotLeaseHolder,
)
from tests.unit.core_support import CORE, GIB, SECRET, Store

POLICY = Policy.model_validate(
    {
        "reserve": {},
        "aging": {"per_second": 0.0, "max_boost": 0},
        "lease": {"default_ttl": 10, "renew_every": 3, "max_ttl": 60, "preemption_grace_s": 2},
        "pools": {"default": {"size": 3}, "p": {"size": 2}},
    }
)
CAPACITY = {"cpu": 2 * CORE, "memory": 4 * GIB, "gpu": 0, "disk": 0}
NODES = ("a1", "b2")
CLIENTS = 3
SHAPES = (
    {"cpu": 1},
    {"pools": {"p": 1}},
    {"cpu": 1, "pools": {"p": 1}},
    {"cpu": 2},
    {"memory": "3GiB"},
    # Gangs: all bundles at once or nothing, as Ray's strategies place them.
    {"bundles": [{"cpu": 1}, {"cpu": 1}], "strategy": "STRICT_SPREAD"},
    {"bundles": [{"cpu": 1}, {"cpu": 1}], "strategy": "STRICT_PACK"},
    {"bundles": [{"cpu": 1}, {"cpu": 0.5}, {"memory": "1GiB"}], "strategy": "SPREAD"},
    {"bundles": [{"cpu": 2}, {"cpu": 1}], "strategy": "PACK", "pools": {"p": 1}},
)
GANG_OPTIONS = ("bundles", "strategy")
# Drawn from a budget: some fit the budgets above, some never can (refused at once).
DRAWN_SHAPES = ({"cpu": "0.5"}, {"cpu": 1}, {"pools": {"p": 1}}, {"memory": "1GiB"})
picks = st.integers(min_value=0, max_value=1000)
# A reply to a call (what fails with the call when the coordinator dies), by the call.
CALL_REPLIES = {
    "granted": "acquire",
    "rejected": "acquire",
    "released": "release",
    "refused": "release",
    "cancelled": "cancel",
    "confirmed": "claim",
}


@dataclass
class Msg:
    """A call on its way to the coordinator."""

    kind: str  # acquire, release, cancel, confirm, renew
    client: int
    args: tuple[Any, ...]


@dataclass
class Reply:
    """What comes back to a client: a reply to one of its calls, or an event."""

    client: int
    kind: str  # granted, rejected, failed, released, confirmed, renewed, ended, revoked
    args: tuple[Any, ...]


@dataclass
class Belief:
    token: str
    fencing: int
    node: str
    pools: dict[str, int]
    resources: dict[str, int]
    expires_at: float  # as far as the client knows
    within: str | None = None  # the budget it was drawn from
    bundles: list[tuple[str, dict[str, int]]] = field(default_factory=list)  # where, what


@dataclass
class Client:
    index: int
    holder: Holder
    alive: bool = True
    epoch: int = 0
    keys: int = 0
    held: dict[str, Belief] = field(default_factory=dict)
    pending: dict[str, Any] = field(default_factory=dict)  # key -> request, not answered
    gave_up: set[str] = field(default_factory=set)
    releasing: dict[str, str] = field(default_factory=dict)  # lease id -> token, unconfirmed


class Coordinator:
    """``actors/coordinator.py``'s carrying out of decisions, with no Ray and no asyncio."""

    def __init__(self, store: Store, epoch: int, nodes: dict[str, dict[str, int]], now: float):
        startup = start(POLICY, epoch, SECRET, dict(store.kv), nodes, now)
        # The shell writes the first snapshot before it serves any call.
        store.write(startup.first_write)
        startup.commits.written(startup.first_write.ticket)
        self.s = startup.scheduler
        self.commits = startup.commits
        self.epoch = epoch
        self.parked: dict[str, list[Msg]] = {}  # request id -> acquire calls waiting on it
        self.held_back: list[tuple[int, Reply]] = []  # (barrier, reply): sent once written
        self.writing: Write | None = None
        self.grants: list[Grant] = []  # every grant decided, for the fencing check
        self.revoked: set[str] = set()
        self.carry(startup.decisions)

    # -- the shell's rules -------------------------------------------------------------

    def after_commit(self, reply: Reply) -> None:
        self.commits.stage(self.s.take_journal())
        self.held_back.append((self.commits.barrier(), reply))

    def carry(self, decisions: list[Decision]) -> None:
        self.commits.stage(self.s.take_journal())
        for decision in decisions:
            if isinstance(decision, Grant):
                self.grants.append(decision)
                for msg in self.parked.pop(decision.request_id, []):
                    self.after_commit(Reply(msg.client, "granted", (msg.args[0], decision.lease)))
            elif isinstance(decision, Reject):
                for msg in self.parked.pop(decision.request_id, []):
                    self.after_commit(Reply(msg.client, "rejected", (msg.args[0],)))
            elif isinstance(decision, Revoke):
                self.revoked.add(decision.lease_id)
                lease = self.s.leases.active[decision.lease_id]
                self.tell(lease.listener, "revoked", decision.lease_id)
            elif isinstance(decision, Reclaim) and decision.tell is not None:
                self.tell(decision.tell, "ended", decision.lease_id)

    def tell(self, holder_key: str | None, kind: str, lease_id: str) -> None:
        client = client_of(holder_key)
        if client is not None:
            self.after_commit(Reply(client, kind, (lease_id,)))

    def handle(self, msg: Msg, now: float) -> None:
        s = self.s
        if msg.kind == "acquire":
            key, request = msg.args
            try:
                request_id, decisions = s.submit(request, now)
            except (Infeasible, InvalidRequest, LeaseExpired, LeaseRevoked):
                self.after_commit(Reply(msg.client, "rejected", (key,)))
                return
            self.parked.setdefault(request_id, []).append(msg)
            self.carry(decisions)
        elif msg.kind == "release":
            lease_id, token, by = msg.args
            try:
                self.carry(s.release(lease_id, token, now, by=by))
            except NotLeaseHolder:
                self.after_commit(Reply(msg.client, "refused", (lease_id,)))
                return
            self.after_commit(Reply(msg.client, "released", (lease_id,)))
        elif msg.kind == "cancel":
            self.carry(s.cancel_key(msg.args[0], now))
            # Confirmed once written, like a release: a cancel lost with the coordinator
            # is sent again, or the request it refuses could still be granted.
            self.after_commit(Reply(msg.client, "cancelled", (msg.args[0],)))
        elif msg.kind == "claim":
            manager, pairs, waiting = msg.args
            results, decisions = s.claim(manager, pairs, waiting, now)
            self.carry(decisions)
            self.after_commit(Reply(msg.client, "confirmed", (list(results.items()),)))
        elif msg.kind == "renew":
            results = []
            for lease_id, token in msg.args[0]:
                try:
                    results.append((lease_id, s.confirm(lease_id, token, now).expires_at))
                except (LeaseExpired, LeaseRevoked):
                    results.append((lease_id, None))
            self.after_commit(Reply(msg.client, "confirmed", (results,)))

    def cut(self) -> None:
        self.commits.stage(self.s.take_journal())
        if self.writing is None:
            self.writing = self.commits.cut()

    def land(self, store: Store) -> None:
        assert self.writing is not None
        store.write(self.writing)
        self.commits.written(self.writing.ticket)
        self.writing = None

    def sendable(self) -> list[Reply]:
        """Replies whose decisions are durable now: they may go out."""
        ready = [reply for barrier, reply in self.held_back if barrier <= self.commits.committed]
        self.held_back = [(b, r) for b, r in self.held_back if b > self.commits.committed]
        return ready


def client_of(listener: str | None) -> int | None:
    """The model's client behind a lease's listener (its manager's channel)."""
    if listener is None or not listener.startswith("manager-"):
        return None
    return int(listener.removeprefix("manager-"))


def channel_of_client(client: Client) -> str:
    """The client manager's channel: its keys are "<channel>/<n>"."""
    return f"manager-{client.index}"


def manager_of(client: Client) -> str:
    """The prefix of every idempotency key the client's manager makes."""
    return channel_of_client(client) + "/"


def holder_for(index: int, node: str) -> Holder:
    return Holder(pid=1000 + index, create_time=float(index), node_id=node, job_id="job")


class RecoveryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 100.0
        self.store = Store()
        self.epoch = 0
        self.alive_nodes = set(NODES)
        self.clients = [Client(i, holder_for(i, NODES[i % len(NODES)])) for i in range(CLIENTS)]
        self.coord: Coordinator | None = Coordinator(self.store, 0, self.capacities(), self.now)
        self.to_coord: list[Msg] = []
        self.to_client: list[Reply] = []
        self.agents: dict[str, dict[str, Holder]] = {n: {} for n in NODES}
        self.confirmed_released: set[str] = set()
        self.lease_ids: set[str] = set()
        self.max_fencing = -1
        self.lost_with_node: set[str] = set()  # leases whose node went: the resource is gone
        self.released_by_other: set[str] = set()
        self.dropped_expired: set[str] = set()  # dropped by a client when its TTL ran out
        self.revoked: set[str] = set()
        self.budgets: dict[str, dict[str, int]] = {}  # lease id -> what it may have drawn

    # -- helpers ---------------------------------------------------------------------

    def capacities(self) -> dict[str, dict[str, int]]:
        return {n: dict(CAPACITY) for n in sorted(self.alive_nodes)}

    def pick(self, items: list[Any], index: int) -> Any:
        return items[index % len(items)] if items else None

    def live(self) -> list[Client]:
        return [c for c in self.clients if c.alive]

    def send(self, msg: Msg) -> None:
        self.to_coord.append(msg)

    def pump(self) -> None:
        coord = self.coord
        if coord is None:
            return
        self.to_client.extend(coord.sendable())
        for grant in coord.grants:
            lease = grant.lease
            if lease.lease_id not in self.lease_ids:
                assert lease.fencing_token > self.max_fencing, "fencing tokens went down"
                self.max_fencing = lease.fencing_token
                self.lease_ids.add(lease.lease_id)
                if lease.within is None:
                    self.budgets[lease.lease_id] = {**lease.resources, **lease.pools}
        coord.grants.clear()
        self.revoked |= coord.revoked

    def fail(self, msg: Msg) -> None:
        """The call failed (the coordinator died): the client hears, and acts on it."""
        self.to_client.append(Reply(msg.client, "failed", (msg,)))

    # -- clients ---------------------------------------------------------------------

    @initialize()
    def begin(self) -> None:
        self.pump()

    @rule(
        who=picks,
        shape=st.sampled_from(SHAPES),
        priority=st.sampled_from(["high", "low"]),
        timeout=st.sampled_from([None, None, 5.0]),
    )
    def acquire(
        self, who: int, shape: dict[str, Any], priority: str, timeout: float | None
    ) -> None:
        client = self.pick(self.live(), who)
        if client is None:
            return
        client.keys += 1
        key = f"{manager_of(client)}{client.keys}"
        options = {name: shape[name] for name in GANG_OPTIONS if name in shape}
        request = build_request(
            POLICY,
            {name: value for name, value in shape.items() if name not in options},
            **options,
            priority=priority,
            preemptible=priority == "low",
            idempotency_key=key,
            holder=client.holder,
            timeout=timeout,
        )
        client.pending[key] = request
        self.send(Msg("acquire", client.index, (key, request)))

    @rule(who=picks, index=picks, shape=st.sampled_from(DRAWN_SHAPES))
    def draw(self, who: int, index: int, shape: dict[str, Any]) -> None:
        """A process of a job acquires from the job's budget: a lease someone holds."""
        client = self.pick(self.live(), who)
        budgets = sorted(
            (lease_id, TokenMinter(SECRET).budget_key(lease_id))
            for c in self.live()
            for lease_id, b in c.held.items()
            if b.within is None
        )
        budget = self.pick(budgets, index)
        if client is None or budget is None:
            return
        client.keys += 1
        key = f"{manager_of(client)}{client.keys}"
        request = build_request(
            POLICY, shape, idempotency_key=key, holder=client.holder, within=list(budget)
        )
        client.pending[key] = request
        self.send(Msg("acquire", client.index, (key, request)))

    @rule(who=picks, index=picks, by_other=st.booleans())
    def release(self, who: int, index: int, by_other: bool) -> None:
        client = self.pick(self.live(), who)
        if client is None or not client.held:
            return
        lease_id = self.pick(sorted(client.held), index)
        belief = client.held[lease_id]
        if by_other:
            # Another process has the token and gives the lease back: the holder believes
            # it holds the lease until it hears of it.
            other = self.pick([c for c in self.live() if c is not client], index)
            if other is None:
                return
            self.released_by_other.add(lease_id)
            other.releasing[lease_id] = belief.token
            self.send(
                Msg("release", other.index, (lease_id, belief.token, channel_of_client(other)))
            )
            return
        del client.held[lease_id]
        client.releasing[lease_id] = belief.token
        self.send(Msg("release", client.index, (lease_id, belief.token, channel_of_client(client))))

    @rule(who=picks)
    def renew_all(self, who: int) -> None:
        client = self.pick(self.live(), who)
        if client is not None and client.held:
            pairs = [(lease_id, b.token) for lease_id, b in client.held.items()]
            self.send(Msg("renew", client.index, (pairs,)))

    @rule(who=picks, index=picks)
    def give_up(self, who: int, index: int) -> None:
        client = self.pick(self.live(), who)
        if client is None or not client.pending:
            return
        key = self.pick(sorted(client.pending), index)
        del client.pending[key]
        client.gave_up.add(key)
        self.send(Msg("cancel", client.index, (key,)))

    @rule(who=picks)
    def notice_epoch(self, who: int) -> None:
        """The client's watch call failed or came back with a new epoch: it claims its leases."""
        client = self.pick(self.live(), who)
        if client is not None:
            self.claim(client)

    def claim(self, client: Client) -> None:
        if self.coord is None or client.epoch == self.coord.epoch:
            return
        client.epoch = self.coord.epoch
        # The census: what this client holds and still waits for; the rest of its
        # restored leases go back.
        pairs = [(lease_id, b.token) for lease_id, b in client.held.items()]
        self.send(Msg("claim", client.index, (manager_of(client), pairs, sorted(client.pending))))

    @rule(who=picks)
    def kill_client(self, who: int) -> None:
        client = self.pick(self.live(), who)
        if client is not None and len(self.live()) > 1:
            client.alive = False  # its calls in flight may still arrive

    @precondition(lambda self: self.to_client)
    @rule(index=picks)
    def respond(self, index: int) -> None:
        reply = self.to_client.pop(index % len(self.to_client))
        client = self.clients[reply.client]
        if not client.alive:
            return
        kind, args = reply.kind, reply.args
        if kind == "granted":
            key, lease = args
            if key not in client.pending:
                return  # given up (its cancel gives it back), or a duplicate reply
            del client.pending[key]
            for other in self.clients:
                assert lease.lease_id not in other.held, f"{lease.lease_id} granted twice"
            if lease.within is not None:
                event("a lease drawn from a budget was granted")
            client.held[lease.lease_id] = Belief(
                lease.token,
                lease.fencing_token,
                lease.node_id,
                dict(lease.pools),
                dict(lease.resources),
                lease.expires_at,
                lease.within,
                [(node, dict(amounts)) for node, amounts in lease.placed()],
            )
            if lease.bundles is not None:
                event("a gang lease was granted")
        elif kind == "rejected":
            client.pending.pop(args[0], None)
        elif kind == "released":
            if client.releasing.pop(args[0], None) is not None:
                self.confirmed_released.add(args[0])
        elif kind == "refused":
            raise AssertionError(f"a release by its holder was refused: {args[0]}")
        elif kind in ("ended", "revoked"):
            belief = client.held.pop(args[0], None)
            if kind == "revoked" and belief is not None:
                client.releasing[args[0]] = belief.token  # let go, as asked
                self.send(
                    Msg("release", client.index, (args[0], belief.token, channel_of_client(client)))
                )
        elif kind == "confirmed":
            for lease_id, expires_at in args[0]:
                if lease_id in client.held:
                    if expires_at is None:
                        # Ended, or being revoked: let go of it now (a no-op if it ended).
                        belief = client.held.pop(lease_id)
                        client.releasing[lease_id] = belief.token
                        self.send(
                            Msg(
                                "release",
                                client.index,
                                (lease_id, belief.token, channel_of_client(client)),
                            )
                        )
                    else:
                        client.held[lease_id].expires_at = expires_at
        elif kind == "failed":
            self.retry(client, args[0])

    def retry(self, client: Client, msg: Msg) -> None:
        """What the client does when a call failed because the coordinator died."""
        if msg.kind == "acquire":
            key = msg.args[0]
            if key in client.pending:
                self.send(msg)  # the same key: never a second grant
        elif msg.kind == "release":
            if msg.args[0] in client.releasing:
                self.send(msg)
        elif msg.kind == "cancel":
            self.send(msg)
        elif msg.kind == "claim":
            client.epoch = 0  # it will notice the epoch again and claim anew

    # -- the network and the coordinator --------------------------------------------

    @precondition(lambda self: self.to_coord and self.coord is not None)
    @rule(index=picks)
    def deliver(self, index: int) -> None:
        msg = self.to_coord.pop(index % len(self.to_coord))
        assert self.coord is not None
        self.coord.handle(msg, self.now)
        self.pump()

    @precondition(lambda self: self.to_coord)
    @rule(index=picks)
    def duplicate(self, index: int) -> None:
        msg = self.to_coord[index % len(self.to_coord)]
        self.to_coord.append(Msg(msg.kind, msg.client, msg.args))

    @precondition(lambda self: self.coord is not None)
    @rule()
    def cut(self) -> None:
        assert self.coord is not None
        self.coord.cut()
        self.pump()

    @precondition(lambda self: self.coord is not None and self.coord.writing is not None)
    @rule()
    def land(self) -> None:
        assert self.coord is not None
        self.coord.land(self.store)
        self.pump()

    @precondition(lambda self: self.coord is not None)
    @rule(lands=st.booleans(), late=st.booleans(), again=st.booleans())
    def crash(self, lands: bool, late: bool, again: bool) -> None:
        """The coordinator dies: memory gone; a write in flight lands or not; calls fail
        or wait for the next one (Ray holds calls made while an actor restarts)."""
        coord = self.coord
        assert coord is not None
        if coord.writing is not None and lands:
            self.store.write(coord.writing)
        for msgs in coord.parked.values():
            for msg in msgs:
                self.fail(msg)
        for _, reply in coord.held_back:
            if reply.kind in CALL_REPLIES:
                self.fail(self.call_of(reply))
        if not late:
            for msg in self.to_coord:
                self.fail(msg)
            self.to_coord = []
        self.coord = None
        self.epoch += 1
        if again:  # two restarts in quick succession: the first dies before serving
            start(POLICY, self.epoch, SECRET, dict(self.store.kv), self.capacities(), self.now)
            self.epoch += 1
        self.coord = Coordinator(self.store, self.epoch, self.capacities(), self.now)
        self.pump()

    def call_of(self, reply: Reply) -> Msg:
        """The call a held-back reply answered (what the client sees fail)."""
        kind = CALL_REPLIES[reply.kind]
        if kind == "acquire":
            client = self.clients[reply.client]
            key = reply.args[0]
            return Msg("acquire", reply.client, (key, client.pending.get(key)))
        if kind == "cancel":
            return Msg("cancel", reply.client, reply.args)
        if kind == "release":
            lease_id = reply.args[0]
            token = self.clients[reply.client].releasing.get(lease_id, "")
            return Msg(
                "release",
                reply.client,
                (lease_id, token, channel_of_client(self.clients[reply.client])),
            )
        return Msg("claim", reply.client, ())

    # -- agents, nodes, time -----------------------------------------------------------

    @precondition(lambda self: self.coord is not None)
    @rule(node=st.sampled_from(NODES))
    def agent_beat(self, node: str) -> None:
        """A heartbeat: the dead among the holders it watches, and whom to watch now."""
        coord = self.coord
        assert coord is not None
        if node not in self.alive_nodes:
            return
        dead = [
            key
            for key in self.agents[node]
            if not self.clients[int(key.split(":")[1]) - 1000].alive
        ]
        for key in dead:
            coord.carry(coord.s.holder_died(key, self.now))
        self.agents[node] = {h.key or "": h for h in coord.s.holders_on(node)}
        self.pump()

    @rule(node=st.sampled_from(NODES))
    def agent_crash(self, node: str) -> None:
        self.agents[node] = {}  # a restarted agent learns whom to watch at its next beat

    @precondition(
        lambda self: self.coord is not None and len(self.alive_nodes) > 1 and len(self.live()) > 1
    )
    @rule(node=st.sampled_from(NODES))
    def node_lost(self, node: str) -> None:
        coord = self.coord
        assert coord is not None
        if node not in self.alive_nodes:
            return
        self.alive_nodes.discard(node)
        for client in self.clients:
            if client.holder.node_id == node:
                client.alive = False  # its processes go with it
        self.lost_with_node |= {lease.lease_id for lease in coord.s.leases if node in lease.nodes()}
        self.sync()

    @precondition(lambda self: self.coord is not None)
    @rule(node=st.sampled_from(NODES))
    def node_back(self, node: str) -> None:
        if node not in self.alive_nodes:
            self.alive_nodes.add(node)
            self.sync()

    @precondition(lambda self: self.coord is not None)
    @rule()
    def sync(self) -> None:
        """The coordinator's heartbeat reads Ray's list of alive nodes."""
        coord = self.coord
        assert coord is not None
        coord.carry(coord.s.sync_nodes(self.capacities(), self.now))
        self.pump()

    @rule(seconds=st.sampled_from([0.5, 3.0, 11.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        for client in self.live():
            for lease_id, belief in list(client.held.items()):
                if belief.expires_at <= self.now:
                    del client.held[lease_id]  # its TTL ran out, as far as it knows
                    self.dropped_expired.add(lease_id)
        if self.coord is not None:
            self.coord.carry(self.coord.s.tick(self.now))
            self.pump()

    # -- a forged or replayed record changes nothing ---------------------------------

    @precondition(lambda self: self.coord is not None)
    @rule(index=picks, kind=st.sampled_from(["made-up", "wrong-token", "huge-fencing"]))
    def forge(self, index: int, kind: str) -> None:
        coord = self.coord
        assert coord is not None
        ids = sorted(self.lease_ids) or ["lease-1"]
        lease_id = {
            "made-up": "lease-deadbeef",
            "wrong-token": self.pick(ids, index),
            "huge-fencing": f"lease-{2**60:x}",
        }[kind]
        before = (coord.s.snapshot(self.now), coord.s.lease_list(), coord.s.leases.highest_fencing)
        for call in (coord.s.release, coord.s.confirm):
            try:
                call(lease_id, "f" * 48, self.now)
            except NotLeaseHolder:
                pass
            else:
                raise AssertionError(f"a forged token for {lease_id} was accepted")
        after = (coord.s.snapshot(self.now), coord.s.lease_list(), coord.s.leases.highest_fencing)
        assert after == before, "a forged record changed the state"
        assert coord.s.take_journal() == []

    # -- quiescence ------------------------------------------------------------------

    @precondition(lambda self: self.coord is not None)
    @rule()
    def quiesce(self) -> None:
        """Deliver everything, land every write, beat every agent: then no phantom."""
        coord = self.coord
        assert coord is not None
        for _ in range(500):
            if coord.writing is not None:
                coord.land(self.store)
            coord.cut()
            self.pump()
            if self.to_coord:
                self.deliver(0)
            elif self.to_client:
                self.respond(0)
            elif coord.writing is None and not coord.held_back:
                moved = False
                for client in self.live():
                    if client.epoch != coord.epoch:
                        self.claim(client)
                        moved = True
                self.sync()
                for node in NODES:
                    before = dict(self.agents[node])
                    self.agent_beat(node)
                    moved = moved or before != self.agents[node]
                coord.commits.stage(coord.s.take_journal())
                busy = coord.writing or coord.held_back or coord.commits.staged
                if not moved and not busy and not self.to_coord and not self.to_client:
                    break
        else:
            raise AssertionError("the protocol did not settle")
        assert recovering(coord.s) == 0, "restored leases nobody claimed or reclaimed"
        believed = {lease_id for c in self.live() for lease_id in c.held}
        for lease in coord.s.leases:
            if lease.detached or lease.lease_id in self.dropped_expired:
                continue
            assert lease.lease_id in believed, (
                f"phantom: {lease.lease_id} is counted but no live holder believes it holds it"
            )

    # -- after every step --------------------------------------------------------------

    @invariant()
    def core_invariants(self) -> None:
        if self.coord is not None:
            check_invariants(self.coord.s.state)

    @invariant()
    def beliefs_fit_and_are_counted(self) -> None:
        excluded = self.lost_with_node | self.released_by_other | self.revoked
        beliefs = [
            (lease_id, b)
            for c in self.live()
            for lease_id, b in c.held.items()
            if lease_id not in excluded and b.expires_at > self.now
        ]
        drawn = [(lease_id, b) for lease_id, b in beliefs if b.within is not None]
        for budget_id, total in self.budgets.items():
            used: dict[str, int] = {}
            for _, b in drawn:
                if b.within == budget_id:
                    for name, amount in {**b.resources, **b.pools}.items():
                        used[name] = used.get(name, 0) + amount
            for name, amount in used.items():
                assert amount <= total.get(name, 0), f"{budget_id}: {used} drawn > {total}"
        active = self.coord.s.leases.active if self.coord is not None else None
        # What is drawn from a budget holds nothing of the cluster (its budget holds it);
        # it ends with its budget, which its holder hears of next.
        beliefs = [
            (lease_id, b)
            for lease_id, b in beliefs
            if b.within is None or (active is not None and b.within in active)
        ]
        cluster = [(lease_id, b) for lease_id, b in beliefs if b.within is None]
        for pool, size in (("p", 2), ("default", 3)):
            used_slots = sum(b.pools.get(pool, 0) for _, b in cluster)
            assert used_slots <= size, (
                f"holders believe they hold {used_slots} slots of {pool} (size {size})"
            )
        for node in NODES:
            for resource in ("cpu", "memory"):
                held = sum(
                    amounts.get(resource, 0)
                    for _, b in cluster
                    for where, amounts in b.bundles
                    if where == node
                )
                assert held <= CAPACITY[resource], f"{node} {resource}: {held} believed held"
        if active is not None:
            for lease_id, _ in beliefs:
                assert lease_id in active, f"{lease_id} is believed held but not counted"

    @invariant()
    def confirmed_releases_stay(self) -> None:
        if self.coord is not None:
            back = self.confirmed_released & self.coord.s.leases.active.keys()
            assert not back, f"a confirmed release was undone: {back}"

    @invariant()
    def fencing_above_every_token_issued(self) -> None:
        if self.coord is not None:
            assert self.coord.s.leases.highest_fencing >= self.max_fencing


def _examples() -> int:
    raw = os.environ.get("ANYA_SOAK_ITERATIONS") or os.environ.get("ANYA_RESOURCE_SOAK_ITERATIONS")
    return max(200, int(raw)) if raw else 200


RecoveryMachine.TestCase.settings = settings(
    max_examples=_examples(),
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestRecovery = RecoveryMachine.TestCase
