"""The lease table: ids, secret tokens, fencing tokens, expiry and indexes.

Fencing tokens are ``epoch << 40 | sequence``: the coordinator's epoch goes up at
every restart (it is kept outside the actor), so tokens keep increasing across
restarts without the sequence having to survive.
"""

from __future__ import annotations

import heapq
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

from anya_resource.core.model import Holder, LeaseRecord, ReclaimReason
from anya_resource.errors import InvalidRequest, LeaseExpired, LeaseRevoked, NotLeaseHolder

EPOCH_SHIFT = 40
ENDED_MEMORY = 100_000  # how many ended leases we remember, for idempotent release


TOKEN_BYTES = 24  # 192 bits
SECRET_BYTES = 32
LEASE_ID_PREFIX = "lease-"
BUDGET_KEY_PREFIX = "budget/"  # a budget key is the token of this prefix and the lease id


def new_secret() -> bytes:
    """A cluster secret: the coordinator keeps one in Ray's GCS, with the epoch."""
    return secrets.token_bytes(SECRET_BYTES)


class TokenMinter:
    """A lease's secret token is a MAC of its id under the cluster's secret.

    So a token proves, by itself, that this cluster issued the lease: after a restart
    the coordinator needs no copy of any token (none is written to the journal), a
    record nobody was granted cannot be made up without the secret, and a release of a
    lease that ended before the restart is recognised as genuine and answered as the
    no-op it is. The lease id embeds the fencing token, so that is covered as well.
    """

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise ValueError("secret: expected at least 16 random bytes")
        self._secret = secret

    def mint(self, lease_id: str) -> str:
        return hmac.digest(self._secret, lease_id.encode(), "sha256")[:TOKEN_BYTES].hex()

    def budget_key(self, lease_id: str) -> str:
        """What lets a job draw from the budget ``lease_id`` (core/budgets.py).

        Not the lease's token: a job's processes (and whoever reads its environment,
        shown by Ray's dashboard) may draw from the budget with it, never release it.
        """
        return self.mint(BUDGET_KEY_PREFIX + lease_id)

    def genuine(self, lease_id: str, presented: object) -> bool:
        """Whether ``presented`` is the token this cluster gave ``lease_id``."""
        return isinstance(presented, str) and hmac.compare_digest(self.mint(lease_id), presented)


@dataclass(slots=True)
class EndedLease:
    token: str
    reason: ReclaimReason
    revoke_reason: str | None


class LeaseTable:
    def __init__(self, epoch: int, minter: TokenMinter) -> None:
        if epoch < 0 or epoch >= 2**22:
            raise ValueError(f"epoch: got {epoch}, expected 0 <= epoch < 2**22")
        self.epoch = epoch
        self._sequence = 0
        self.minter = minter
        self.active: dict[str, LeaseRecord] = {}
        self.by_node: dict[str, dict[str, LeaseRecord]] = {}
        self.by_holder: dict[str, set[str]] = {}
        # node -> holder key -> holder: what that node's agent must watch for death
        self.holders_by_node: dict[str, dict[str, Holder]] = {}
        # Restored after a restart and not yet claimed by their holder (see recovery.md).
        self.unconfirmed: set[str] = set()
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
        lease_id = f"{LEASE_ID_PREFIX}{fencing:x}"
        return lease_id, fencing, self.minter.mint(lease_id)

    def add(self, lease: LeaseRecord) -> None:
        if lease.lease_id in self.active:
            raise ValueError(f"lease id {lease.lease_id} is already active")
        self.active[lease.lease_id] = lease
        lease_id = lease.lease_id
        # A gang lease is found under every node it holds something on.
        nodes = lease.nodes() if lease.bundles is not None else (lease.node_id,)
        for node_id in nodes:
            self.by_node.setdefault(node_id, {})[lease_id] = lease
        self._index_holder(lease)
        self.by_request[lease.request_id] = lease_id
        if lease.preemptible:
            self.preemptible_count += 1
            for node_id in nodes:
                self.preemptible_by_node.setdefault(node_id, {})[lease_id] = lease
        heapq.heappush(self._expiry, (lease.expires_at, lease.lease_id))
        self.highest_fencing = max(self.highest_fencing, lease.fencing_token)

    def remove(self, lease_id: str, reason: ReclaimReason) -> LeaseRecord:
        lease = self.active.pop(lease_id)
        nodes = lease.nodes() if lease.bundles is not None else (lease.node_id,)
        for node_id in nodes:
            _drop(self.by_node, node_id, lease_id)
        self.by_request.pop(lease.request_id, None)
        if lease.preemptible:
            self.preemptible_count -= 1
            for node_id in nodes:
                _drop(self.preemptible_by_node, node_id, lease_id)
        self._unindex_holder(lease)
        self.unconfirmed.discard(lease_id)
        self.ended[lease_id] = EndedLease(lease.token, reason, lease.revoke_reason)
        if len(self.ended) > ENDED_MEMORY:
            self.ended.popitem(last=False)
        return lease

    def _index_holder(self, lease: LeaseRecord) -> None:
        # A detached lease outlives its holder and its job: only its TTL ends it.
        if lease.detached:
            return
        holder = lease.holder
        holder_key = holder.key
        if holder_key is not None:
            self.by_holder.setdefault(holder_key, set()).add(lease.lease_id)
            if holder.node_id is not None:
                self.holders_by_node.setdefault(holder.node_id, {})[holder_key] = holder
        if holder.job_id is not None:
            self.by_job.setdefault(holder.job_id, set()).add(lease.lease_id)

    def _unindex_holder(self, lease: LeaseRecord) -> None:
        holder = lease.holder
        key = holder.key
        if _discard(self.by_holder, key, lease.lease_id) and holder.node_id is not None:
            watched = self.holders_by_node.get(holder.node_id)
            if watched is not None:
                watched.pop(key or "", None)
                if not watched:
                    del self.holders_by_node[holder.node_id]
        _discard(self.by_job, holder.job_id, lease.lease_id)

    def held_with(self, lease_id: object, token: object) -> LeaseRecord | None:
        """The active lease ``lease_id`` if ``token`` is its own; None if it ended.

        Raises ``NotLeaseHolder`` for a token this cluster never gave ``lease_id``: a
        lease that ended, here or before a restart, is still recognised by its token.
        """
        if not isinstance(lease_id, str):
            raise InvalidRequest(f"lease_id: got {lease_id!r}, expected a lease id string")
        lease = self.active.get(lease_id)
        if lease is not None:
            check_token(lease_id, lease.token, token)
            return lease
        if not self.minter.genuine(lease_id, token):
            raise NotLeaseHolder(
                f"lease {lease_id}: not a lease this cluster issued with that token; "
                "expected the id and secret token returned with a grant"
            )
        return None

    def raise_ended(self, lease_id: str) -> NoReturn:
        """Say how the genuine lease ``lease_id``, no longer active, ended."""
        ended = self.ended.get(lease_id)
        if ended is None:
            raise LeaseExpired(
                f"lease {lease_id} is no longer active (it ended before the coordinator "
                "restarted); acquire anew"
            )
        if ended.reason in (ReclaimReason.EXPIRED, ReclaimReason.RELEASED):
            raise LeaseExpired(f"lease {lease_id} ended ({ended.reason.value}); acquire anew")
        raise LeaseRevoked(
            f"lease {lease_id} was taken back: {ended.revoke_reason or ended.reason.value}"
        )

    def rebind(self, lease: LeaseRecord, holder: Holder) -> None:
        """Another process holds ``lease`` from now on (a task took it over)."""
        self._unindex_holder(lease)
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


def _drop(index: dict[str, dict[str, LeaseRecord]], node_id: str, lease_id: str) -> None:
    """Drop ``lease_id`` from ``index[node_id]``, and the node's entry once it is empty."""
    leases = index[node_id]
    del leases[lease_id]
    if not leases:
        del index[node_id]


def _discard(index: dict[str, set[str]], key: str | None, lease_id: str) -> bool:
    """Drop ``lease_id`` from ``index[key]``; True when ``key`` has nothing left."""
    if key is None:
        return False
    members = index.get(key)
    if members is None:
        return False
    members.discard(lease_id)
    if members:
        return False
    del index[key]
    return True
