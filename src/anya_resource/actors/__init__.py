"""The Ray shells around the core: the coordinator, the node agents, and deployment."""
