"""The demo's real work: ML inference and Bitcoin transaction processing on leases.

``ml`` and ``transactions`` are the work itself (usable on their own); ``jobs``
makes them ``@leased`` tasks of three priority classes; ``runner`` keeps them in
demand; ``stats`` and ``report`` turn what happened into figures; ``cluster``
starts the embedded loopback cluster they run on.
"""
