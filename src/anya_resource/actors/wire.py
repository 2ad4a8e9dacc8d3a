"""What ``acquire`` sends back over the wire: bytes, not a ``LeaseRecord`` for Ray to pickle.

Ray serialises a return value by its type. A dataclass (or a tuple: Ray's msgpack runs
with strict types) goes through its cloudpickle path on both sides; ``bytes`` go as they
are (Ray's "raw" objects, ~1 µs). So the coordinator pickles a flat tuple of the
record's plain fields itself (the C pickler, a few µs) and the client unpickles it. On
2 shared cores that took ~0.1 ms off both ends of every acquire, and the dataclass path
cost ~0.5 ms more (measured once with a scratch harness, not a shipped command:
docs/performance.md, issue 3). The tuple carries every field, in the dataclass's order,
so the client rebuilds an equal record.
"""

from __future__ import annotations

import pickle
from typing import Any

from anya_resource.core import Holder, LeaseRecord, LeaseState


def lease_to_wire(lease: LeaseRecord) -> bytes:
    """``lease`` as a pickled tuple of plain values (str, int, float, bool, None, dict)."""
    holder = lease.holder
    fields = (
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
    return pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)


def lease_from_wire(wire: bytes) -> LeaseRecord:
    """The record ``lease_to_wire`` was made from."""
    fields: tuple[Any, ...] = pickle.loads(wire)
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
    ) = fields
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
