"""Bitcoin Core's JSON-RPC over HTTP, without I/O: the request body and what a reply means.

Kept apart from the clients so that the async client and its blocking twin share
every decision and differ only in how they send.

What the node answers (``src/httprpc.cpp``, ``src/httpserver.cpp``):

* 200 with ``{"result": ..., "error": null}``: the call worked;
* 401 (bad credentials, no body) or 403 (address not allowed);
* 503 ``Work queue depth exceeded``: more calls in flight than ``-rpcworkqueue``;
* 404 or 500 with ``{"result": null, "error": {"code", "message"}}``: the call failed
  (unknown method, bad parameters, node still warming up with code -28, ...); with
  JSON-RPC 2.0 requests, v28+ sends such errors with status 200.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from anya_resource.pools.errors import RpcAuthError, RpcCallError, RpcError, RpcWorkQueueExceeded

WORK_QUEUE_EXCEEDED = "Work queue depth exceeded"


def _encode(value: object) -> object:
    if isinstance(value, Decimal):
        # Amounts go as strings: the node parses them exactly, a float would round.
        return str(value)
    raise TypeError(f"cannot send {type(value).__name__} {value!r} as a JSON-RPC parameter")


def request_body(request_id: int, method: str, params: Sequence[Any]) -> bytes:
    """The POST body of one call (JSON-RPC 1.0, which every Bitcoin Core version accepts)."""
    payload = {"jsonrpc": "1.0", "id": request_id, "method": method, "params": list(params)}
    return json.dumps(payload, default=_encode).encode()


def _decode(body: bytes) -> Any:
    try:
        # Amounts come back as Decimal: BTC values must not go through binary floats.
        return json.loads(body, parse_float=Decimal)
    except ValueError:
        return None


def result_of(method: str, status: int, body: bytes) -> Any:
    """The call's result, or the exception that says why there is none."""
    if status in (401, 403):
        raise RpcAuthError(
            f"{method}: HTTP {status}: the node refused the credentials "
            "(check rpcuser/rpcauth, the cookie file, or rpcallowip)"
        )
    if status == 503:
        text = body.decode(errors="replace").strip() or WORK_QUEUE_EXCEEDED
        raise RpcWorkQueueExceeded(f"{method}: HTTP 503: {text}")
    reply = _decode(body)
    if isinstance(reply, dict) and ("result" in reply or "error" in reply):
        error = reply.get("error")
        if error:
            code = error.get("code", 0) if isinstance(error, dict) else 0
            message = error.get("message", "") if isinstance(error, dict) else str(error)
            raise RpcCallError(method, int(code), str(message))
        if 200 <= status < 300:
            return reply.get("result")
    snippet = body[:200].decode(errors="replace")
    raise RpcError(f"{method}: HTTP {status}: unexpected reply {snippet!r}")
