"""The mixed workload: three kinds of job, one per priority class, each a ``@leased`` task.

| class  | job          | tenant       | lease                   | work per task                |
|--------|--------------|--------------|-------------------------|------------------------------|
| high   | `mempool`    | transactions | 0.5 CPU, 64 MiB         | verify 20 incoming txs       |
| normal | `inference`  | ml           | 1 CPU, 256 MiB          | score a 20,000-row batch     |
| low    | `block-sync` | transactions | 1 CPU, 128 MiB          | re-verify 100 txs of a block |

Latency-sensitive work comes first, bulk work last, whichever tenant it is for.
Each kind runs as a number of closed-loop clients (``runner``): a client asks for
its lease, runs its task, and asks again as soon as it ends. How many clients
each kind gets is set from the cluster's CPU so that the classes above ``low``
together want about half of it and ``low`` alone could fill all of it: the
cluster is saturated (``low`` always has work waiting) and yet no class can be
starved, since ``high`` and ``normal`` can never take everything.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from anya_resource.integrations import current_lease, leased
from anya_resource.integrations.ray_tasks import LeasedFunction
from anya_resource_demo.ml import Model, infer_batch, train
from anya_resource_demo.transactions import SignedTx, make_transactions, verify_batch

# The policy the mix runs under (demo and benchmark): a quick heartbeat, so pressure and
# the live table follow the run closely; no CPU reserve, so each node's logical CPUs are
# all grantable (Ray keeps its own processes apart from them anyway).
POLICY: dict[str, Any] = {
    "heartbeat_s": 0.5,
    "reserve": {"memory": "10%", "cpu": 0},
    "lease": {"default_ttl": 30.0, "renew_every": 10.0},
}
MAX_CLIENTS_PER_KIND = 64  # one thread each in the driver
TRANSACTIONS = 300  # signed once at start-up, verified over and over by the tasks
WARM_WORKERS_PER_NODE = 3  # the most leases of the mix one 2-CPU node holds at once


@dataclass(frozen=True)
class Outcome:
    """What one task did, where, and when (its own clock)."""

    node_id: str
    lease_id: str
    started: float
    ended: float
    items: int  # transactions verified, or rows scored
    good: int  # valid transactions, or correct predictions
    bad: int  # rejected transactions, or wrong predictions
    missed: int = 0  # tampered transactions accepted: must stay 0


def _outcome(started: float, items: int, good: int, missed: int = 0) -> Outcome:
    lease = current_lease()
    return Outcome(
        node_id=lease.node_id,
        lease_id=lease.lease_id,
        started=started,
        ended=time.time(),
        items=items,
        good=good,
        bad=items - good,
        missed=missed,
    )


def _window(txs: list[SignedTx], start: int, count: int) -> list[SignedTx]:
    """``count`` transactions from ``start``, wrapping around the set."""
    return [txs[(start + i) % len(txs)] for i in range(count)]


def verify_transactions(txs: list[SignedTx], start: int, count: int) -> Outcome:
    """The task body of ``mempool`` and ``block-sync``: verify a run of transactions."""
    started = time.time()
    result = verify_batch(_window(txs, start, count))
    return _outcome(started, result.valid + result.invalid, result.valid, result.missed)


def score_batch(model: Model, batch_seed: int, rows: int) -> Outcome:
    """The task body of ``inference``: draw a fresh batch and score it with the model."""
    started = time.time()
    result = infer_batch(model, batch_seed, rows)
    return _outcome(started, result.rows, result.correct)


@dataclass(frozen=True)
class Payload:
    """What the tasks work on, put in Ray's object store once: the model and the txs."""

    model: Any  # ObjectRef[Model]
    transactions: Any  # ObjectRef[list[SignedTx]]
    tampered: int  # how many of the transactions were tampered with
    model_accuracy: float  # on its training data


def prepare_payload() -> Payload:
    """Train the model and sign the transactions (a few seconds), then share them."""
    model = train()
    txs = make_transactions(TRANSACTIONS)
    return Payload(
        model=ray.put(model),
        transactions=ray.put(txs),
        tampered=sum(tx.tampered is not None for tx in txs),
        model_accuracy=model.train_accuracy,
    )


ArgsFor = Callable[[Payload, int], tuple[Any, ...]]


@dataclass(frozen=True)
class JobKind:
    """One kind of job: its class, tenant, lease, share of the cluster and task."""

    name: str
    priority: str
    tenant: str
    cpu: float
    memory: str
    demand: float  # CPU its clients want together, as a fraction of the cluster's
    work: Callable[..., Outcome]
    args_for: ArgsFor  # the task's arguments for the n-th call
    items: str  # what Outcome.items counts
    # The priority its leases ask for; None: its class. A benchmark baseline sets every
    # kind's to one level, keeping the classes only as labels.
    lease_priority: str | None = None
    task: LeasedFunction[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        task = leased(
            cpu=self.cpu,
            memory=self.memory,
            priority=self.lease_priority or self.priority,
            tenant=self.tenant,
        )(self.work)
        object.__setattr__(self, "task", task)

    def clients(self, cluster_cpu: float) -> int:
        """How many closed-loop clients make this kind's demand on ``cluster_cpu`` cores."""
        wanted = math.ceil(self.demand * cluster_cpu / self.cpu)
        return max(1, min(MAX_CLIENTS_PER_KIND, wanted))


MEMPOOL_TXS = 20
BLOCK_TXS = 100
INFERENCE_ROWS = 20_000


def _mempool_args(payload: Payload, n: int) -> tuple[Any, ...]:
    return (payload.transactions, n * MEMPOOL_TXS, MEMPOOL_TXS)


def _block_args(payload: Payload, n: int) -> tuple[Any, ...]:
    return (payload.transactions, n * BLOCK_TXS, BLOCK_TXS)


def _inference_args(payload: Payload, n: int) -> tuple[Any, ...]:
    return (payload.model, n, INFERENCE_ROWS)


def default_mix() -> list[JobKind]:
    """The three kinds, highest class first."""
    return [
        JobKind(
            name="mempool",
            priority="high",
            tenant="transactions",
            cpu=0.5,
            memory="64MiB",
            demand=0.125,
            work=verify_transactions,
            args_for=_mempool_args,
            items="transactions",
        ),
        JobKind(
            name="inference",
            priority="normal",
            tenant="ml",
            cpu=1.0,
            memory="256MiB",
            demand=0.375,
            work=score_batch,
            args_for=_inference_args,
            items="rows",
        ),
        JobKind(
            name="block-sync",
            priority="low",
            tenant="transactions",
            cpu=1.0,
            memory="128MiB",
            demand=1.0,
            work=verify_transactions,
            args_for=_block_args,
            items="transactions",
        ),
    ]


def _warm(seconds: float) -> str:
    """Import what the tasks need, then hold the worker a moment so others start too."""
    import anya_resource_demo.mix  # noqa: F401  (with @leased, the model, bitcoin)

    time.sleep(seconds)
    return ray.get_runtime_context().get_node_id()


def warm_workers(node_ids: list[str], per_node: int, hold_s: float = 1.0) -> list[Any]:
    """Start ``per_node`` worker processes on every node with the workload's imports done.

    A fresh Ray worker takes seconds to import the client, numpy and the Bitcoin
    library (3-5 s on a loaded 2-core machine), far longer than a task runs; started all at once by the first leases,
    they stall the run's first seconds and skew its waits. Ray keeps idle workers
    for the next tasks, so warming them first keeps that out of the figures.
    Returns the warming tasks' refs: ``ray.get`` them before the run starts.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    warm = ray.remote(_warm)
    return [
        warm.options(
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(hold_s)
        for node_id in node_ids
        for _ in range(per_node)
    ]


def prepare_while_warming(node_ids: list[str], per_node: int = WARM_WORKERS_PER_NODE) -> Payload:
    """``prepare_payload`` in the driver while ``warm_workers`` warms every node's workers."""
    warming = warm_workers(node_ids, per_node)
    payload = prepare_payload()
    ray.get(warming)
    return payload
