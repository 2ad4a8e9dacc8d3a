"""Issue 14 (the house), client side: the names that said the wrong thing, the dead ones."""

from __future__ import annotations

import asyncio

import pytest

import anya_resource
from anya_resource import errors
from anya_resource.lease import Lease
from anya_resource.pools import PooledConnection
from anya_resource.pools.entries import Checkout
from tests.unit.test_pools import make_pool, run


def test_pooled_connection_release_is_a_deprecated_name_of_return_to_pool() -> None:
    async def scenario() -> None:
        pool, slots, _ = make_pool(size=1)
        conn = await pool.get(Checkout())
        assert isinstance(conn, PooledConnection)
        with pytest.warns(DeprecationWarning, match="return_to_pool"):
            await conn.release()
        assert conn.released and conn.lease_id in slots.held  # the slot is kept
        again = await pool.get(Checkout(timeout=1))
        assert again.lease_id == conn.lease_id
        await again.return_to_pool()
        assert again.lease_id in slots.held
        await pool.close()
        await asyncio.sleep(0)

    run(scenario())


def test_dead_names_are_gone() -> None:
    assert not hasattr(errors, "PoolExhausted")
    assert "PoolExhausted" not in anya_resource.__all__
    assert not hasattr(Lease, "seconds_left")
