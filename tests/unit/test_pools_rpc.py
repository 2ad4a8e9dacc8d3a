"""Bitcoin Core JSON-RPC replies, pool credentials and connectors, without a network."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from anya_resource.config import PoolPolicy
from anya_resource.errors import ConfigError, InvalidRequest, ResourceError
from anya_resource.pools import (
    ConnectionFailed,
    RpcAuthError,
    RpcCallError,
    RpcError,
    RpcWorkQueueExceeded,
)
from anya_resource.pools.bitcoin import AsyncBitcoin, BlockingBitcoin
from anya_resource.pools.connectors import ThreadedConnector
from anya_resource.pools.credentials import CookieAuth, http_auth
from anya_resource.pools.http_client import AsyncHttp, BlockingHttp
from anya_resource.pools.jsonrpc import request_body, result_of
from anya_resource.pools.kinds import connector_for
from anya_resource.pools.postgres import AsyncPostgres, BlockingPostgres


def test_request_body_is_json_rpc_1_with_exact_amounts() -> None:
    body = json.loads(request_body(7, "sendtoaddress", ["bc1q...", Decimal("0.00010000")]))
    assert body == {
        "jsonrpc": "1.0",
        "id": 7,
        "method": "sendtoaddress",
        "params": ["bc1q...", "0.00010000"],
    }


def test_result_keeps_amounts_exact() -> None:
    reply = b'{"result": {"balance": 0.1}, "error": null, "id": 1}'
    assert result_of("getbalances", 200, reply) == {"balance": Decimal("0.1")}


def test_work_queue_503_is_its_own_error() -> None:
    with pytest.raises(RpcWorkQueueExceeded, match="Work queue depth exceeded") as caught:
        result_of("getblockcount", 503, b"Work queue depth exceeded")
    assert isinstance(caught.value, RpcError) and isinstance(caught.value, ResourceError)


@pytest.mark.parametrize("status", [404, 500, 200])
def test_json_rpc_error_objects_carry_code_and_message(status: int) -> None:
    reply = b'{"result": null, "error": {"code": -32601, "message": "Method not found"}, "id": 1}'
    with pytest.raises(RpcCallError) as caught:
        result_of("nosuchmethod", status, reply)
    assert caught.value.code == -32601 and caught.value.message == "Method not found"
    assert "nosuchmethod" in str(caught.value)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials(status: int) -> None:
    with pytest.raises(RpcAuthError, match=f"HTTP {status}"):
        result_of("getblockcount", status, b"")


def test_anything_else_is_an_rpc_error_quoting_the_reply() -> None:
    with pytest.raises(RpcError, match="HTTP 502: unexpected reply '<html>"):
        result_of("getblockcount", 502, b"<html>bad gateway</html>")


def authorization(auth: httpx.Auth | None) -> str:
    assert auth is not None
    request = httpx.Request("POST", "http://127.0.0.1:1/")
    return str(next(auth.sync_auth_flow(request)).headers["Authorization"])


def test_cookie_file_gives_basic_auth(tmp_path: Path) -> None:
    cookie = tmp_path / ".cookie"
    cookie.write_text("__cookie__:abc123\n")
    policy = PoolPolicy(size=1, kind="bitcoin-rpc", cookie_file=str(cookie))
    auth = http_auth("rpc", policy)
    assert isinstance(auth, CookieAuth)
    assert authorization(auth) == authorization(httpx.BasicAuth("__cookie__", "abc123"))


def test_missing_cookie_file_says_the_node_may_be_down(tmp_path: Path) -> None:
    policy = PoolPolicy(size=1, kind="bitcoin-rpc", cookie_file=str(tmp_path / "none"))
    with pytest.raises(ConnectionFailed, match="is the node running"):
        http_auth("rpc", policy)


def test_password_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = PoolPolicy(size=1, kind="bitcoin-rpc", username="anya", password_env="RPC_PW")
    monkeypatch.setenv("RPC_PW", "s3cret")
    expected = authorization(httpx.BasicAuth("anya", "s3cret"))
    assert authorization(http_auth("rpc", policy)) == expected
    monkeypatch.delenv("RPC_PW")
    with pytest.raises(ConfigError, match="RPC_PW, which is not set"):
        http_auth("rpc", policy)


def test_no_credentials_configured() -> None:
    assert http_auth("rpc", PoolPolicy(size=1, kind="http")) is None


@pytest.mark.parametrize(
    ("kind", "async_connector", "blocking_connector"),
    [
        ("postgres", AsyncPostgres, BlockingPostgres),
        ("bitcoin-rpc", AsyncBitcoin, BlockingBitcoin),
        ("http", AsyncHttp, BlockingHttp),
    ],
)
def test_each_kind_has_its_connector_and_blocking_twin(
    kind: str, async_connector: type, blocking_connector: type
) -> None:
    policy = PoolPolicy(size=2, kind=kind, url="http://127.0.0.1:1", dsn="postgresql:///x")
    assert isinstance(connector_for("p", policy, "async"), async_connector)
    threaded = connector_for("p", policy, "sync")
    assert isinstance(threaded, ThreadedConnector)
    assert isinstance(threaded._blocking, blocking_connector)
    asyncio.run(threaded.shutdown())


def test_slot_pools_have_no_connector() -> None:
    with pytest.raises(InvalidRequest, match="kind 'slot' has no connections"):
        connector_for("p", PoolPolicy(size=1, kind="slot"), "async")
