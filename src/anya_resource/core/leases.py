"""The lease table: ids, secret tokens, fencing tokens, expiry and indexes.

Fencing tokens are ``epoch << 40 | sequence``: the coordinator's epoch goes up at
every restart (it is kept outside the actor), so tokens keep increasing across
restarts without the sequence having to survive.
"""

from __future__ import annotations

import heapq
import hmac
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from anya_resource.core.model import Holder, LeaseRecord, ReclaimReason
from anya_resource.errors import NotLeaseHolder

EPOCH_SHIFT = 40
ENDED_MEMORY = 100_000  # how many ended leases we remember, for idempotent release


TOKEN_BYTES = 24  # 192 bits
_TOKENS_PER_DRAW = 256


class _TokenSource:
    """Secret tokens cut from one ``secrets.token_bytes`` draw per 256 tokens.

    Every token is still 192 bits from the OS's CSPRNG; drawing them in batches
    saves a system call per grant. A forked child drops the inherited batch, so
    parent and child never hand out the same bytes.
    """

    def __init__(self) -> None:
        self._batch = b""
        self._offset = 0

    def reset(self) -> None:
        self._batch, self._offset = b"", 0

    def __call__(self) -> str:
        offset = self._offset
        if offset + TOKEN_BYTES > len(self._batch):
            self._batch, offset = secrets.token_bytes(TOKEN_BYTES * _TOKENS_PER_DRAW), 0
        self._offset = offset + TOKEN_BYTES
        return self._batch[offset : offset + TOKEN_BYTES].hex()


new_token = _TokenSource()
"""A secret of 192 bits, as 48 hex digits."""
os.register_at_fork(after_in_child=new_token.reset)


@dataclass(slots=True)
class EndedLease:
    token: str
    reason: ReclaimReason
    revoke_reason: str | None


class LeaseTable:
    def __init__(self, epoch: int, token_factory: Callable[[], str] = new_token) -> None:
        if epoch < 0 or epoch >= 2**22:
            raise ValueError(f"epoch: got {epoch}, expected 0 <= epoch < 2**22")
        self.epoch = epoch
        self._sequence = 0
        self._token_factory = token_factory
        self.active: dict[str, LeaseRecord] = {}
        self.by_node: dict[str, dict[str, LeaseRecord]] = {}
        self.by_holder: dict[str, set[str]] = {}
        self.by_job: dict[str, set[str]] = {}
        self.by_request: dict[str, str] = {}
        self.preemptible_count = 0  # none: no preemption search is worth starting
        # node -> its preemptible leases: a preemption search looks at these only
        self.preemptible_by_node: dict[str, dict[str, LeaseRecord]] = {}
        self.ended: OrderedDict[str, EndedLease] = OrderedDict()
        self._expiry: list[tuple[float, str]] = []
        self.highest_fencing = epoch << EPOCH_SHIFT

    def __len__(self) -> int:
        return len(self.active)

    def __iter__(self) -> Iterator[LeaseRecord]:
        return iter(self.active.values())

    def next_ids(self) -> tuple[str, int, str]:
        """A fresh ``(lease_id, fencing_token, token)``."""
        self._sequence += 1
        fencing = max(self.highest_fencing + 1, (self.epoch << EPOCH_SHIFT) | self._sequence)
        self.highest_fencing = fencing
        return f"lease-{fencing:x}", fencing, self._token_factory()

    def add(self, lease: LeaseRecord) -> None:
        if lease.lease_id in self.active:
            raise ValueError(f"lease id {lease.lease_id} is already active")
        self.active[lease.lease_id] = lease
        self.by_node.setdefault(lease.node_id, {})[lease.lease_id] = lease
        self._index_holder(lease)
        self.by_request[lease.request_id] = lease.lease_id
        if lease.preemptible:
            self.preemptible_count += 1
            self.preemptible_by_node.setdefault(lease.node_id, {})[lease.lease_id] = lease
        heapq.heappush(self._expiry, (lease.expires_at, lease.lease_id))
        self.highest_fencing = max(self.highest_fencing, lease.fencing_token)

    def remove(self, lease_id: str, reason: ReclaimReason) -> LeaseRecord:
        lease = self.active.pop(lease_id)
        node_leases = self.by_node[lease.node_id]
        del node_leases[lease_id]
        if not node_leases:
            del self.by_node[lease.node_id]
        self.by_request.pop(lease.request_id, None)
        if lease.preemptible:
            self.preemptible_count -= 1
            preemptible = self.preemptible_by_node[lease.node_id]
            del preemptible[lease_id]
            if not preemptible:
                del self.preemptible_by_node[lease.node_id]
        _discard(self.by_holder, lease.holder.key, lease_id)
        _discard(self.by_job, lease.holder.job_id, lease_id)
        self.ended[lease_id] = EndedLease(lease.token, reason, lease.revoke_reason)
        if len(self.ended) > ENDED_MEMORY:
            self.ended.popitem(last=False)
        return lease

    def _index_holder(self, lease: LeaseRecord) -> None:
        # A detached lease outlives its holder and its job: only its TTL ends it.
        if lease.detached:
            return
        holder_key = lease.holder.key
        if holder_key is not None:
            self.by_holder.setdefault(holder_key, set()).add(lease.lease_id)
        if lease.holder.job_id is not None:
            self.by_job.setdefault(lease.holder.job_id, set()).add(lease.lease_id)

    def rebind(self, lease: LeaseRecord, holder: Holder) -> None:
        """Another process holds ``lease`` from now on (a task took it over)."""
        _discard(self.by_holder, lease.holder.key, lease.lease_id)
        _discard(self.by_job, lease.holder.job_id, lease.lease_id)
        lease.holder = holder
        self._index_holder(lease)

    def extend(self, lease: LeaseRecord, expires_at: float) -> None:
        lease.expires_at = expires_at
        heapq.heappush(self._expiry, (expires_at, lease.lease_id))

    def expired(self, now: float) -> list[LeaseRecord]:
        """Active leases whose TTL ran out (stale heap entries of renewals skipped)."""
        due: list[LeaseRecord] = []
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, lease_id = heapq.heappop(self._expiry)
            lease = self.active.get(lease_id)
            # Two renewals to the same instant leave equal entries; they pop one after
            # the other, and the lease must be due once.
            if (
                lease is not None
                and lease.expires_at == expires_at
                and (not due or due[-1] is not lease)
            ):
                due.append(lease)
        return due


def check_token(lease_id: str, expected: str, presented: object) -> None:
    if not isinstance(presented, str) or not hmac.compare_digest(expected, presented):
        raise NotLeaseHolder(
            f"lease {lease_id}: the token presented does not match; expected the secret "
            "token returned with the grant"
        )


def _discard(index: dict[str, set[str]], key: str | None, lease_id: str) -> None:
    if key is None:
        return
    members = index.get(key)
    if members is not None:
        members.discard(lease_id)
        if not members:
            del index[key]
