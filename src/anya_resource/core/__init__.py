"""The pure scheduling core: no Ray, no asyncio, no psutil, no clock reads.

Events go in (``Scheduler.submit``, ``release``, ``renew``, ``tick(now)``,
``node_up``, ``node_down``, ``holder_died``, ``health``), decisions come out
(``Grant``, ``Reject``, ``Revoke``, ``Reclaim``); the actors carry them out.
"""

from anya_resource.core.invariants import InvariantViolation, check_invariants
from anya_resource.core.model import (
    Decision,
    Grant,
    Holder,
    LeaseRecord,
    LeaseState,
    NodeSample,
    Reclaim,
    ReclaimReason,
    Reject,
    RejectReason,
    Request,
    Revoke,
    RevokeCause,
)
from anya_resource.core.requests import build_request
from anya_resource.core.scheduler import Scheduler
from anya_resource.core.whatif import WhatIf

__all__ = [
    "Decision",
    "Grant",
    "Holder",
    "InvariantViolation",
    "LeaseRecord",
    "LeaseState",
    "NodeSample",
    "Reclaim",
    "ReclaimReason",
    "Reject",
    "RejectReason",
    "Request",
    "Revoke",
    "RevokeCause",
    "Scheduler",
    "WhatIf",
    "build_request",
    "check_invariants",
]
