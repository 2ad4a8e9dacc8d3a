"""A process's warm leases (core/share.py): pure, with a fake clock and hypothesis."""

from __future__ import annotations

import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from anya_resource.core import Holder, LeaseRecord
from anya_resource.core.share import TooManyWaiting, Waiter, WarmEntry, WarmShare

KINDS = ("a", "b")
DEPTHS = {"a": 1, "b": 3}  # "b": uses queued ahead in Ray, up to 3 per lease


def record(n: int) -> LeaseRecord:
    return LeaseRecord(
        lease_id=f"lease-{n}",
        request_id=f"req-{n}",
        token=f"token-{n}",
        fencing_token=n,
        node_id="n1",
        resources={"cpu": 1000},
        pools={},
        priority=50,
        priority_name="normal",
        tenant="default",
        ttl=30.0,
        granted_at=0.0,
        expires_at=30.0,
        preemptible=False,
        holder=Holder(pid=1, create_time=1.0, node_id="n1"),
    )


class Box:
    """A waiter's mailbox, as the manager's deliver callbacks fill it."""

    def __init__(self, kind: str, depth: int = 1) -> None:
        self.got: list[tuple[WarmEntry | None, BaseException | None]] = []
        self.waiter = Waiter(kind, lambda entry, error: self.got.append((entry, error)), depth)


def test_a_lease_given_back_is_taken_again_with_no_acquire() -> None:
    share = WarmShare()
    assert share.use("a") is None
    share.add(record(1), "a", now=0.0)
    assert share.counts().busy == 1
    assert share.done("lease-1", now=1.0) is None  # kept, idle
    entry = share.use("a")
    assert entry is not None and entry.record.lease_id == "lease-1"
    assert share.use("a") is None  # busy now
    assert share.use("b") is None  # not of another kind


def test_a_waiting_use_asks_once_and_gets_the_first_lease_to_come_free() -> None:
    share = WarmShare()
    share.add(record(1), "a", now=0.0)
    box = Box("a")
    entry, ask = share.use_or_wait(box.waiter)
    assert entry is None and ask
    other = Box("a")
    assert share.use_or_wait(other.waiter) == (None, True)  # two wait: two asks
    share.done("lease-1", now=1.0)  # its own lease comes free first
    assert box.got and box.got[0][0] is not None
    assert box.got[0][0].record.lease_id == "lease-1"
    assert share.add(record(2), "a", now=2.0, asked=True)  # the grant: to the next one
    assert other.got[0][0] is not None and other.got[0][0].record.lease_id == "lease-2"
    assert share.counts().busy == 2


def test_asks_stay_at_the_number_of_waiting_uses() -> None:
    share = WarmShare()
    first, second = Box("a"), Box("a")
    assert share.use_or_wait(first.waiter)[1]
    share.give_up(first.waiter)
    assert not share.use_or_wait(second.waiter)[1]  # the first ask is still in flight
    share.add(record(1), "a", now=0.0, asked=True)
    assert second.got[0][0] is not None
    assert not first.got


def test_asks_outlived_by_their_waiters_are_needless() -> None:
    share = WarmShare()
    share.add(record(1), "a", now=0.0)
    box = Box("a")
    assert share.use_or_wait(box.waiter)[1]
    assert share.needless_asks() == set()  # someone still waits
    share.done("lease-1", now=1.0)  # served by its own lease
    assert share.needless_asks() == {"a"}
    assert share.needless_asks() == set()  # counted as gone
    assert share.use_or_wait(Box("a").waiter)[1]  # the next wait asks anew


def test_wanted_idle_goes_back_now_and_busy_goes_back_after_its_use() -> None:
    share = WarmShare()
    share.add(record(1), "a", now=0.0)
    share.add(record(2), "a", now=0.0)
    share.done("lease-1", now=1.0)
    back = share.want(["lease-1", "lease-2"], [], now=1.0)
    assert [r.lease_id for r in back] == ["lease-1"]
    done = share.done("lease-2", now=2.0)
    assert done is not None and done.lease_id == "lease-2"
    assert share.entries() == []


def test_a_wanted_lease_is_not_handed_to_a_waiter() -> None:
    share = WarmShare()
    share.add(record(1), "a", now=0.0)
    box = Box("a")
    share.use_or_wait(box.waiter)
    share.want(["lease-1"], [], now=0.5)
    assert share.done("lease-1", now=1.0) is not None
    assert not box.got


def test_a_limit_on_waiting_uses_refuses_one_more_and_changes_nothing() -> None:
    share = WarmShare()
    first = Box("a")
    share.use_or_wait(first.waiter, max_waiting=1)
    with pytest.raises(TooManyWaiting):
        share.use_or_wait(Box("a").waiter, max_waiting=1)
    assert share.counts().waiting == 1
    assert share.use_or_wait(Box("b").waiter, max_waiting=1)[1]  # per kind


def test_idle_time_and_spare() -> None:
    share = WarmShare()
    for n in (1, 2):
        share.add(record(n), "a", now=0.0)
        share.done(f"lease-{n}", now=0.0)
    share.want([], ["lease-2"], now=0.0)
    assert share.stale(0.01, idle_s=2.0, spare_idle_s=0.05) == []
    assert [r.lease_id for r in share.stale(0.06, 2.0, 0.05)] == ["lease-2"]
    assert [r.lease_id for r in share.stale(2.0, 2.0, 0.05)] == ["lease-1"]


def test_revoking_and_ended_leases_are_never_reused() -> None:
    share = WarmShare()
    share.add(record(1), "a", now=0.0)
    share.add(record(2), "a", now=0.0)
    share.done("lease-2", now=0.0)
    entry, idle = share.revoking("lease-2")
    assert entry is not None and idle is not None  # idle: back at once
    entry, idle = share.revoking("lease-1")
    assert entry is not None and idle is None  # busy: back after its use
    assert share.done("lease-1", now=1.0) is not None
    share.add(record(3), "a", now=0.0)
    assert share.drop("lease-3") is not None
    assert share.done("lease-3", now=1.0) is None and share.use("a") is None


def test_failed_asks_reach_the_oldest_waiter_or_all_of_them() -> None:
    share = WarmShare()
    boxes = [Box("a") for _ in range(3)]
    for box in boxes:
        share.use_or_wait(box.waiter)
    share.asked_failed("a", TimeoutError("late"), permanent=False)
    assert [bool(b.got) for b in boxes] == [True, False, False]
    share.asked_failed("a", ValueError("never fits"), permanent=True)
    assert all(b.got for b in boxes)
    assert isinstance(boxes[2].got[0][1], ValueError)


def test_close_returns_everything_and_fails_the_waiters() -> None:
    share = WarmShare()
    share.add(record(1), "a", now=0.0)
    share.add(record(2), "b", now=0.0)
    share.done("lease-2", now=0.0)
    box = Box("a")
    share.use_or_wait(box.waiter)
    share.fail_waiters(RuntimeError("closed"))
    assert sorted(r.lease_id for r in share.close()) == ["lease-1", "lease-2"]
    assert isinstance(box.got[0][1], RuntimeError)
    assert not share


def test_uses_from_many_threads_never_share_a_lease() -> None:
    share = WarmShare()
    for n in range(4):
        share.add(record(n), "a", now=0.0)
        share.done(f"lease-{n}", now=0.0)
    in_use: set[str] = set()
    clash: list[str] = []
    guard = threading.Lock()

    def worker() -> None:
        for _ in range(2000):
            entry = share.use("a")
            if entry is None:
                continue
            lease_id = entry.record.lease_id
            with guard:
                if lease_id in in_use:
                    clash.append(lease_id)
                in_use.add(lease_id)
            with guard:
                in_use.discard(lease_id)
            share.done(lease_id, now=0.0)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clash == []
    assert share.counts().idle == 4


class ShareMachine(RuleBasedStateMachine):
    """Random uses, waits, grants, ends and the coordinator's word: a lease never
    carries more uses than its kind's depth (one, or three queued ahead), a waiter is
    answered at most once, a wanted or ended lease is never handed out again, one goes
    back only once no use is left, and the counts add up."""

    def __init__(self) -> None:
        super().__init__()
        self.share = WarmShare()
        self.now = 0.0
        self.next = 0
        self.users: dict[str, int] = {}  # lease id -> how many uses it carries now
        self.kind_of: dict[str, str] = {}
        self.boxes: list[Box] = []
        self.unusable: set[str] = set()  # wanted, revoking or ended: never handed out
        self.returned: set[str] = set()  # given back to the coordinator

    def _handed(self, entry: WarmEntry, who: str) -> None:
        lease_id = entry.record.lease_id
        uses = self.users.get(lease_id, 0) + 1
        assert uses <= DEPTHS[entry.kind], f"{lease_id} carries {uses} uses"
        assert lease_id not in self.unusable, f"{lease_id} handed after it was wanted"
        assert lease_id not in self.returned
        self.users[lease_id] = uses

    def _returned(self, lease_id: str) -> None:
        assert lease_id not in self.users, f"{lease_id} went back with uses in it"
        self.returned.add(lease_id)

    @rule(kind=st.sampled_from(KINDS), asking=st.booleans())
    def use(self, kind: str, asking: bool) -> None:
        idle, _ = self.share.uses()
        idle_of_kind = {i for i in idle if self.kind_of.get(i) == kind}
        if asking:  # as @leased does: and one more lease asked for when queued
            entry, ask = self.share.take(kind, DEPTHS[kind])
            assert not ask or (entry is not None and entry.uses > 1)
        else:
            entry = self.share.use(kind, DEPTHS[kind])
        if entry is not None:
            assert entry.uses == 1 or not idle_of_kind, "an idle lease comes first"
            self._handed(entry, "direct")

    @rule(kind=st.sampled_from(KINDS), asked=st.booleans())
    def grant(self, kind: str, asked: bool) -> None:
        self.next += 1
        rec = record(self.next)
        before = [len(b.got) for b in self.boxes]
        kept = self.share.add(rec, kind, self.now, asked=asked)
        assert kept
        self.kind_of[rec.lease_id] = kind
        if not asked:
            self.users[rec.lease_id] = 1
        for box, count in zip(self.boxes, before, strict=True):
            if len(box.got) > count and box.got[-1][0] is not None:
                self._handed(box.got[-1][0], "waiter")

    @rule(kind=st.sampled_from(KINDS))
    def wait(self, kind: str) -> None:
        box = Box(kind, DEPTHS[kind])
        entry, _ = self.share.use_or_wait(box.waiter)
        if entry is not None:
            self._handed(entry, "direct")
        else:
            self.boxes.append(box)

    @precondition(lambda self: self.users)
    @rule(data=st.data())
    def end_use(self, data: st.DataObject) -> None:
        lease_id = data.draw(st.sampled_from(sorted(self.users)))
        self.users[lease_id] -= 1
        if not self.users[lease_id]:
            del self.users[lease_id]
        before = [len(b.got) for b in self.boxes]
        back = self.share.done(lease_id, self.now)
        if back is not None:
            self._returned(back.lease_id)
        for box, count in zip(self.boxes, before, strict=True):
            if len(box.got) > count and box.got[-1][0] is not None:
                self._handed(box.got[-1][0], "waiter")

    @precondition(lambda self: self.next)
    @rule(n=st.integers(1, 30), spare=st.booleans())
    def coordinator_wants(self, n: int, spare: bool) -> None:
        lease_id = f"lease-{n}"
        if spare:
            back = self.share.want([], [lease_id], self.now)
        else:
            if self.share.get(lease_id) is not None:
                self.unusable.add(lease_id)
            back = self.share.want([lease_id], [], self.now)
        for gone in back:
            self._returned(gone.lease_id)

    @precondition(lambda self: self.next)
    @rule(n=st.integers(1, 30), ended=st.booleans())
    def lease_ends(self, n: int, ended: bool) -> None:
        lease_id = f"lease-{n}"
        if self.share.get(lease_id) is not None:
            self.unusable.add(lease_id)
        if ended:
            self.share.drop(lease_id)
        else:
            _, idle = self.share.revoking(lease_id)
            if idle is not None:
                self._returned(idle.lease_id)

    @rule(seconds=st.floats(0, 3))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        for back in self.share.stale(self.now, idle_s=2.0, spare_idle_s=0.05):
            self._returned(back.lease_id)

    @precondition(lambda self: self.boxes)
    @rule(data=st.data())
    def give_up(self, data: st.DataObject) -> None:
        box = data.draw(st.sampled_from(self.boxes))
        self.share.give_up(box.waiter)

    @invariant()
    def answered_at_most_once(self) -> None:
        for box in self.boxes:
            assert len(box.got) <= 1

    @invariant()
    def counts_add_up(self) -> None:
        counts = self.share.counts()
        entries = self.share.entries()
        assert counts.idle + counts.busy == len(entries)
        busy = {e.record.lease_id for e in entries if e.busy}
        assert busy <= set(self.users) | self.unusable
        for entry in entries:  # a held lease's uses are exactly those handed out
            assert entry.uses == self.users.get(entry.record.lease_id, 0)
        assert counts.queued == sum(e.uses - 1 for e in entries if e.busy)


TestShareMachine = ShareMachine.TestCase
TestShareMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_an_ask_whose_waiter_was_served_meanwhile_is_dropped() -> None:
    share = WarmShare()
    share.add(record(1), "a", now=0.0)
    assert share.busy_of("a") == 1
    box = Box("a")
    assert share.use_or_wait(box.waiter)[1]
    assert share.still_asking("a")
    share.done("lease-1", now=1.0)
    assert not share.still_asking("a")
    assert share.use_or_wait(Box("a").waiter)[1]  # counted as gone: the next one asks


def test_queue_depth_only_where_ray_runs_one_at_a_time_in_the_bundle() -> None:
    from anya_resource.core.share import queue_depth

    assert queue_depth({"cpu": 1000}, {"cpu": 1000}, 3) == 3
    assert queue_depth({"cpu": 2000}, {"cpu": 1000}, 3) == 1  # two would run at once
    assert queue_depth({"cpu": 2000, "memory": 10}, {"cpu": 1000, "memory": 10}, 3) == 3
    assert queue_depth({}, {"cpu": 1000}, 3) == 1  # nothing reserved: no queueing ahead
    assert queue_depth({"cpu": 1000}, {"cpu": 1000}, 1) == 1
    assert queue_depth({"gpu": 1000}, {"cpu": 1000}, 3) == 1


def short(share: WarmShare, n: int, kind: str = "a") -> None:
    """Lease ``n`` joins the share and has a short use (10 ms): it takes uses ahead."""
    share.add(record(n), kind, now=0.0)
    share.done(f"lease-{n}", now=0.01)


def test_a_lease_carries_uses_queued_ahead_idle_ones_first() -> None:
    share = WarmShare()
    short(share, 1)
    short(share, 2)
    first = share.use("a", depth=2, now=1.0)
    second = share.use("a", depth=2, now=1.0)
    assert first is not None and second is not None
    assert {first.record.lease_id, second.record.lease_id} == {"lease-1", "lease-2"}
    for _ in range(2):
        queued = share.use("a", depth=2)
        assert queued is not None and queued.uses == 2
    assert share.use("a", depth=2) is None  # both full
    assert share.counts().queued == 2
    box = Box("a", depth=2)
    assert share.use_or_wait(box.waiter)[0] is None
    share.done("lease-1", now=1.0)
    assert box.got and box.got[0][0] is not None  # the room went to the waiter


def test_a_wanted_lease_takes_no_new_use_and_goes_back_when_its_queue_ran_out() -> None:
    share = WarmShare()
    short(share, 1)
    assert share.use("a", depth=3, now=1.0) is not None
    assert share.use("a", depth=3) is not None
    assert share.want(["lease-1"], [], now=0.5) == []  # busy: not now
    assert share.use("a", depth=3) is None
    assert share.done("lease-1", now=1.0) is None  # one use still in it
    back = share.done("lease-1", now=1.1)
    assert back is not None and back.lease_id == "lease-1"


def test_a_lease_takes_uses_ahead_only_while_its_uses_are_short() -> None:
    share = WarmShare()
    share.add(record(1), "a", now=0.0)  # its first use: how long it runs is not known yet
    assert share.use("a", depth=4, now=0.0) is None  # so nothing is queued behind it
    share.done("lease-1", now=0.5)  # it ran 0.5 s: a long one
    assert share.use("a", depth=4, now=1.0) is not None
    assert share.use("a", depth=4, now=1.0) is None  # long uses: one at a time
    share.done("lease-1", now=1.01)  # a short one now
    assert share.use("a", depth=4, now=2.0) is not None
    assert share.use("a", depth=4, now=2.0) is not None  # queued ahead again


def test_a_grant_serves_one_waiter_then_as_many_as_its_depth_once_short() -> None:
    share = WarmShare()
    boxes = [Box("a", depth=2) for _ in range(4)]
    for box in boxes:
        share.use_or_wait(box.waiter)
    share.add(record(1), "a", now=0.0, asked=True)
    assert [bool(b.got) for b in boxes] == [True, False, False, False]  # pace unknown
    share.done("lease-1", now=0.01)  # short: the next one, and one queued behind it
    assert [bool(b.got) for b in boxes] == [True, True, True, False]
