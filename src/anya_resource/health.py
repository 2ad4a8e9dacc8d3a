"""Node health sampling: what a node agent measures of its machine and its Ray node.

Each node agent owns one :class:`NodeSampler` and calls :meth:`NodeSampler.sample` every
heartbeat. Nothing here needs Ray to be running: the sampler reads psutil (and NVML when
``pynvml`` is importable), and is told which processes make up its Ray node.

Several ``ray.cluster_utils.Cluster`` nodes on one machine all see the same psutil
numbers, so machine-wide readings cannot tell them apart. The sampler therefore also
measures the processes of its own node (its raylet and everything the raylet started);
:func:`node_memory_percent` and :func:`node_cpu_percent` combine the two into the pressure
figure the agent acts on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import psutil

__all__ = [
    "NodeHealth",
    "NodeSampler",
    "ProcessFilter",
    "ResourceHealth",
    "find_own_raylet_pid",
    "find_raylet_pid",
    "holder_alive",
    "node_cpu_percent",
    "node_memory_percent",
    "process_identity",
    "process_tree",
    "read_cgroup_memory",
]

logger = logging.getLogger(__name__)

ProcessFilter: TypeAlias = Callable[[], Iterable[int]]
"""Returns the pids that make up one Ray node now (its raylet and the raylet's workers)."""

# psutil derives create_time from the boot time in /proc/stat, which moves when the wall
# clock is stepped; two readings of one process taken at different moments can therefore
# differ by up to the size of the step. A pid reused within a second of its previous
# owner's creation would need the pid space to wrap in that second: not a practical risk.
_CREATE_TIME_TOLERANCE_S = 1.0

_RAYLET_NAME = "raylet"


# -- the samples -----------------------------------------------------------------------


@dataclass(frozen=True)
class NodeHealth:
    """One heartbeat's reading of one Ray node.

    Machine-wide fields (``memory_*``, ``cpu_*``, ``load_average``, ``disk_percent``,
    ``gpu*``) are shared by every node on the machine; ``node_rss``, ``node_cpu_percent``
    and ``holders`` are this node's own.
    """

    node_id: str
    address: str
    memory_total: int
    memory_available: int
    memory_percent: float
    cpu_count: float
    cpu_percent: float
    load_average: tuple[float, float, float]
    disk_percent: float
    gpus: int
    gpu_memory_percent: float | None
    node_rss: int
    node_cpu_percent: float
    holders: dict[int, int]
    sampled_at: float
    alive: bool = True
    missed_heartbeats: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-safe apart from the int keys of ``holders``)."""
        data = asdict(self)
        data["load_average"] = list(self.load_average)
        data["holders"] = dict(self.holders)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeHealth:
        """Inverse of :meth:`to_dict`; also accepts it after a JSON round trip."""
        load = tuple(float(x) for x in data["load_average"])
        if len(load) != 3:
            raise ValueError(f"load_average must have 3 values, got {len(load)}")
        gpu_mem = data.get("gpu_memory_percent")
        return cls(
            node_id=str(data["node_id"]),
            address=str(data["address"]),
            memory_total=int(data["memory_total"]),
            memory_available=int(data["memory_available"]),
            memory_percent=float(data["memory_percent"]),
            cpu_count=float(data["cpu_count"]),
            cpu_percent=float(data["cpu_percent"]),
            load_average=(load[0], load[1], load[2]),
            disk_percent=float(data["disk_percent"]),
            gpus=int(data["gpus"]),
            gpu_memory_percent=None if gpu_mem is None else float(gpu_mem),
            node_rss=int(data["node_rss"]),
            node_cpu_percent=float(data["node_cpu_percent"]),
            # JSON turns the pid keys into strings.
            holders={int(pid): int(rss) for pid, rss in data.get("holders", {}).items()},
            sampled_at=float(data["sampled_at"]),
            alive=bool(data.get("alive", True)),
            missed_heartbeats=int(data.get("missed_heartbeats", 0)),
        )


@dataclass(frozen=True)
class ResourceHealth:
    """The cluster's health as the coordinator sees it: what ``check_resource_health`` returns."""

    is_healthy: bool
    memory_usage_percent: float
    cpu_percent: float
    disk_percent: float
    nodes: list[NodeHealth] = field(default_factory=list)
    bottlenecks: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    checked_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "is_healthy": self.is_healthy,
            "memory_usage_percent": self.memory_usage_percent,
            "cpu_percent": self.cpu_percent,
            "disk_percent": self.disk_percent,
            "nodes": [node.to_dict() for node in self.nodes],
            "bottlenecks": [dict(b) for b in self.bottlenecks],
            "reasons": list(self.reasons),
            "checked_at": self.checked_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResourceHealth:
        return cls(
            is_healthy=bool(data["is_healthy"]),
            memory_usage_percent=float(data["memory_usage_percent"]),
            cpu_percent=float(data["cpu_percent"]),
            disk_percent=float(data["disk_percent"]),
            nodes=[NodeHealth.from_dict(n) for n in data.get("nodes", [])],
            bottlenecks=[dict(b) for b in data.get("bottlenecks", [])],
            reasons=[str(r) for r in data.get("reasons", [])],
            checked_at=float(data.get("checked_at", 0.0)),
        )


# -- pressure as the agent sees it -----------------------------------------------------


def node_memory_percent(health: NodeHealth, node_memory_capacity: float) -> float:
    """Memory pressure of one node: the worse of the machine and the node's own share.

    ``node_memory_capacity`` is Ray's ``memory`` resource for the node, in bytes. The
    machine figure catches real exhaustion (the OOM killer does not care which simulated
    node a page belongs to); the node figure is what lets one of several nodes on a
    machine be under pressure alone. Not capped at 100: a node can overrun its capacity.
    """
    if node_memory_capacity <= 0:
        return health.memory_percent
    own = health.node_rss / node_memory_capacity * 100.0
    return max(health.memory_percent, own)


def node_cpu_percent(health: NodeHealth, node_cpu_capacity: float) -> float:
    """CPU pressure of one node, as :func:`node_memory_percent` does for memory.

    ``node_cpu_capacity`` is Ray's ``CPU`` resource for the node, in cores.
    ``health.node_cpu_percent`` is relative to all the machine's cores, so it is scaled
    back to cores before being compared with the node's share.
    """
    if node_cpu_capacity <= 0:
        return health.cpu_percent
    own = health.node_cpu_percent * health.cpu_count / node_cpu_capacity
    return max(health.cpu_percent, own)


# -- process identity ------------------------------------------------------------------


def _open(pid: int) -> psutil.Process | None:
    """The live process with this pid, or None; a zombie has exited and counts as gone."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        # It exists; we just may not look closely at it.
        return psutil.Process(pid)
    return proc


def process_identity(pid: int) -> tuple[int, float] | None:
    """``(pid, create_time)``: names a process in a way pid reuse cannot fake."""
    proc = _open(pid)
    if proc is None:
        return None
    try:
        return pid, proc.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def holder_alive(pid: int, create_time: float) -> bool:
    """Whether the process that was ``(pid, create_time)`` still runs.

    False if the pid is gone, is a zombie, or now belongs to a process created at another
    time (the holder died and its pid was handed out again).
    """
    identity = process_identity(pid)
    if identity is None:
        return False
    return abs(identity[1] - create_time) <= _CREATE_TIME_TOLERANCE_S


def _private_resident(mem: Any) -> int:
    # Summing plain RSS over a node's workers counts the shared libraries every worker
    # maps (libraylet alone is tens of MB each) once per worker, and counts object-store
    # pages a worker reads from /dev/shm, which Ray budgets separately from ``memory``.
    # RSS minus the shared (file-backed + shmem) part is what a process allocated itself.
    rss = int(mem.rss)
    shared = int(getattr(mem, "shared", 0))
    return max(rss - shared, 0)


# -- finding a node's processes --------------------------------------------------------


def process_tree(root_pid: int) -> ProcessFilter:
    """A :data:`ProcessFilter` for ``root_pid`` and all its descendants, found afresh each call.

    Raises ``ProcessLookupError`` if ``root_pid`` does not exist now. Once the root exits
    (or its pid is reused) the filter yields nothing: the node is gone, and a stranger
    reusing the pid must not be measured as that node.
    """
    try:
        root = psutil.Process(root_pid)
    except psutil.NoSuchProcess:
        raise ProcessLookupError(f"no process with pid {root_pid}") from None

    def pids() -> list[int]:
        # is_running() compares the creation time too, so a reused pid reads as stopped.
        if not root.is_running():
            return []
        try:
            children = root.children(recursive=True)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return []
        return [root.pid, *(child.pid for child in children)]

    return pids


def _is_raylet(proc: psutil.Process, cmdline: list[str] | None) -> bool:
    with contextlib.suppress(psutil.Error):
        if proc.name() == _RAYLET_NAME:
            return True
    if cmdline:
        return os.path.basename(cmdline[0]) == _RAYLET_NAME
    return False


def _listens_on(proc: psutil.Process, port: int) -> bool:
    try:
        conns = proc.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


def find_raylet_pid(
    node_manager_port: int | None = None, *, node_id: str | None = None
) -> int | None:
    """The pid of the raylet on this machine with this node manager port (or node id).

    Ray 2.60 starts raylets with ``--node_manager_port=0`` and lets them pick a free port,
    so the port from ``ray.nodes()`` ("NodeManagerPort") is usually not on the command
    line; it is matched against the raylet's listening sockets instead. The command line
    does carry ``--node_id=<hex>``, which is the surest match when the caller knows it.
    Returns None if no raylet matches.
    """
    if node_manager_port is None and node_id is None:
        raise ValueError("give node_manager_port or node_id")
    id_flag = f"--node_id={node_id}" if node_id is not None else None
    port_flag = f"--node_manager_port={node_manager_port}" if node_manager_port else None
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline")
        if not _is_raylet(proc, cmdline):
            continue
        args = cmdline or []
        if id_flag is not None and id_flag in args:
            return proc.pid
        if node_manager_port is None:
            continue
        if port_flag is not None and port_flag in args:
            return proc.pid
        if _listens_on(proc, node_manager_port):
            return proc.pid
    return None


def find_own_raylet_pid(pid: int | None = None) -> int | None:
    """The raylet that started ``pid`` (default: this process), or None if there is none.

    Every Ray worker, and so every actor such as the node agent, is a child of its own
    node's raylet: the cheapest and least ambiguous way for an agent to find its node.
    """
    try:
        proc = psutil.Process(os.getpid() if pid is None else pid)
        for parent in proc.parents():
            with contextlib.suppress(psutil.Error):
                if parent.name() == _RAYLET_NAME:
                    return parent.pid
    except psutil.Error:
        return None
    return None


# -- machine readings --------------------------------------------------------------------


def read_cgroup_memory(root: str | os.PathLike[str] = "/sys/fs/cgroup") -> tuple[int, int] | None:
    """``(limit, used)`` bytes of this process's memory cgroup, or None if unlimited.

    In a container psutil reports the host's memory, but the OOM killer acts at the
    cgroup limit. "used" leaves out inactive page cache, which the kernel reclaims
    before it kills anything (the same reading Ray's memory monitor uses).
    """
    base = Path(root)
    for limit_file, usage_file, stat_file, inactive_key in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),  # cgroup v2
        (
            "memory/memory.limit_in_bytes",
            "memory/memory.usage_in_bytes",
            "memory/memory.stat",
            "total_inactive_file",
        ),  # cgroup v1
    ):
        try:
            raw_limit = (base / limit_file).read_text().strip()
            usage = int((base / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if raw_limit == "max":
            return None
        try:
            limit = int(raw_limit)
        except ValueError:
            continue
        inactive = 0
        with contextlib.suppress(OSError, ValueError):
            for line in (base / stat_file).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == inactive_key:
                    inactive = int(value)
                    break
        return limit, max(usage - inactive, 0)
    return None


def _memory() -> tuple[int, int, float]:
    """``(total, available, percent)``: the tighter of the machine and the cgroup."""
    vm = psutil.virtual_memory()
    total, available, percent = int(vm.total), int(vm.available), float(vm.percent)
    cgroup = read_cgroup_memory()
    # cgroup v1 reports "no limit" as a huge number rather than "max".
    if cgroup is not None and 0 < cgroup[0] < total:
        limit, used = cgroup
        total = limit
        available = min(available, max(limit - used, 0))
        percent = max(percent, used / limit * 100.0)
    return total, available, percent


class _CpuMeter:
    """Machine CPU busy percent between successive calls.

    ``psutil.cpu_percent(interval=None)`` keeps its previous reading in module state, so
    any other caller in the process (a metrics exporter, a test) would shorten our
    interval. This meter keeps its own.
    """

    def __init__(self) -> None:
        self._last = psutil.cpu_times()
        self._value = 0.0

    @staticmethod
    def _split(t: Any) -> tuple[float, float]:
        total = float(sum(t))
        # On Linux guest time is already inside user time.
        total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
        idle = float(t.idle) + getattr(t, "iowait", 0.0)
        return total, idle

    def percent(self) -> float:
        now = psutil.cpu_times()
        total0, idle0 = self._split(self._last)
        total1, idle1 = self._split(now)
        d_total = total1 - total0
        # Two calls within one clock tick: keep the previous value rather than divide by 0.
        if d_total > 0:
            busy = d_total - (idle1 - idle0)
            self._value = min(max(busy / d_total * 100.0, 0.0), 100.0)
            self._last = now
        return self._value


class _Gpus:
    """GPU count and memory use through NVML; no library or no GPU simply means 0 GPUs."""

    def __init__(self, enabled: bool = True) -> None:
        self._nvml: Any = None
        self._count = 0
        if not enabled:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._count = int(pynvml.nvmlDeviceGetCount())
            self._nvml = pynvml
        # NVML fails in many shapes (missing library, no driver, driver/library mismatch),
        # each its own exception class; all of them mean "no GPUs we can see".
        except Exception as exc:
            logger.debug("NVML unavailable, reporting 0 GPUs: %s", exc)
            self._count = 0

    def sample(self) -> tuple[int, float | None]:
        if self._nvml is None or self._count == 0:
            return 0, None
        used = total = 0
        try:
            for i in range(self._count):
                info = self._nvml.nvmlDeviceGetMemoryInfo(self._nvml.nvmlDeviceGetHandleByIndex(i))
                used += int(info.used)
                total += int(info.total)
        # A transient driver error must not make the node look GPU-less to the
        # coordinator: keep the count, say the memory reading is unknown.
        except Exception as exc:
            logger.debug("NVML memory reading failed: %s", exc)
            return self._count, None
        return self._count, (used / total * 100.0 if total else None)

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None


# -- the sampler -------------------------------------------------------------------------


class NodeSampler:
    """Samples one Ray node: the machine it runs on, and its own processes.

    ``process_filter`` says which processes are this node's: a callable returning their
    pids, or a pid (normally the node's raylet, see :func:`find_own_raylet_pid` and
    :func:`find_raylet_pid`) whose process tree is the node.

    Process CPU percent is a difference between two readings, so the psutil.Process
    objects are kept from one sample to the next; a process seen for the first time
    contributes 0 % CPU until its second sample. Not thread-safe: one sampler per agent.
    """

    def __init__(
        self,
        node_id: str,
        address: str,
        process_filter: ProcessFilter | int,
        *,
        disk_path: str = "/",
        gpus: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self._filter: ProcessFilter = (
            process_tree(process_filter) if isinstance(process_filter, int) else process_filter
        )
        self._disk_path = disk_path
        self._clock = clock
        self._cpu_count = float(psutil.cpu_count(logical=True) or 1)
        self._cpu = _CpuMeter()
        self._gpus = _Gpus(gpus)
        self._procs: dict[int, psutil.Process] = {}
        # Start every process's CPU interval now, so the first sample already measures.
        self._measure_node()

    def sample(self, holder_pids: Iterable[int] = ()) -> NodeHealth:
        """Read everything once; ``holder_pids`` are the lease holders to report RSS for."""
        total, available, mem_percent = _memory()
        node_rss, node_cpu = self._measure_node()
        gpus, gpu_mem = self._gpus.sample()
        return NodeHealth(
            node_id=self.node_id,
            address=self.address,
            memory_total=total,
            memory_available=available,
            memory_percent=mem_percent,
            cpu_count=self._cpu_count,
            cpu_percent=self._cpu.percent(),
            load_average=_load_average(),
            disk_percent=_disk_percent(self._disk_path),
            gpus=gpus,
            gpu_memory_percent=gpu_mem,
            node_rss=node_rss,
            node_cpu_percent=node_cpu,
            holders=_holder_memory(holder_pids),
            sampled_at=self._clock(),
        )

    def close(self) -> None:
        self._gpus.close()
        self._procs.clear()

    def _measure_node(self) -> tuple[int, float]:
        try:
            pids = set(self._filter())
        except psutil.Error:
            pids = set()
        rss = 0
        cpu = 0.0
        kept: dict[int, psutil.Process] = {}
        for pid in pids:
            proc = self._procs.get(pid)
            # is_running() also catches a pid reused since the last sample, whose cached
            # CPU reading belongs to another process.
            if proc is None or not proc.is_running():
                try:
                    proc = psutil.Process(pid)
                except psutil.NoSuchProcess:
                    continue
            try:
                with proc.oneshot():
                    rss += _private_resident(proc.memory_info())
                    cpu += proc.cpu_percent(interval=None)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            kept[pid] = proc
        # Dropping the processes not seen this time forgets the dead ones.
        self._procs = kept
        return rss, cpu / self._cpu_count


def _holder_memory(pids: Iterable[int]) -> dict[int, int]:
    holders: dict[int, int] = {}
    for pid in pids:
        proc = _open(pid)
        if proc is None:
            continue
        try:
            holders[pid] = _private_resident(proc.memory_info())
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except psutil.AccessDenied:
            # Alive but unreadable: report it, or the agent would take it for dead and
            # reclaim its leases.
            holders[pid] = 0
    return holders


def _load_average() -> tuple[float, float, float]:
    one, five, fifteen = psutil.getloadavg()
    return float(one), float(five), float(fifteen)


def _disk_percent(path: str) -> float:
    try:
        return float(psutil.disk_usage(path).percent)
    except OSError:
        return 0.0
