"""Ray Data: a lease per ``map_batches`` actor, and one per batch where asked.

``Dataset.map_batches`` with a class UDF starts a pool of actors; each should hold
the model memory and GPU it needs for as long as it lives, and wait its turn when
the cluster is tight. ``leased_udf`` wraps the class so that:

* its ``__init__`` first acquires a lease on the actor's own node (blocking until
  granted, by priority), then builds the model; the lease is renewed while the actor
  lives and reclaimed when it dies;
* with ``per_batch=``, each call holds a second lease for the batch (for example a
  database connection slot, or scratch memory) and gives it back after.

    ds.map_batches(
        leased_udf(Embedder, memory="2GiB", gpu=1, per_batch={"pools": {"postgres": 1}}),
        concurrency=4, batch_size=256, num_gpus=1,
    )
"""

from __future__ import annotations

from typing import Any

import ray

from anya_resource.client_sync import SyncResourceManager
from anya_resource.lease import Lease


def leased_udf(
    udf: type,
    *,
    priority: str = "normal",
    tenant: str | None = None,
    per_batch: dict[str, Any] | None = None,
    timeout: float | None = None,
    **resources: Any,
) -> type:
    """A subclass of ``udf`` whose actors hold a lease of ``resources`` for their life."""
    actor_resources = {k: v for k, v in resources.items() if v is not None}

    class LeasedUDF(udf):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._anya = SyncResourceManager.connect()
            here = ray.get_runtime_context().get_node_id()
            self.actor_lease: Lease | None = None
            if actor_resources:
                self.actor_lease = self._anya.acquire(
                    actor_resources, priority=priority, tenant=tenant, node=here, timeout=timeout
                )
            super().__init__(*args, **kwargs)

        def __call__(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
            if not per_batch:
                return super().__call__(batch, *args, **kwargs)
            # A warm lease: the actor's next batch takes it again with no Ray call, unless a
            # request it does not outrank waits for it (core/share.py).
            with self._anya.acquire(
                per_batch, priority=priority, tenant=tenant, timeout=timeout, warm=True
            ):
                return super().__call__(batch, *args, **kwargs)

    LeasedUDF.__name__ = f"Leased{udf.__name__}"
    LeasedUDF.__qualname__ = LeasedUDF.__name__
    return LeasedUDF
