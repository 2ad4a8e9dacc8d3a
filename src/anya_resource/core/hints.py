"""What the scheduler remembers only to skip work. None of it is truth.

Forgetting any of it changes how fast a decision is made, never which: the feasibility
of a shape (until the nodes change), and whether a preemption search for the same head
can find anything new (only nodes where preemptible leases came or went, or capacity
changed, can give a different answer).
"""

from __future__ import annotations

from typing import Any

from anya_resource.core.admission import Block


class Hints:
    __slots__ = ("never_fits", "preempt_dirty", "preempt_memo")

    def __init__(self) -> None:
        self.never_fits: dict[tuple[Any, ...], Block | None] = {}  # shape -> why never
        # (head, its effective priority, how many nodes, whether it reclaims its
        # guarantee): the last search that found nothing; and the nodes changed since.
        self.preempt_memo: tuple[str, int, int, bool] | None = None
        self.preempt_dirty: set[str] = set()

    def nodes_changed(self) -> None:
        """A node came, went or changed size: what never fitted may fit now, and back."""
        self.never_fits.clear()
