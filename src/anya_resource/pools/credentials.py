"""Credentials of a pool's service: never in the policy file, only named by it.

``password_env`` names an environment variable read in the process that opens the
connection; ``cookie_file`` is Bitcoin Core's ``.cookie`` (``__cookie__:<password>``),
which the node writes anew at every start: a connection kept warm across a node
restart reads it again when the node refuses the old one.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Generator
from pathlib import Path

import httpx

from anya_resource.config import PoolPolicy
from anya_resource.errors import ConfigError
from anya_resource.pools.errors import ConnectionFailed


def password(name: str, policy: PoolPolicy) -> str | None:
    """The password from the variable ``password_env`` names, or None when none is named."""
    if policy.password_env is None:
        return None
    value = os.environ.get(policy.password_env)
    if value is None:
        raise ConfigError(
            f"pool {name!r}: password_env names {policy.password_env}, "
            "which is not set in this process's environment"
        )
    return value


def cookie(name: str, path: str) -> tuple[str, str]:
    """``(user, password)`` from a Bitcoin Core cookie file."""
    try:
        text = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        # The node writes it at start and removes it at shutdown: no file, no node.
        raise ConnectionFailed(
            f"pool {name!r}: cannot read cookie file {path}: {exc.strerror} "
            "(is the node running, and is the file readable by this user?)"
        ) from None
    user, sep, secret = text.partition(":")
    if not sep:
        raise ConnectionFailed(f"pool {name!r}: cookie file {path} is not 'user:password'")
    return user, secret


def _basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


class CookieAuth(httpx.Auth):
    """Basic auth from a cookie file, read again (and the call retried once) on a 401."""

    def __init__(self, name: str, path: str) -> None:
        self._name = name
        self._path = path
        self._header = _basic(*cookie(name, path))

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        response = yield request
        if response.status_code == 401:
            fresh = _basic(*cookie(self._name, self._path))
            if fresh != self._header:  # the node restarted and wrote a new cookie
                self._header = fresh
                request.headers["Authorization"] = fresh
                yield request


def http_auth(name: str, policy: PoolPolicy) -> httpx.Auth | None:
    """HTTP credentials: the cookie if one is configured, else username/password_env."""
    if policy.cookie_file is not None:
        return CookieAuth(name, policy.cookie_file)
    if policy.username is not None:
        return httpx.BasicAuth(policy.username, password(name, policy) or "")
    return None
