"""Idempotency keys: a retried request gets the first one's outcome, never a second grant.

Each key remembers what became of its request: still waiting (its request id), granted
(its lease id) or refused (the reason). The most recent ``KEY_MEMORY`` keys are kept.
A cancel that came before its request is remembered as a refusal, and that one is
written in the journal (``refusals``): the request may still reach the next coordinator.
"""

from __future__ import annotations

from anya_resource.core.leases import LeaseTable
from anya_resource.core.model import Decision, Grant, Reject, RejectReason
from anya_resource.errors import LeaseExpired

KEY_MEMORY = 100_000  # idempotency keys remembered
CANCELLED_EARLY = "cancelled:cancelled before it arrived"

Known = tuple[str, str]  # ("request" | "lease" | "rejected", request id | lease id | reason)


class KeyMemory:
    __slots__ = ("_keys",)

    def __init__(self) -> None:
        self._keys: dict[str, Known] = {}

    def get(self, key: str) -> Known | None:
        return self._keys.get(key)

    def remember(self, key: str, kind: str, ident: str) -> None:
        keys = self._keys
        keys.pop(key, None)
        keys[key] = (kind, ident)
        if len(keys) > KEY_MEMORY:
            del keys[next(iter(keys))]

    def refused(self, key: str, reason: RejectReason, message: str) -> None:
        self.remember(key, "rejected", f"{reason.value}:{message}")

    def replay(self, key: str, known: Known, leases: LeaseTable) -> tuple[str, list[Decision]]:
        """The first request's id and outcome, for a retry of it."""
        kind, ident = known
        if kind == "request":
            return ident, []
        if kind == "lease":
            lease = leases.active.get(ident)
            if lease is not None:
                leases.unconfirmed.discard(lease.lease_id)  # its caller has it now
                return lease.request_id, [Grant(lease.request_id, lease, 0.0)]
            raise LeaseExpired(f"idempotency_key {key!r}: its lease {ident} has already ended")
        reason, _, message = ident.partition(":")
        return f"replay-{key}", [Reject(f"replay-{key}", RejectReason(reason), message)]

    def refusals(self) -> dict[str, str]:
        """Keys refused before their request came: kept in the journal."""
        return {
            key: outcome
            for key, (kind, outcome) in self._keys.items()
            if kind == "rejected" and outcome.startswith("cancelled:cancelled before")
        }
