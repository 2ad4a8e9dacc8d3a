"""What a coordinator does when it starts, first or after a crash: decided here, pure.

The shell reads the epoch, the cluster secret and every journal key from Ray's GCS
store, asks Ray which nodes are alive, and calls ``start``. What it gets back is the
scheduler with the journal's leases restored, the group commit positioned at a new
generation, and the first write: a snapshot of the restored state, which the shell
writes (then deletes the garbage it names) *before it serves any call*. Once that write
is done, nothing of the previous coordinator can come back or be lost:

* every lease anybody was told of is in the snapshot (a grant is told only once its
  segment is written), and a lease whose release was confirmed is not (same rule);
* each lease is counted once (the journal keys leases by id), on its node as it is now;
* fencing tokens continue above every token the journal holds, in an epoch above every
  earlier one (the shell increments the stored epoch before calling ``start``);
* records that clients send later are never trusted: a lease is restored from the
  journal or not at all, and a client proves it holds one with the token, a MAC of the
  lease id under the secret (``core/leases.py``).

Restored leases are *unconfirmed* until their holder claims them (the client does at
once when it sees the new epoch); a holder's death, reported by the agent of its node,
or the lease's TTL ends those nobody claims. ``recovering`` tells whether any is left:
a coordinator grants again at once (everything restored is counted, so nothing can be
granted twice), it only waits for claims to say its recovery is complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from anya_resource.config import Policy
from anya_resource.core.journal import Commits, Generation, Write, recover
from anya_resource.core.model import Decision
from anya_resource.core.scheduler import Scheduler


@dataclass
class Startup:
    scheduler: Scheduler
    commits: Commits
    first_write: Write  # write it (and delete its garbage) before serving any call
    decisions: list[Decision]  # reclaims of leases whose node is gone: told after that
    restored: int  # how many leases the journal gave back


def start(
    policy: Policy,
    epoch: int,
    secret: bytes,
    journal: Mapping[str, bytes],
    nodes: Mapping[str, Mapping[str, int]],
    now: float,
) -> Startup:
    """The coordinator of ``epoch``, from the journal's keys and the alive nodes."""
    recovered, _ = recover(journal)
    scheduler = Scheduler(policy, epoch=epoch, secret=secret)
    for node_id in sorted(nodes):
        scheduler.node_up(node_id, nodes[node_id], now)
    decisions = scheduler.restore(recovered, now)
    scheduler.take_journal()  # the snapshot below holds what the restore changed
    commits = Commits(Generation(epoch, 0), scheduler.journal_snapshot)
    first = commits.start(garbage=tuple(recovered.garbage))
    return Startup(scheduler, commits, first, decisions, len(scheduler.leases))


def recovering(scheduler: Scheduler) -> int:
    """How many restored leases their holders have not claimed yet."""
    return len(scheduler.leases.unconfirmed)


__all__ = ["Startup", "recovering", "start"]
