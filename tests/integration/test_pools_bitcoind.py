"""A JSON-RPC server that behaves as Bitcoin Core documents, and checks that it does.

Bitcoin Core (``src/httpserver.cpp``) hands each HTTP request to a work queue served by
``-rpcthreads`` threads; a request arriving while ``-rpcworkqueue`` requests already
wait in the queue is answered ``503 Work queue depth exceeded`` at once. So at most
rpcthreads + rpcworkqueue calls are in progress, and more are refused. Basic auth
(``rpcuser``/``rpcpassword`` or the ``.cookie``): 401 with an empty body otherwise.
JSON-RPC errors come back as HTTP 500, or 404 for an unknown method, with an error
object. This server does the same on 127.0.0.1, with a fixed time per call.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from anya_resource.pools import (
    BitcoinRpc,
    ConnectionFailed,
    RpcAuthError,
    RpcCallError,
    RpcWorkQueueExceeded,
)
from anya_resource.pools.credentials import CookieAuth
from anya_resource.pools.http_client import tls_context


class NodeServer(ThreadingHTTPServer):
    # A hundred callers connect at once: with the default listen backlog of 5 the kernel
    # would drop connection attempts (and the clients retry a second later).
    request_queue_size = 256
    daemon_threads = True


class FakeBitcoind:
    """``rpcthreads`` workers, a queue of depth ``rpcworkqueue``, ``work_s`` per call."""

    def __init__(
        self,
        rpcthreads: int = 2,
        rpcworkqueue: int = 2,
        work_s: float = 0.02,
        user: str = "anya",
        password: str = "hunter2",
    ) -> None:
        self.rpcthreads, self.rpcworkqueue, self.work_s = rpcthreads, rpcworkqueue, work_s
        self.credentials = f"{user}:{password}"
        self.lock = threading.Lock()
        self.workers = threading.Semaphore(rpcthreads)
        self.queued = 0
        self.in_progress = 0
        self.max_in_progress = 0
        self.arrived = 0  # requests being answered now, refused ones too
        self.max_arrived = 0
        self.calls = 0
        self.rejected = 0
        self.unauthorized = 0
        self.server = NodeServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def write_cookie(self, directory: Path, secret: str = "c00k1e") -> Path:
        """A ``.cookie`` as the node writes it at every start (the old one stops working)."""
        self.cookie = f"__cookie__:{secret}"
        path = directory / ".cookie"
        path.write_text(self.cookie)
        return path

    def start(self) -> FakeBitcoind:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset_counts(self) -> None:
        with self.lock:
            self.max_in_progress = self.max_arrived = 0
            self.calls = self.rejected = self.unauthorized = 0

    # -- the node's side of one request ------------------------------------------------

    @contextmanager
    def answering(self) -> Iterator[None]:
        """One request, from its arrival until just before its reply leaves.

        ``max_in_progress`` cannot pass rpcthreads + rpcworkqueue (the node refuses the
        rest); ``max_arrived`` can: it is what a cap on the callers has to keep down.
        """
        with self.lock:
            self.arrived += 1
            self.max_arrived = max(self.max_arrived, self.arrived)
        try:
            yield
        finally:
            with self.lock:
                self.arrived -= 1

    def authorised(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        given = base64.b64decode(header[6:]).decode()
        return given in (self.credentials, getattr(self, "cookie", None))

    def enqueue(self) -> bool:
        # Refused when every worker thread is busy and the queue is full. Counted as one
        # total: a worker that has just finished is free at once, not only once the
        # request it wakes has been scheduled (counting the queue alone refused a request
        # in that gap, on a loaded machine, though a worker was free: a flaky 503).
        with self.lock:
            if self.queued + self.in_progress >= self.rpcthreads + self.rpcworkqueue:
                self.rejected += 1
                return False
            self.queued += 1
            self.max_in_progress = max(self.max_in_progress, self.in_progress + self.queued)
            return True

    def execute(self, body: bytes) -> tuple[int, dict[str, Any]]:
        with self.workers:  # a worker thread takes the request off the queue
            with self.lock:
                self.queued -= 1
                self.in_progress += 1
                self.calls += 1
                self.max_in_progress = max(self.max_in_progress, self.in_progress + self.queued)
            try:
                time.sleep(self.work_s)
                return self.dispatch(json.loads(body))
            finally:
                with self.lock:
                    self.in_progress -= 1

    def dispatch(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        method, params, rid = request.get("method"), request.get("params", []), request.get("id")
        if method == "getblockcount":
            return 200, {"result": 840_000, "error": None, "id": rid}
        if method == "echo":
            return 200, {"result": params, "error": None, "id": rid}
        if method == "getblock" and not params:
            error = {"code": -1, "message": "getblock needs a blockhash"}
            return 500, {"result": None, "error": error, "id": rid}
        error = {"code": -32601, "message": "Method not found"}
        return 404, {"result": None, "error": error, "id": rid}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        node = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the node's libevent server
            disable_nagle_algorithm = True  # headers and body leave without a 40 ms stall

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with node.answering():
                    status, payload, headers = self.answer(body)
                # Sent after: a caller that has its reply is no longer counted as arrived.
                self.reply(status, payload, headers)

            def answer(self, body: bytes) -> tuple[int, bytes, dict[str, str]]:
                if not node.authorised(self.headers.get("Authorization")):
                    with node.lock:
                        node.unauthorized += 1
                    return 401, b"", {"WWW-Authenticate": 'Basic realm="jsonrpc"'}
                if not node.enqueue():
                    return 503, b"Work queue depth exceeded", {}
                status, reply = node.execute(body)
                return status, json.dumps(reply).encode(), {"Content-Type": "application/json"}

            def reply(
                self, status: int, body: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler


@pytest.fixture(scope="module")
def node() -> Iterator[FakeBitcoind]:
    server = FakeBitcoind().start()
    yield server
    server.stop()


def client(node: FakeBitcoind, auth: tuple[str, str] = ("anya", "hunter2")) -> BitcoinRpc:
    """A client of its own, straight to the node: no pool, no slot."""
    return BitcoinRpc(httpx.Client(auth=auth, timeout=10, verify=tls_context()), node.url)


def test_calls_and_json_rpc_errors(node: FakeBitcoind) -> None:
    rpc = client(node)
    assert rpc.call("getblockcount") == 840_000
    assert rpc.call("echo", "a", 1) == ["a", 1]
    with pytest.raises(RpcCallError) as caught:
        rpc.call("nosuchmethod")
    assert caught.value.code == -32601
    with pytest.raises(RpcCallError, match="needs a blockhash"):
        rpc.call("getblock")
    rpc.close()


def test_wrong_credentials_are_refused(node: FakeBitcoind) -> None:
    rpc = client(node, auth=("anya", "wrong"))
    with pytest.raises(RpcAuthError, match="HTTP 401"):
        rpc.call("getblockcount")
    rpc.close()


def test_cookie_auth_survives_a_node_restart(node: FakeBitcoind, tmp_path: Path) -> None:
    path = node.write_cookie(tmp_path)
    auth = CookieAuth("rpc", str(path))
    rpc = BitcoinRpc(httpx.Client(auth=auth, verify=tls_context()), node.url)
    assert rpc.call("getblockcount") == 840_000
    node.write_cookie(tmp_path, secret="after-restart")  # a new cookie, the old one refused
    assert rpc.call("getblockcount") == 840_000  # 401, cookie read again, call retried
    path.unlink()  # the node is gone
    node.cookie = "__cookie__:yet-another"
    with pytest.raises(ConnectionFailed, match="is the node running"):
        rpc.call("getblockcount")
    rpc.close()


def test_past_the_work_queue_the_node_answers_503(node: FakeBitcoind) -> None:
    node.reset_counts()

    def one_call(_: int) -> str:
        rpc = client(node)
        try:
            rpc.call("getblockcount")
            return "ok"
        except RpcWorkQueueExceeded:
            return "503"
        finally:
            rpc.close()

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(pool.map(one_call, range(20)))
    assert outcomes.count("503") > 0 and outcomes.count("ok") > 0
    assert node.max_in_progress <= node.rpcthreads + node.rpcworkqueue
