"""The journal: what the coordinator must not forget, as it is kept in Ray's GCS store.

The scheduler notes every change to the set of leases as an entry (``Granted``,
``Ended``, ``Rebound``) and every cancel that arrived before its request (``Refused``).
The coordinator writes the entries of one event-loop turn as one *segment* (a group
commit) and tells nobody of a decision before the segment holding it is written
(docs/architecture.md, "Recovery"). So what a restarted coordinator reads back is
exactly the leases its predecessor had at the end of some commit: a confirmed release
is never undone, a lease that anybody was told of is never missing, and nothing is
counted twice, whatever the timing of the crash.

Layout, one generation at a time (``epoch.n``: a new coordinator starts generation
``epoch.0``; a compaction moves to ``n + 1``):

* ``journal/snap/<epoch>.<n>``: every lease and remembered refusal at the start of the
  generation (one value, written at once: a torn snapshot does not exist);
* ``journal/seg/<epoch>.<n>/<seq>``: the commits since, in order.

Recovery reads the newest snapshot and the segments of its generation, in order up to
the first gap; every other key is garbage (an older generation, or a zombie of an
older epoch still writing after its successor took over), deleted once the new
coordinator's own snapshot is written.

Nothing here does I/O: ``actors/store.py`` reads and writes the keys.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from anya_resource.core.model import Holder, LeaseRecord, LeaseState

PREFIX = "journal/"
SNAPSHOT_PREFIX = PREFIX + "snap/"
SEGMENT_PREFIX = PREFIX + "seg/"
FORMAT = 1
REFUSALS_KEPT = 100_000  # as many as the scheduler remembers idempotency keys


class Granted(NamedTuple):
    lease: LeaseRecord  # encoded when its segment is written, without the token


class Ended(NamedTuple):
    lease_id: str


class Rebound(NamedTuple):
    lease_id: str
    holder: Holder


class Revoking(NamedTuple):
    """A revocation in progress: after a restart the holder still has until ``deadline``."""

    lease_id: str
    reason: str
    deadline: float


class Extended(NamedTuple):
    """A renewal past the lease's own TTL: a restart must not cut it short."""

    lease_id: str
    expires_at: float


class Reserved(NamedTuple):
    """The Ray placement group (its id, hex) that reserves a lease was made."""

    lease_id: str
    placement_group: str


class Refused(NamedTuple):
    """A cancel that came before its request: the request is refused when it arrives."""

    key: str
    outcome: str


Entry = Granted | Ended | Rebound | Revoking | Extended | Reserved | Refused


@dataclass(frozen=True, slots=True, order=True)
class Generation:
    epoch: int
    number: int

    def snapshot_key(self) -> str:
        return f"{SNAPSHOT_PREFIX}{self.epoch:010d}.{self.number:010d}"

    def segment_prefix(self) -> str:
        return f"{SEGMENT_PREFIX}{self.epoch:010d}.{self.number:010d}/"

    def segment_key(self, seq: int) -> str:
        return f"{self.segment_prefix()}{seq:012d}"

    def next(self) -> Generation:
        return Generation(self.epoch, self.number + 1)


@dataclass
class Recovered:
    """What a restarted coordinator reads back: leases (no tokens) and refusals."""

    leases: dict[str, LeaseRecord] = field(default_factory=dict)
    refused: OrderedDict[str, str] = field(default_factory=OrderedDict)
    highest_fencing: int = 0
    garbage: list[str] = field(default_factory=list)  # keys to delete once superseded

    def apply(self, entries: Iterable[list[Any]]) -> None:
        for entry in entries:
            kind = entry[0]
            if kind == "g":
                lease = LeaseRecord.from_fields(entry[1])
                self.leases[lease.lease_id] = lease
                self.highest_fencing = max(self.highest_fencing, lease.fencing_token)
            elif kind == "e":
                self.leases.pop(entry[1], None)
            elif kind == "h":
                rebound = self.leases.get(entry[1])
                if rebound is not None:
                    rebound.holder = Holder(*entry[2])
            elif kind == "v":
                revoking = self.leases.get(entry[1])
                if revoking is not None:
                    revoking.state = LeaseState.REVOKING
                    revoking.revoke_reason = entry[2]
                    revoking.revoke_deadline = entry[3]
            elif kind == "x":
                extended = self.leases.get(entry[1])
                if extended is not None:
                    extended.expires_at = max(extended.expires_at, entry[2])
            elif kind == "p":
                reserved = self.leases.get(entry[1])
                if reserved is not None:
                    reserved.placement_group = entry[2]
            elif kind == "r":
                self.refused.pop(entry[1], None)
                self.refused[entry[1]] = entry[2]
                while len(self.refused) > REFUSALS_KEPT:
                    self.refused.popitem(last=False)
            else:
                raise ValueError(f"journal: unknown entry kind {kind!r}")


def _record(lease: LeaseRecord) -> list[Any]:
    fields = list(lease.fields())
    fields[2] = ""  # the token is a MAC of the id: never written out (core/leases.py)
    return fields


def _encode_entry(entry: Entry) -> list[Any]:
    if isinstance(entry, Granted):
        return ["g", _record(entry.lease)]
    if isinstance(entry, Ended):
        return ["e", entry.lease_id]
    if isinstance(entry, Rebound):
        h = entry.holder
        return [
            "h",
            entry.lease_id,
            [h.pid, h.create_time, h.node_id, h.job_id, h.worker_id, h.actor_id],
        ]
    if isinstance(entry, Revoking):
        return ["v", entry.lease_id, entry.reason, entry.deadline]
    if isinstance(entry, Extended):
        return ["x", entry.lease_id, entry.expires_at]
    if isinstance(entry, Reserved):
        return ["p", entry.lease_id, entry.placement_group]
    return ["r", entry.key, entry.outcome]


def net(entries: list[Entry]) -> list[Entry]:
    """``entries`` without leases granted and ended within them: nobody needs to know.

    A lease that came and went between two commits costs the store nothing.
    """
    ended = {e.lease_id for e in entries if isinstance(e, Ended)}
    if not ended:
        return entries
    born = {e.lease.lease_id for e in entries if isinstance(e, Granted)} & ended
    if not born:
        return entries
    return [
        e
        for e in entries
        if not (
            (isinstance(e, Granted) and e.lease.lease_id in born)
            or (
                isinstance(e, Ended | Rebound | Revoking | Extended | Reserved)
                and e.lease_id in born
            )
        )
    ]


def encode_segment(entries: list[Entry]) -> bytes:
    return json.dumps([FORMAT, [_encode_entry(e) for e in entries]], separators=(",", ":")).encode()


def encode_snapshot(
    leases: Iterable[LeaseRecord], refused: Mapping[str, str], highest_fencing: int
) -> bytes:
    body = {
        "format": FORMAT,
        "highest_fencing": highest_fencing,
        "leases": [_record(lease) for lease in leases],
        "refused": [[key, outcome] for key, outcome in refused.items()],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _decode(blob: bytes, what: str) -> Any:
    try:
        return json.loads(blob)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"journal: {what} is not valid JSON: {exc}") from None


def _generation(text: str) -> Generation | None:
    epoch, dot, number = text.partition(".")
    if not dot or not epoch.isdigit() or not number.isdigit():
        return None
    return Generation(int(epoch), int(number))


def newest_snapshot(keys: Iterable[str]) -> Generation | None:
    generations = [
        g
        for key in keys
        if key.startswith(SNAPSHOT_PREFIX) and (g := _generation(key[len(SNAPSHOT_PREFIX) :]))
    ]
    return max(generations, default=None)


def recover(blobs: Mapping[str, bytes]) -> tuple[Recovered, Generation | None]:
    """Rebuild the leases from every journal key and value; and the generation read."""
    recovered = Recovered()
    generation = newest_snapshot(blobs)
    keep: set[str] = set()
    if generation is not None:
        snapshot_key = generation.snapshot_key()
        keep.add(snapshot_key)
        body = _decode(blobs[snapshot_key], snapshot_key)
        if body.get("format") != FORMAT:
            raise ValueError(f"journal: {snapshot_key} has format {body.get('format')!r}")
        recovered.apply(["g", fields] for fields in body["leases"])
        recovered.apply(["r", key, outcome] for key, outcome in body["refused"])
        recovered.highest_fencing = max(recovered.highest_fencing, int(body["highest_fencing"]))
        prefix = generation.segment_prefix()
        seqs = sorted(
            int(key[len(prefix) :])
            for key in blobs
            if key.startswith(prefix) and key[len(prefix) :].isdigit()
        )
        for expected, seq in enumerate(seqs):
            if seq != expected:
                break  # a gap: what follows was never acknowledged to anybody
            key = generation.segment_key(seq)
            keep.add(key)
            version, entries = _decode(blobs[key], key)
            if version != FORMAT:
                raise ValueError(f"journal: {key} has format {version!r}")
            recovered.apply(entries)
    recovered.garbage = sorted(k for k in blobs if k.startswith(PREFIX) and k not in keep)
    return recovered, generation


class Write(NamedTuple):
    """One value to put in the store; ``garbage``: keys to delete once it is written."""

    ticket: int
    key: str
    blob: bytes
    garbage: tuple[str, ...] = ()


COMPACT_AFTER_SEGMENTS = 1000
COMPACT_AFTER_BYTES = 4 << 20


class Commits:
    """The group commit, without I/O: what to write next, and what waits for it.

    Entries are staged as the scheduler makes them. ``barrier()`` is the ticket that must
    be written before anything decided so far may be told to anybody; ``cut()`` takes
    everything staged as one write (only one write is in flight at a time, so the store
    holds them in order), and ``written(ticket)`` says it is durable. A cut after many
    segments writes a snapshot of the live state instead (the live state *is* what was
    committed plus what is staged, since every change to it is staged as it is made),
    and starts a new generation: recovery then reads one snapshot and few segments.
    """

    def __init__(self, generation: Generation, snapshot: Callable[[], bytes]) -> None:
        self.generation = generation
        self._snapshot = snapshot
        self.staged: list[Entry] = []
        self._seq = 0
        self._segment_bytes = 0
        self._last_ticket = 0
        self.committed = 0
        self.writing: int | None = None
        self._compact = False

    def stage(self, entries: list[Entry]) -> None:
        if entries:
            self.staged.extend(entries)

    def barrier(self) -> int:
        if self.staged:
            return self._last_ticket + 1
        return self.writing if self.writing is not None else self.committed

    def start(self, garbage: tuple[str, ...] = ()) -> Write:
        """The new generation's first snapshot: written before anything is granted."""
        self._last_ticket += 1
        self.writing = self._last_ticket
        self.staged = []
        return Write(self.writing, self.generation.snapshot_key(), self._snapshot(), garbage)

    def cut(self) -> Write | None:
        """The next write, or None (one in flight already, or nothing to write)."""
        if self.writing is not None or not self.staged:
            return None
        entries, self.staged = net(self.staged), []
        self._last_ticket += 1
        ticket = self._last_ticket
        if not entries:
            self.committed = ticket  # came and went: durably, nothing happened
            return None
        self.writing = ticket
        if self._compact:
            self._compact = False
            old = self.generation
            self.generation = old.next()
            self._seq = self._segment_bytes = 0
            garbage = (old.snapshot_key(), old.segment_prefix())
            return Write(ticket, self.generation.snapshot_key(), self._snapshot(), garbage)
        blob = encode_segment(entries)
        key = self.generation.segment_key(self._seq)
        self._seq += 1
        self._segment_bytes += len(blob)
        return Write(ticket, key, blob)

    def written(self, ticket: int) -> None:
        if ticket != self.writing:
            raise ValueError(f"journal: ticket {ticket} was not being written")
        self.writing = None
        self.committed = ticket
        if self._seq >= COMPACT_AFTER_SEGMENTS or self._segment_bytes >= COMPACT_AFTER_BYTES:
            self._compact = True


__all__ = [
    "Commits",
    "Ended",
    "Entry",
    "Extended",
    "Generation",
    "Granted",
    "Rebound",
    "Recovered",
    "Refused",
    "Revoking",
    "Write",
    "encode_segment",
    "encode_snapshot",
    "net",
    "recover",
]
