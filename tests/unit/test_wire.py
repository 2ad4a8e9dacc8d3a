"""The acquire reply on the wire: plain values only, and the same record back."""

from __future__ import annotations

import msgpack

from anya_resource.actors.wire import lease_from_wire, lease_to_wire
from anya_resource.core import Holder, LeaseRecord, LeaseState


def record(**changes: object) -> LeaseRecord:
    fields: dict[str, object] = {
        "lease_id": "L-00000001000000000007",
        "request_id": "R-42",
        "token": "secret-token",
        "fencing_token": (3 << 40) | 7,
        "node_id": "ab" * 28,
        "resources": {"memory": 2 * 1024**3, "cpu": 10},
        "pools": {"postgres": 1},
        "priority": 200,
        "priority_name": "high",
        "tenant": "ml",
        "ttl": 60.0,
        "granted_at": 1_700_000_000.25,
        "expires_at": 1_700_000_060.25,
        "preemptible": True,
        "holder": Holder(
            pid=123,
            create_time=1_699_999_000.5,
            node_id="ab" * 28,
            job_id="01000000",
            worker_id="cd" * 28,
            actor_id=None,
        ),
        "detached": True,
        "idempotency_key": "k-1",
        "borrowed": True,
        "state": LeaseState.REVOKING,
        "revoke_reason": "preempted by R-43",
        "revoke_deadline": 1_700_000_005.0,
    }
    fields.update(changes)
    return LeaseRecord(**fields)  # type: ignore[arg-type]


def test_every_field_comes_back_through_msgpack() -> None:
    """Msgpack (Ray's path for plain values) needs no pickle fallback and loses nothing."""
    plain = record(
        state=LeaseState.ACTIVE,
        revoke_reason=None,
        revoke_deadline=None,
        pools={},
        holder=Holder(),
        idempotency_key=None,
    )
    for original in (record(), plain):
        packed = msgpack.packb(lease_to_wire(original))  # TypeError if pickle were needed
        back = lease_from_wire(msgpack.unpackb(packed))
        assert back == original
        assert isinstance(back.state, LeaseState)
        assert isinstance(back.holder, Holder)


def test_the_rebuilt_record_owns_its_dicts() -> None:
    original = record()
    back = lease_from_wire(lease_to_wire(original))
    back.resources["cpu"] = 0
    assert original.resources["cpu"] == 10
