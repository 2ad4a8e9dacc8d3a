"""Many waiters on one node: the coordinator keeps hearing its node (see ``loadtools``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from anya_resource import ResourceManager
from tests.load import loadtools
from tests.raytools import GiB, Loop, deployed, local_ray

pytestmark = [pytest.mark.ray, pytest.mark.load]


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    with local_ray(num_cpus=2, memory=8 * GiB):
        yield Loop()


@pytest.fixture(scope="module")
def manager(loop: Loop) -> ResourceManager:
    return deployed(loop, loadtools.POLICY, nodes=1)


@pytest.mark.timeout(600)
def test_many_waiters_on_one_node(manager: ResourceManager, loop: Loop, tmp_path: Path) -> None:
    loadtools.report(loadtools.run(manager, loop, tmp_path, nodes=1))


@pytest.mark.timeout(600)
def test_a_hundred_thousand_waiters_in_one_process(
    manager: ResourceManager, loop: Loop, tmp_path: Path
) -> None:
    loadtools.report(loadtools.one_process(manager, loop, tmp_path))
