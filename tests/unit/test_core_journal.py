"""The journal: group commits, snapshots, compaction, and what recovery reads back."""

from __future__ import annotations

import pytest

from anya_resource.core import Holder, build_request, check_invariants
from anya_resource.core.journal import (
    COMPACT_AFTER_SEGMENTS,
    Ended,
    Generation,
    Granted,
    Rebound,
    Refused,
    encode_segment,
    net,
    recover,
)
from anya_resource.core.model import LeaseRecord
from anya_resource.core.recovery import recovering
from tests.unit.core_support import Durable, Store, caps, grants, make_policy

POLICY = make_policy(pools={"default": {"size": 4}, "rpc": {"size": 2}})
NODES = {"n1": caps(cpu=8), "n2": caps(cpu=8)}


def grant(durable: Durable, now: float = 0.0, **resources: object) -> LeaseRecord:
    request = build_request(POLICY, resources or {"cpu": 1})
    _, decisions = durable.s.submit(request, now)
    [granted] = grants(decisions)
    return granted.lease


def test_a_record_survives_the_journal_field_for_field_but_its_token() -> None:
    store = Store()
    old = Durable(POLICY, store, NODES, 0.0)
    lease = grant(old, cpu=2, pools={"rpc": 1})
    old.commit()
    new = Durable(POLICY, store, NODES, 0.0, epoch=1)
    [restored] = list(new.s.leases)
    assert restored.fields()[3:] == lease.fields()[3:]
    assert restored.lease_id == lease.lease_id
    assert restored.token == lease.token  # minted again from the id, never written
    assert all(lease.token.encode() not in blob for blob in store.kv.values())


def test_a_lease_granted_and_released_between_two_commits_costs_no_write() -> None:
    store = Store()
    durable = Durable(POLICY, store, NODES, 0.0)
    before = dict(store.kv)
    lease = grant(durable)
    durable.s.release(lease.lease_id, lease.token, 0.0)
    durable.commit()
    assert store.kv == before
    assert durable.commits.committed == durable.commits.barrier()


def test_net_keeps_what_happened_to_leases_of_earlier_commits() -> None:
    old, new = (
        LeaseRecord.from_fields(_fields("lease-1")),
        LeaseRecord.from_fields(_fields("lease-2")),
    )
    entries = [
        Granted(new),
        Rebound("lease-1", Holder(pid=1)),
        Ended("lease-1"),
        Rebound("lease-2", Holder(pid=2)),
        Ended("lease-2"),
        Refused("k", "cancelled:x"),
    ]
    assert net(entries) == [Rebound("lease-1", Holder(pid=1)), Ended("lease-1"), entries[-1]]
    assert old.lease_id == "lease-1"


def _fields(lease_id: str) -> tuple[object, ...]:
    return (lease_id, "req", "", 1, "n1", {"cpu": 1000}, {}, 50, "normal", "default", 60.0,
            0.0, 60.0, False, (None,) * 6, False, None, False, "active", None, None)  # fmt: skip


def test_one_write_in_flight_at_a_time_and_the_barrier_covers_everything_staged() -> None:
    store = Store()
    durable = Durable(POLICY, store, NODES, 0.0)
    commits = durable.commits
    grant(durable)
    commits.stage(durable.s.take_journal())
    first = commits.cut()
    assert first is not None and commits.barrier() == first.ticket
    grant(durable)
    commits.stage(durable.s.take_journal())
    assert commits.barrier() == first.ticket + 1  # what came after waits for the next write
    assert commits.cut() is None  # not while the first is being written
    durable.write(first)
    second = commits.cut()
    assert second is not None and second.ticket == first.ticket + 1
    with pytest.raises(ValueError, match="not being written"):
        commits.written(first.ticket)
    durable.write(second)
    assert commits.committed == commits.barrier() == second.ticket


def test_compaction_writes_a_snapshot_of_a_new_generation_and_drops_the_old_one() -> None:
    store = Store()
    durable = Durable(POLICY, store, NODES, 0.0)
    kept = grant(durable)
    for _ in range(COMPACT_AFTER_SEGMENTS // 2):  # two segments each
        lease = grant(durable)
        durable.commit()
        durable.s.release(lease.lease_id, lease.token, 0.0)
        durable.commit()
    grant(durable)
    durable.commit()  # this one is the snapshot
    assert durable.commits.generation == Generation(0, 1)
    assert sorted(store.kv) == [Generation(0, 1).snapshot_key()]
    new = Durable(POLICY, store, NODES, 1.0, epoch=1)
    assert len(new.s.leases) == 2 and kept.lease_id in new.s.leases.active
    check_invariants(new.s.state)


def test_segments_of_an_older_epoch_written_after_its_successor_started_are_ignored() -> None:
    """A zombie coordinator (its node cut off, then back) must not bring leases back."""
    store = Store()
    zombie = Durable(POLICY, store, NODES, 0.0)
    successor = Durable(POLICY, store, NODES, 1.0, epoch=1)
    grant(zombie, cpu=4)
    zombie.commit()  # lands after the successor's snapshot
    third = Durable(POLICY, store, NODES, 2.0, epoch=2)
    assert len(third.s.leases) == 0
    assert len(successor.s.leases) == 0
    assert all("0000000000." not in key for key in store.kv), "garbage was not deleted"


def test_recovery_stops_at_a_gap_and_treats_what_follows_as_garbage() -> None:
    store = Store()
    durable = Durable(POLICY, store, NODES, 0.0)
    lease = grant(durable)
    durable.commit()
    generation = durable.commits.generation
    stray = generation.segment_key(5)
    store.kv[stray] = encode_segment([Ended(lease.lease_id)])
    recovered, read = recover(store.kv)
    assert read == generation and lease.lease_id in recovered.leases
    assert recovered.garbage == [stray]


def test_a_malformed_journal_is_a_clear_error_not_a_silent_loss() -> None:
    store = Store()
    Durable(POLICY, store, NODES, 0.0)
    [key] = store.kv
    store.kv[key] = b"{not json"
    with pytest.raises(ValueError, match="not valid JSON"):
        recover(store.kv)


def test_restored_leases_are_unconfirmed_until_claimed_and_detached_ones_never_are() -> None:
    store = Store()
    old = Durable(POLICY, store, NODES, 0.0)
    mine = grant(old)
    _, decisions = old.s.submit(build_request(POLICY, {"cpu": 1}, detached=True), 0.0)
    old.commit()
    new = Durable(POLICY, store, NODES, 1.0, epoch=1)
    assert recovering(new.s) == 1
    new.s.confirm(mine.lease_id, mine.token, 1.0)
    assert recovering(new.s) == 0
    assert len(grants(decisions)) == 1
