"""``anya-resource demo``, beside the library: ML inference and Bitcoin transaction
processing on leases, and whole Ray jobs through the queue.

Not part of the library (``anya_resource`` never imports it; its work needs the demo
extra). ``app`` is the demo itself (live table, final report); ``ml`` and
``transactions`` are the work (usable on their own); ``mix`` makes them ``@leased``
tasks of three priority classes; ``runner`` keeps them in demand; ``queued_jobs`` queues
three whole Ray jobs beside them; ``stats`` and ``report`` turn what happened into
figures; ``cluster`` starts the embedded loopback cluster they run on.
"""
