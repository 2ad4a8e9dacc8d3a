"""What ``acquire`` sends back over the wire: a flat tuple, not a pickled ``LeaseRecord``.

A dataclass goes through Ray's pickle path on both sides of every acquire (with its
nested ``Holder`` and ``LeaseState``); a tuple of plain values goes through msgpack.
Measured end to end through Ray on 2 cores, that is ~0.5-0.7 ms of CPU per acquire,
a fifth of a raw round trip. The tuple carries every field, in the dataclass's order,
so the client rebuilds an equal record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from anya_resource.core import Holder, LeaseRecord, LeaseState


def lease_to_wire(lease: LeaseRecord) -> tuple[Any, ...]:
    """``lease`` as a tuple of plain values (what msgpack carries without pickle)."""
    holder = lease.holder
    return (
        lease.lease_id,
        lease.request_id,
        lease.token,
        lease.fencing_token,
        lease.node_id,
        lease.resources,
        lease.pools,
        lease.priority,
        lease.priority_name,
        lease.tenant,
        lease.ttl,
        lease.granted_at,
        lease.expires_at,
        lease.preemptible,
        (
            holder.pid,
            holder.create_time,
            holder.node_id,
            holder.job_id,
            holder.worker_id,
            holder.actor_id,
        ),
        lease.detached,
        lease.idempotency_key,
        lease.borrowed,
        lease.state.value,
        lease.revoke_reason,
        lease.revoke_deadline,
    )


def lease_from_wire(wire: Sequence[Any]) -> LeaseRecord:
    """The record ``lease_to_wire`` was made from (msgpack may turn tuples into lists)."""
    (
        lease_id,
        request_id,
        token,
        fencing_token,
        node_id,
        resources,
        pools,
        priority,
        priority_name,
        tenant,
        ttl,
        granted_at,
        expires_at,
        preemptible,
        holder,
        detached,
        idempotency_key,
        borrowed,
        state,
        revoke_reason,
        revoke_deadline,
    ) = wire
    return LeaseRecord(
        lease_id=lease_id,
        request_id=request_id,
        token=token,
        fencing_token=fencing_token,
        node_id=node_id,
        resources=dict(resources),
        pools=dict(pools),
        priority=priority,
        priority_name=priority_name,
        tenant=tenant,
        ttl=ttl,
        granted_at=granted_at,
        expires_at=expires_at,
        preemptible=preemptible,
        holder=Holder(*holder),
        detached=detached,
        idempotency_key=idempotency_key,
        borrowed=borrowed,
        state=LeaseState(state),
        revoke_reason=revoke_reason,
        revoke_deadline=revoke_deadline,
    )


__all__ = ["lease_from_wire", "lease_to_wire"]
