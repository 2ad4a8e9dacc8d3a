"""A process with many acquires waiting at once, for the load tests.

``python tests/load/waiters.py ADDRESS COUNT PLAN HOLD_S OUT [EXTRA]``: submits COUNT acquires of
one slot of pool ``one`` at once (no timeout), with the priorities PLAN names
(``"critical:50,high:500,low:rest"``, in that order of submission), prints
``queued RSS_BEFORE RSS_AFTER`` (bytes) once they are all submitted, and then, as each is
granted, holds it HOLD_S and gives it back, writing ``(priority, granted at, lease id)``
to OUT (JSON lines) as it goes. With EXTRA, it then tries that many more acquires and
prints ``overloaded MESSAGE`` for the first one refused as ``Overloaded``. It runs until
killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import psutil

from anya_resource import Overloaded, ResourceManager


def plan(text: str, count: int) -> list[str]:
    """``"critical:50,high:500,low:rest"`` -> the priority of each of ``count`` acquires."""
    out: list[str] = []
    for part in text.split(","):
        name, _, amount = part.partition(":")
        out += [name] * (count - len(out) if amount == "rest" else int(amount))
    return out[:count]


async def main(
    address: str, count: int, priorities: list[str], hold: float, out: str, extra: int
) -> None:
    manager = await ResourceManager.new(address=address)
    process = psutil.Process()
    before = process.memory_info().rss
    log = open(out, "a", buffering=1)  # noqa: SIM115 (kept open for the life of the process)

    async def one(priority: str) -> None:
        lease = await manager.acquire({"pools": {"one": 1}}, priority=priority)
        log.write(json.dumps([priority, time.time(), lease.lease_id]) + "\n")
        await asyncio.sleep(hold)
        await manager.release(lease)

    tasks = [asyncio.create_task(one(p)) for p in priorities]
    await asyncio.sleep(0.1)  # every acquire is submitted (in batches) from here on
    while manager._to_submit or manager._pending_releases:  # until every batch is answered
        await asyncio.sleep(0.05)
    print("queued", before, process.memory_info().rss, flush=True)
    for _ in range(extra):
        try:
            tasks.append(asyncio.create_task(one("low")))
            await asyncio.sleep(0)
            await asyncio.wait_for(asyncio.shield(tasks[-1]), timeout=0.01)
        except Overloaded as exc:
            print("overloaded", exc, flush=True)
            break
        except asyncio.TimeoutError:
            continue
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    address, count, text, hold, out = sys.argv[1:6]
    extra = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    asyncio.run(main(address, int(count), plan(text, int(count)), float(hold), out, extra))
