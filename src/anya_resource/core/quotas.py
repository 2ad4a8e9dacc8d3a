"""Tenant quotas: a guaranteed share, a hard limit, and borrowing in between.

A tenant may always use up to its guaranteed share. Past it, the tenant is
*borrowing* idle capacity, allowed when the policy lets it borrow and never past
its hard limit. Leases granted while borrowing are marked so that a tenant
below its guarantee reclaims from borrowers first.

Tenants the policy does not name (a Ray job id, say) have no guarantee and no
limit: they only ever compete on priority. Whether a request is within the hard limit
is the admission check's to say (core/admission.py), with the rest of the rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from anya_resource.config import TenantPolicy
from anya_resource.core.model import Amounts
from anya_resource.quantities import to_units


@dataclass(slots=True)
class TenantQuota:
    name: str
    guaranteed: Amounts = field(default_factory=dict)
    limit: Amounts | None = None  # None: no hard limit at all
    borrowing: bool = True
    usage: Amounts = field(default_factory=dict)

    @classmethod
    def from_policy(cls, name: str, policy: TenantPolicy) -> TenantQuota:
        guaranteed = {r: to_units(r, v) for r, v in policy.guaranteed.items()}
        limit = {r: to_units(r, v) for r, v in policy.limit.items()}
        if not policy.borrowing:
            # A tenant that may not borrow is capped at its guarantee.
            limit = {**guaranteed, **{r: min(v, guaranteed.get(r, v)) for r, v in limit.items()}}
        return cls(name, guaranteed, limit or None, policy.borrowing)

    def hard_limit(self, resource: str) -> int | None:
        if self.limit is None:
            return None
        return self.limit.get(resource)

    def would_borrow(self, demand: Mapping[str, int]) -> bool:
        """Whether granting ``demand`` takes the tenant past its guaranteed share."""
        if not self.guaranteed:
            return any(demand.values())  # nothing is guaranteed: all it takes is borrowed
        return any(
            self.usage.get(r, 0) + a > self.guaranteed.get(r, 0) for r, a in demand.items() if a
        )

    def below_guarantee(self, demand: Mapping[str, int]) -> bool:
        """Whether ``demand`` is still within what the tenant is guaranteed."""
        return bool(self.guaranteed) and not self.would_borrow(
            {r: a for r, a in demand.items() if r in self.guaranteed}
        )

    def charge(self, demand: Mapping[str, int]) -> None:
        for resource, amount in demand.items():
            self.usage[resource] = self.usage.get(resource, 0) + amount

    def refund(self, demand: Mapping[str, int]) -> None:
        for resource, amount in demand.items():
            self.usage[resource] = self.usage.get(resource, 0) - amount

    def copy(self) -> TenantQuota:
        """An independent record with the same usage (for a trial, core/whatif.py)."""
        return TenantQuota(self.name, self.guaranteed, self.limit, self.borrowing, dict(self.usage))
