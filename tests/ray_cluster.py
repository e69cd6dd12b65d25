"""A real Ray cluster on this machine, every process bound to 127.0.0.1, for tests and benchmarks.

`ray start` on Linux replaces 127.0.0.1 by the machine's outward address (ray._private.services
.resolve_ip_for_localhost), for the head, for a joining node and for a driver's `ray.init`. Ray's own switch
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps the loopback address instead (get_node_ip_address returns it) but
also makes `ray start --address` refuse to join a second node; so every `ray start` here runs through this file,
which keeps the loopback address and lets the second node join, and every process of the cluster (and the kopt
driver, through `env()`) carries the switch. Each `ray start` runs in a process group of its own, and
`stop()` / `kill()` end exactly those groups (never `ray stop`, which ends every Ray process on the machine).

    python tests/ray_cluster.py start --head ...   # what LocalCluster runs
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

OBJECT_STORE_BYTES = 80 * 1024 * 1024  # Ray's minimum is 75 MiB; kopt sends source text and small records


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    return env


@dataclass
class RayNode:
    pgid: int
    head: bool

    def kill(self) -> None:
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class LocalCluster:
    """A head and any number of nodes on 127.0.0.1, CPU resources only."""

    def __init__(self, root: Path, env: dict[str, str] | None = None, cpus_per_node: int = 1):
        self.root = root
        self.temp_dir = root / "ray"  # short: Ray's socket paths must stay under 107 bytes
        self.port = free_port()
        self.env = loopback_env(env)
        self.cpus = cpus_per_node
        self.nodes: list[RayNode] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, args: list[str], head: bool, env: dict[str, str] | None = None) -> RayNode:
        log = self.root / f"ray-start-{len(self.nodes)}.log"
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, __file__, "start", *args, "--num-cpus", str(self.cpus),
                                     "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats"],
                                    env=self.env if env is None else loopback_env(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        node = RayNode(pgid=proc.pid, head=head)
        self.nodes.append(node)
        if proc.wait(timeout=180) != 0:
            raise RuntimeError(f"ray start failed:\n{log.read_text()[-3000:]}")
        return node

    def start(self) -> LocalCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self._start(["--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                     "--include-dashboard", "false", "--temp-dir", str(self.temp_dir),
                     "--ray-client-server-port", str(free_port()),
                     "--min-worker-port", "0", "--max-worker-port", "0"], head=True)
        return self

    def add_node(self, env: dict[str, str] | None = None) -> RayNode:
        """A node joining the head (`env`: its processes' environment, default the cluster's)."""
        return self._start(["--address", self.address, "--node-ip-address", "127.0.0.1",
                            "--min-worker-port", "0", "--max-worker-port", "0"], head=False, env=env)

    def wait_for_nodes(self, n: int, timeout_s: float = 60.0) -> None:
        """Until the cluster counts n alive nodes (asked through `ray` in a child, not in this process)."""
        code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
                "print(sum(1 for x in ray.nodes() if x['Alive']))")
        deadline = time.monotonic() + timeout_s
        while True:
            out = subprocess.run([sys.executable, "-c", code, self.address], env=self.env, capture_output=True,
                                 text=True, timeout=120)
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach {n} alive nodes: {out.stdout[-500:]} {out.stderr[-2000:]}")
            time.sleep(1.0)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        self.nodes.clear()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _ray_start_on_loopback() -> None:
    import ray._private.ray_constants as constants
    import ray._private.services as services
    from ray.scripts.scripts import main

    constants.ENABLE_RAY_CLUSTER = True  # let a second node join ...
    services.get_node_ip_address = lambda address=None: "127.0.0.1"  # ... on the loopback address
    sys.argv = ["ray", *sys.argv[1:]]
    main()


if __name__ == "__main__":
    _ray_start_on_loopback()
