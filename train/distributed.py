"""Several GPUs or hosts: one process per GPU, launched with torch.distributed.run (torchrun).

resourceconfig.json (SageMaker) names the hosts; the first host in `hosts` is the rendezvous. Host names
resolve through DNS only once the cluster is up, so resolution is retried. MASTER_ADDR and MASTER_PORT,
when set, override the rendezvous address and port (29500).
Only global rank 0 (first process on the first host) writes model/ and output/data/.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .failure import TrainingError

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class Cluster:
    hosts: list[str]
    current_host: str
    network_interface: str | None = None

    @property
    def node_rank(self) -> int:
        return self.hosts.index(self.current_host)


def read_cluster(path: Path) -> Cluster:
    """The hosts of this job; a single local host when resourceconfig.json is absent."""
    if not path.is_file():
        return Cluster([socket.gethostname()], socket.gethostname())
    try:
        cfg = json.loads(path.read_text())
        hosts, current = list(cfg["hosts"]), cfg["current_host"]
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"{path} is not a valid resourceconfig.json (needs `hosts` and `current_host`): "
                            f"{exc}") from None
    if current not in hosts:
        raise TrainingError(f"{path}: current_host {current!r} is not among hosts {hosts}")
    return Cluster(hosts, current, cfg.get("network_interface_name"))


def in_worker() -> bool:
    """True inside a process started by torchrun (or any launcher that sets LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def is_leader() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def resolve(host: str, *, attempts: int = 60, delay_s: float = 5.0) -> str:
    """IP address of `host`, retrying while cluster DNS catches up."""
    for attempt in range(1, attempts + 1):
        try:
            return socket.gethostbyname(host)
        except OSError as exc:
            if attempt == attempts:
                raise TrainingError(f"cannot resolve rendezvous host {host!r} after {attempts} attempts: {exc}; "
                                    f"check the cluster's networking (or set MASTER_ADDR)") from None
            print(f"[distributed] {host} does not resolve yet ({exc}); retry {attempt}/{attempts}", flush=True)
            time.sleep(delay_s)
    raise AssertionError("unreachable")


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launch_command(cluster: Cluster, nproc_per_node: int, environ=os.environ) -> list[str] | None:
    """The torchrun command for this host, or None when one process is all the job needs."""
    if len(cluster.hosts) == 1 and nproc_per_node <= 1:
        return None
    addr = environ.get("MASTER_ADDR") or resolve(cluster.hosts[0])
    port = environ.get("MASTER_PORT") or str(DEFAULT_PORT)
    return [sys.executable, "-m", "torch.distributed.run",
            f"--nnodes={len(cluster.hosts)}", f"--node_rank={cluster.node_rank}",
            f"--nproc_per_node={max(1, nproc_per_node)}",
            f"--master_addr={addr}", f"--master_port={port}",
            "--module", "train", "train"]


def launch(cluster: Cluster, nproc_per_node: int) -> None:
    """Replace this process with torchrun when the job needs several processes; return otherwise."""
    cmd = launch_command(cluster, nproc_per_node)
    if cmd is None:
        return
    iface = cluster.network_interface
    if iface and Path("/sys/class/net", iface).exists():
        os.environ.setdefault("NCCL_SOCKET_IFNAME", iface)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", iface)
    print(f"[distributed] host {cluster.current_host} (node {cluster.node_rank} of {len(cluster.hosts)}), "
          f"{max(1, nproc_per_node)} process(es): {' '.join(cmd[1:])}", flush=True)
    sys.stdout.flush()
    # exec: SIGTERM from SageMaker goes straight to torchrun, which forwards it to the workers.
    os.execv(cmd[0], cmd)
