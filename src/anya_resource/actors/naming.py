"""Names and keys shared by the actors and the client."""

from __future__ import annotations

NAMESPACE = "anya_resource"
COORDINATOR_NAME = "coordinator"
KV_NAMESPACE = b"anya_resource"
KV_EPOCH = b"epoch"
KV_POLICY = b"policy"
KV_SECRET = b"secret"


def agent_name(node_id: str) -> str:
    return f"agent:{node_id}"
