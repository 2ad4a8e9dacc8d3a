"""A ``@leased`` actor's lease is renewed through its process's manager (its ``renew``:
retries, error translation), not by raw calls to the coordinator."""

from __future__ import annotations

import threading
import time
from typing import Any

from anya_resource.errors import LeaseRevoked, ManagerUnavailable
from anya_resource.integrations import ray_tasks
from anya_resource.lease import Lease


class Manager:
    """The twin's ``renew``, as a ``_Renewer`` sees it: fails once, then is revoked."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.done = threading.Event()

    def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        self.calls.append(lease.lease_id)
        if len(self.calls) == 1:
            raise ManagerUnavailable("the coordinator did not come back within 60 s")
        if len(self.calls) == 2:
            lease.expires_at += 1
            return lease
        self.done.set()
        raise LeaseRevoked(f"lease {lease.lease_id} was revoked: preempted")


class ShortLease(Lease):
    @property
    def ttl(self) -> float:
        return 0.3


def test_the_actor_renews_through_its_manager_and_stops_once_the_lease_ended() -> None:
    lease = ShortLease("L1", "t", 1, "n", {}, "normal", "default", time.time() + 1)
    manager: Any = Manager()
    renewer = ray_tasks._Renewer(manager, lease)
    assert renewer.every == 0.2  # a third of its TTL, 0.2 s at least
    assert manager.done.wait(5)
    renewer.thread.join(5)
    assert not renewer.thread.is_alive()  # revoked: nothing more to renew
    assert manager.calls == ["L1"] * 3
