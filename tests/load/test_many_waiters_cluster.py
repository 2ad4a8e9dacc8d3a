"""Many waiters on a 1 head + 3 worker cluster: no node is lost (see ``loadtools``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from anya_resource import ResourceManager
from tests.load import loadtools
from tests.raytools import GiB, Loop, deployed, local_cluster

pytestmark = [pytest.mark.ray, pytest.mark.cluster, pytest.mark.load]


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    with local_cluster(workers=3, cpus=1, memory=2 * GiB):
        yield Loop()


@pytest.fixture(scope="module")
def manager(loop: Loop) -> ResourceManager:
    return deployed(loop, loadtools.POLICY, nodes=4)


@pytest.mark.timeout(600)
def test_many_waiters_on_a_cluster(manager: ResourceManager, loop: Loop, tmp_path: Path) -> None:
    loadtools.report(loadtools.run(manager, loop, tmp_path, nodes=4))
