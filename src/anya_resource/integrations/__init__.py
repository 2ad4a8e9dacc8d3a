"""Ray integrations: ``@leased`` tasks and actors, Ray Data helpers."""

from anya_resource.integrations.ray_tasks import current_lease, leased, leased_statistics

__all__ = ["current_lease", "leased", "leased_statistics"]
