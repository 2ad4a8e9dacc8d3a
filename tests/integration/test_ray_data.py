"""Ray Data inference on leases: ``map_batches`` with ``leased_udf`` on a local Ray.

Each actor of the pool holds one lease (the model's memory) for its life, each
batch one more (a slot of the default pool) while it is scored, and once the
dataset is consumed and Ray Data has stopped its actors every lease is back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import ray

from anya_resource import SyncResourceManager
from anya_resource.integrations.ray_data import leased_udf
from anya_resource_demo.ml import Problem, train
from tests.raytools import GiB, local_ray

pytestmark = [
    pytest.mark.ray,
    # Ray Data's own DataContext warns about its deprecated settings when it is shipped.
    pytest.mark.filterwarnings(r"ignore:.*deprecated.*:DeprecationWarning"),
]

POLICY = {"heartbeat_s": 0.2, "reserve": {"memory": 0, "cpu": 0}}
ROWS = 600
BATCH = 100
ACTORS = 2


@pytest.fixture(scope="module")
def sync() -> Iterator[SyncResourceManager]:
    with local_ray(num_cpus=4, memory=8 * GiB):
        ray.data.DataContext.get_current().enable_progress_bars = False
        manager = SyncResourceManager.connect(policy=POLICY)
        yield manager
        manager.close()


class Scorer:
    """A Ray Data UDF: trains its model once per actor, then scores batch by batch."""

    def __init__(self) -> None:
        self.model = train(rows=800)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = len(batch["y"])
        # The lease of this batch is held by this actor's process while it runs.
        anya: SyncResourceManager = self._anya  # type: ignore[attr-defined]
        mine = [
            row
            for row in anya.leases()
            if row["holder"]["pid"] == os.getpid() and row["pools"] == {"default": 1}
        ]
        actor_lease = self.actor_lease  # type: ignore[attr-defined]
        return {
            "predicted": self.model.predict(np.stack(batch["x"])),
            "y": batch["y"],
            "actor_lease": [actor_lease.lease_id] * rows,
            "actor_lease_node": [actor_lease.node_id] * rows,
            "node": [ray.get_runtime_context().get_node_id()] * rows,
            "batch_leases": [len(mine)] * rows,
        }


def dataset() -> Any:
    x, y = Problem().sample(ROWS, seed=2024)
    return ray.data.from_items([{"x": x[i], "y": int(y[i])} for i in range(ROWS)])


def test_map_batches_holds_a_lease_per_actor_and_per_batch(sync: SyncResourceManager) -> None:
    udf = leased_udf(
        Scorer,
        memory="256MiB",
        cpu=0.5,
        priority="normal",
        tenant="ml",
        per_batch={"pools": {"default": 1}},
    )
    rows = (
        dataset()
        .map_batches(udf, batch_size=BATCH, concurrency=ACTORS, batch_format="numpy")
        .take_all()
    )
    assert len(rows) == ROWS
    actor_leases = {row["actor_lease"] for row in rows}
    assert 1 <= len(actor_leases) <= ACTORS
    # Each actor's lease is on the node the actor runs on.
    assert all(row["actor_lease_node"] == row["node"] for row in rows)
    assert all(row["batch_leases"] == 1 for row in rows)
    accuracy = np.mean([row["predicted"] == row["y"] for row in rows])
    assert accuracy > 0.75

    # Ray Data stops its actors at the end; their leases are reclaimed with them.
    deadline = time.monotonic() + 30
    while sync.snapshot()["leases"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sync.leases() == []
