"""The client: ``ResourceManager`` (async) and ``SyncResourceManager`` (its blocking twin).

``ResourceManager`` is written in ``client_async.py``; ``SyncResourceManager`` in
``client_sync.py`` is generated from it by ``tools/async_to_sync.py`` (``make lint``
checks that it is not stale). Import either from here, or from ``anya_resource``.
"""

from __future__ import annotations

from anya_resource.actors.boundary import RETRY_MAX_S
from anya_resource.client_async import (
    ANSWER_GRACE_S,
    GROW_GRACE_S,
    MAX_WAITING_PER_MANAGER,
    RENEW_CHECK_S,
    RESTART_PATIENCE_S,
    SUBMIT_BATCH,
    ResourceManager,
    budget_of,
    current_holder,
    warm_kind,
)
from anya_resource.client_sync import SyncResourceManager

__all__ = [
    "ANSWER_GRACE_S",
    "GROW_GRACE_S",
    "MAX_WAITING_PER_MANAGER",
    "RENEW_CHECK_S",
    "RESTART_PATIENCE_S",
    "RETRY_MAX_S",
    "SUBMIT_BATCH",
    "ResourceManager",
    "SyncResourceManager",
    "budget_of",
    "current_holder",
    "warm_kind",
]
