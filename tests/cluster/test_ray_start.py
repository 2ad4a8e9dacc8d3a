"""The README's steps on a real cluster (issue 11, item 2), with real processes.

``ray start --head`` and ``ray start --address`` with token authentication on (Ray
2.60's default once a token exists), each with ``--block`` so that it is stopped by its
own process id (never ``ray stop``, which stops every Ray on the machine). The head
machine and the "other" machine get homes of their own: the head's has the token file
``ray get-auth-token --generate`` made, the other only ``RAY_AUTH_TOKEN``, as the README
says to set. Then, with nothing set but the address: ``anya-resource up``, a job with
only ``RAY_ADDRESS``, one from the other machine, ``status --json``, ``down``.

Ray's CLI refuses a second node on one machine unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
is 1, and then turns "127.0.0.1" into the machine's own address. So the scenario runs in
a network namespace of its own (``unshare -n``) whose only interface is loopback: every
process of it is on 127.0.0.1, and no other Ray of the machine can see it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.cluster]

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
JOB = """
import asyncio
from anya_resource import ResourceManager

async def main():
    manager = await ResourceManager.new()
    async with manager.acquire({"cpu": 0.5}, timeout=60) as lease:
        print(lease.node_id, lease.fencing_token)
    await manager.close()

asyncio.run(main())
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(
        HOME=str(home),
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1",  # loopback is all there is (see above)
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=os.pathsep.join(sys.path),
        **extra,
    )
    return env


def _run(
    args: list[str], env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _stop(process: subprocess.Popen[str]) -> None:
    """``ray start --block`` stops what it started when it is told to end."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def scenario(workdir: Path) -> dict[str, object]:
    """Everything, in this network namespace; what was seen, for the test to check."""
    head_home, other_home = workdir / "head-home", workdir / "other-home"
    head_home.mkdir()
    other_home.mkdir()
    made = _run([str(BIN / "ray"), "get-auth-token", "--generate"], _env(head_home))
    assert made.returncode == 0, made.stderr
    token = (head_home / ".ray" / "auth_token").read_text().strip()
    port = 6379
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1", "--block"]
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            *common,
        ],
        env=_env(head_home, RAY_AUTH_MODE="token"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    worker: subprocess.Popen[str] | None = None
    try:
        _wait_for_port(port, head)
        worker = subprocess.Popen(
            [str(BIN / "ray"), "start", f"--address={address}", "--num-cpus=1", *common],
            env=_env(other_home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token),
            stdout=(workdir / "worker.log").open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        return steps(address, head_home, other_home, token)
    finally:
        if worker is not None:
            _stop(worker)
        _stop(head)


def _wait_for_port(port: int, process: subprocess.Popen[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "ray start --head exited"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _run([str(BIN / "anya-resource"), *args], env)


def steps(address: str, head_home: Path, other_home: Path, token: str) -> dict[str, object]:
    on_head = _env(head_home)  # nothing set but what each step names
    policy = str(REPO / "cluster-configs" / "policy.yaml")
    seen: dict[str, object] = {}
    up = _cli("up", "--address", address, "--policy", policy, "--wait", "120", env=on_head)
    seen["up"] = [up.returncode, up.stdout[-2000:] + up.stderr[-2000:]]
    deadline = time.monotonic() + 120
    while True:  # the worker joins a few seconds after the head; its agent then starts
        status = _cli("status", "--address", address, "--json", env=on_head)
        seen["status"] = [status.returncode, status.stderr[-2000:]]
        nodes = json.loads(status.stdout)["snapshot"]["nodes"] if status.returncode == 0 else {}
        if len(nodes) == 2 or time.monotonic() > deadline:
            break
        time.sleep(2)
    seen["nodes"] = sorted(nodes)
    job = _run([sys.executable, "-c", JOB], {**on_head, "RAY_ADDRESS": address})
    seen["job_on_head"] = [job.returncode, job.stdout.strip(), job.stderr[-2000:]]
    elsewhere = _env(other_home, RAY_AUTH_TOKEN=token, RAY_ADDRESS=address)
    job = _run([sys.executable, "-c", JOB], elsewhere)
    seen["job_elsewhere"] = [job.returncode, job.stdout.strip(), job.stderr[-2000:]]
    down = _cli("down", "--address", address, env=on_head)
    seen["down"] = [down.returncode, down.stdout[-2000:] + down.stderr[-2000:]]
    return seen


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -n` (a private network namespace)")
def test_the_readme_steps_work_as_written(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            "unshare",
            "-n",
            "sh",
            "-c",
            f"ip link set lo up && exec {sys.executable} {__file__} {tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["up"][0] == 0, seen["up"]
    assert seen["status"][0] == 0, seen["status"]
    assert len(seen["nodes"]) == 2, seen
    for job in ("job_on_head", "job_elsewhere"):
        code, out, err = seen[job]
        assert code == 0, f"{job}: {err}"
        node_id, fencing = out.split()
        assert node_id in seen["nodes"] and int(fencing) > 0
    assert seen["down"][0] == 0, seen["down"]


if __name__ == "__main__":  # inside the namespace: run the scenario, print what was seen
    print(json.dumps(scenario(Path(sys.argv[1]))))
