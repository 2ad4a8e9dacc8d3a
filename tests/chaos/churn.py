"""A churning client process for the chaos suite: acquire, hold a little, release, record.

``python tests/chaos/churn.py ADDRESS SECONDS OUT [hold]``: for SECONDS it takes leases
(a slot of pool ``slots``, 1 GiB of memory, or a gang of two quarter CPUs reserved in Ray
by a placement group, at random; warm or not, at random) and
gives them back, writing every hold to OUT as JSON: when the acquire was sent, when the
grant came back, when the hold ended (before the release was sent), the lease id and
fencing token, whether it was warm, the process, whether the lease was still valid at
the end, and every release that was refused. A warm lease serves several holds of its
process in turn, with no new grant. ``hold POOL``
instead takes one slot of POOL and keeps it until killed (for holder-death runs). Then it
closes its manager, prints ``closed`` and waits on stdin, so that the test can check the
cluster with the process alive, and again after killing it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from typing import Any

from anya_resource import AcquireTimeout, ResourceError, ResourceManager

KINDS: dict[str, dict[str, Any]] = {
    "slot": {"resources": {"pools": {"slots": 1}}},
    "memory": {"resources": {"memory": "1GiB"}},
    "gang": {"bundles": [{"cpu": 0.25}, {"cpu": 0.25}], "strategy": "SPREAD"},
}


async def churn(address: str, seconds: float, out: str) -> None:
    manager = await ResourceManager.new(address=address)
    holds: list[dict[str, Any]] = []
    refused: list[str] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        kind = random.choice(list(KINDS))
        warm = random.random() < 0.5
        sent = time.monotonic()
        try:
            lease = await manager.acquire(**KINDS[kind], timeout=5, warm=warm)
        except AcquireTimeout:
            continue
        except ResourceError as exc:
            errors.append(f"acquire: {type(exc).__name__}: {exc}")
            continue
        start = time.monotonic()
        await asyncio.sleep(random.uniform(0.002, 0.03))
        end = time.monotonic()
        valid = lease.valid
        try:
            await manager.release(lease)
        except ResourceError as exc:
            refused.append(f"{lease.lease_id}: {type(exc).__name__}: {exc}")
        holds.append(
            {
                "kind": kind,
                "sent": sent,
                "start": start,
                "end": end,
                "lease_id": lease.lease_id,
                "fencing": lease.fencing_token,
                "warm": warm,
                "pid": os.getpid(),
                "valid": valid,
                "reason": lease.reason,
            }
        )
    await manager.close()
    with open(out, "w") as fh:
        json.dump({"holds": holds, "refused": refused, "errors": errors}, fh)


async def hold(address: str, pool: str) -> None:
    manager = await ResourceManager.new(address=address)
    lease = await manager.acquire({"pools": {pool: 1}}, ttl=60)
    print(lease.lease_id, flush=True)
    await asyncio.sleep(3600)


def main() -> None:
    address, mode = sys.argv[1], sys.argv[2]
    if mode == "hold":
        asyncio.run(hold(address, sys.argv[3]))
        return
    asyncio.run(churn(address, float(mode), sys.argv[3]))
    print("closed", flush=True)
    sys.stdin.readline()  # stay alive until the test has looked


if __name__ == "__main__":
    main()
