"""What must outlive the coordinator, in Ray's GCS key-value store: the one module that
touches it (Ray's ``internal_kv`` and the GCS client are private APIs).

Namespace ``anya_resource``:

* ``epoch``: incremented by every coordinator that starts, before it grants anything,
  so fencing tokens (``epoch << 40 | sequence``) keep increasing across restarts;
* ``secret``: 32 random bytes made once per cluster: lease tokens are MACs under it;
* ``policy``: the policy of the first deployment (a restart keeps it; ``down`` drops it);
* ``journal/...``: the leases (``core/journal.py``), written by group commit.

With Ray's GCS fault tolerance (an external Redis), all of it survives the head node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import ray
from ray.experimental import internal_kv

from anya_resource.actors.naming import KV_EPOCH, KV_NAMESPACE, KV_POLICY, KV_SECRET
from anya_resource.core.journal import PREFIX as JOURNAL_PREFIX
from anya_resource.core.journal import Write
from anya_resource.core.leases import new_secret

log = logging.getLogger(__name__)

TIMEOUT_S = 30.0
RETRY_MAX_S = 2.0


def _gcs() -> Any:
    """This process's GCS client (the one ``internal_kv`` uses too)."""
    return ray._private.worker.global_worker.gcs_client  # type: ignore[attr-defined]


def get(key: bytes) -> bytes | None:
    if not internal_kv._internal_kv_initialized():  # type: ignore[no-untyped-call]
        return None
    value = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
    return value if isinstance(value, bytes) else None


def put(key: bytes, value: bytes) -> None:
    internal_kv._internal_kv_put(key, value, overwrite=True, namespace=KV_NAMESPACE)


def stored_policy() -> bytes | None:
    """The deployed policy as JSON, or None when nothing is deployed."""
    return get(KV_POLICY)


def keep_policy(policy_json: bytes) -> None:
    put(KV_POLICY, policy_json)


def next_epoch() -> int:
    """This coordinator's epoch: one above every earlier one, stored before it is used."""
    previous = get(KV_EPOCH)
    epoch = int(previous) + 1 if previous is not None else 0
    put(KV_EPOCH, str(epoch).encode())
    return epoch


def cluster_secret() -> bytes:
    """The cluster's secret, made by whichever coordinator asks first."""
    # Put if absent, then read back: two first coordinators agree on one secret.
    internal_kv._internal_kv_put(
        KV_SECRET, new_secret().hex().encode(), overwrite=False, namespace=KV_NAMESPACE
    )
    stored = get(KV_SECRET)
    if stored is None:
        raise RuntimeError("the cluster secret could not be read back from Ray's GCS")
    return bytes.fromhex(stored.decode())


def journal() -> dict[str, bytes]:
    """Every journal key and its value."""
    keys = internal_kv._internal_kv_list(JOURNAL_PREFIX, namespace=KV_NAMESPACE)
    if not keys:
        return {}
    values: Mapping[bytes, bytes] = _gcs().internal_kv_multi_get(
        list(keys), KV_NAMESPACE, timeout=TIMEOUT_S
    )
    return {key.decode(): value for key, value in values.items()}


def write_now(write: Write) -> None:
    """``write`` and its garbage, blocking (at start-up, before anything is served)."""
    _gcs().internal_kv_put(write.key.encode(), write.blob, True, KV_NAMESPACE, timeout=TIMEOUT_S)
    for garbage in write.garbage:
        _gcs().internal_kv_del(garbage.encode(), garbage.endswith("/"), KV_NAMESPACE)


async def write(write: Write) -> None:
    """``write``, retried until it is in the store; then its garbage, best effort.

    Nothing waiting on it may go on before it is written, so a failure is retried,
    not reported: while the GCS is unreachable the coordinator answers nothing.
    """
    delay = 0.05
    while True:
        try:
            await _gcs().async_internal_kv_put(
                write.key.encode(), write.blob, True, KV_NAMESPACE, timeout=TIMEOUT_S
            )
            break
        except Exception as exc:
            log.warning("journal write %s failed (%s); retrying in %.2f s", write.key, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
    for garbage in write.garbage:
        try:
            await _gcs().async_internal_kv_del(
                garbage.encode(), garbage.endswith("/"), KV_NAMESPACE, timeout=TIMEOUT_S
            )
        except Exception as exc:  # left behind: the next recovery ignores and deletes it
            log.warning("could not delete %s from the journal: %s", garbage, exc)


JOB_PREFIX = b"job:"  # one key per job of the queue (core/jobs.JobRecord as JSON)


def keep_job(job_id: str, record_json: bytes) -> None:
    put(JOB_PREFIX + job_id.encode(), record_json)


def job(job_id: str) -> bytes | None:
    return get(JOB_PREFIX + job_id.encode())


def jobs() -> list[bytes]:
    """Every job's record, in no particular order."""
    if not internal_kv._internal_kv_initialized():  # type: ignore[no-untyped-call]
        return []
    keys = internal_kv._internal_kv_list(JOB_PREFIX, namespace=KV_NAMESPACE)
    if not keys:
        return []
    values: Mapping[bytes, bytes] = _gcs().internal_kv_multi_get(
        list(keys), KV_NAMESPACE, timeout=TIMEOUT_S
    )
    return list(values.values())


SPARE_PREFIX = b"spare:"  # one key per ready job supervisor not yet given a job (jobs.py)


def keep_spare(name: str) -> None:
    put(SPARE_PREFIX + name.encode(), b"")


def spares() -> list[str]:
    """The names of the ready supervisors no job has taken yet."""
    if not internal_kv._internal_kv_initialized():  # type: ignore[no-untyped-call]
        return []
    keys = internal_kv._internal_kv_list(SPARE_PREFIX, namespace=KV_NAMESPACE) or []
    return [key[len(SPARE_PREFIX) :].decode() for key in keys]


def claim_spare(name: str) -> bool:
    """Take ``name`` off the ready ones; True for the one caller that did (the GCS
    deletes a key once: two submitters never get the same supervisor)."""
    deleted = internal_kv._internal_kv_del(SPARE_PREFIX + name.encode(), namespace=KV_NAMESPACE)
    return bool(deleted)


def forget_deployment() -> None:
    """``down``: the policy and the journal go; the epoch and the secret stay.

    Fencing tokens must keep increasing across a redeploy, and tokens of leases from
    before it must still be recognised as this cluster's.
    """
    internal_kv._internal_kv_del(KV_POLICY, namespace=KV_NAMESPACE)
    internal_kv._internal_kv_del(JOURNAL_PREFIX, del_by_prefix=True, namespace=KV_NAMESPACE)


__all__ = [
    "claim_spare",
    "cluster_secret",
    "forget_deployment",
    "job",
    "jobs",
    "journal",
    "keep_job",
    "keep_policy",
    "keep_spare",
    "next_epoch",
    "spares",
    "stored_policy",
    "write",
    "write_now",
]
