"""The acquire reply on the wire: bytes of plain values, and the same record back."""

from __future__ import annotations

import pickle
import pickletools

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


def test_every_field_comes_back() -> None:
    plain = record(
        state=LeaseState.ACTIVE,
        revoke_reason=None,
        revoke_deadline=None,
        pools={},
        holder=Holder(),
        idempotency_key=None,
    )
    for original in (record(), plain):
        wire = lease_to_wire(original)
        assert isinstance(wire, bytes)  # Ray passes bytes through without pickling them
        back = lease_from_wire(wire)
        assert back == original
        assert isinstance(back.state, LeaseState)
        assert isinstance(back.holder, Holder)


def test_only_plain_values_are_pickled() -> None:
    """No class is named in the payload: nothing to import or trust on the client."""
    for opcode, _, _ in pickletools.genops(lease_to_wire(record())):
        assert opcode.name not in ("GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "INST", "OBJ")
    assert isinstance(pickle.loads(lease_to_wire(record())), tuple)


def test_the_rebuilt_record_owns_its_dicts() -> None:
    original = record()
    back = lease_from_wire(lease_to_wire(original))
    back.resources["cpu"] = 0
    assert original.resources["cpu"] == 10
