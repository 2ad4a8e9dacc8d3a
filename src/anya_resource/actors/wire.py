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

from anya_resource.core import LeaseRecord


def lease_to_wire(lease: LeaseRecord) -> bytes:
    """``lease`` as a pickled tuple of plain values (str, int, float, bool, None, dict)."""
    return pickle.dumps(lease.fields(), protocol=pickle.HIGHEST_PROTOCOL)


def lease_from_wire(wire: bytes) -> LeaseRecord:
    """The record ``lease_to_wire`` was made from."""
    return LeaseRecord.from_fields(pickle.loads(wire))


__all__ = ["lease_from_wire", "lease_to_wire"]
