"""A real two-node SLURM cluster on one machine: each slurmd in a network namespace of its own.

Why namespaces: nodes that are hosts of their own, to Slurm (no Slurm built with ``--enable-multiple-slurmd``
and a port per node) and to the job's processes. Each slurmd has its own address (a veth on a bridge,
10.213.x.0/24), its own host name (a UTS namespace: ``node1``, ``node2``) and an /etc/hosts that names every
node (bind-mounted in a mount namespace of its own). slurmctld and the clients (sbatch, squeue, the launcher)
stay in this machine's namespace and reach the nodes through the bridge; munge's socket is a file, so the one
munged serves all. Traffic between the two DDP ranks crosses the bridge: a job that worked only with loopback
addresses would fail here.

The daemons run under names of their own (``tl2n-slurmctld``, ``tl2n-slurmd``: symlinks to Slurm's), on a
free controller port, with interface and namespace names from this process's id: the single-node cluster's
``pkill -x slurmd`` does not touch them, and both clusters (or two test runs) can be up at once.

``python tests/slurm/two_nodes.py start|stop`` runs it by hand (``stop`` needs the folder and the tag printed by
``start``); the tests use `TwoNodeCluster` through a module fixture that always calls `stop`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import cluster.py as the tests do
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slurm.cluster import ClusterUnavailable, SlurmCluster, ensure_installed, ensure_munged, run

NODES = ("node1", "node2")
DAEMON_PREFIX = "tl2n-"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def free_subnet(start: int) -> str:
    """A 10.213.x /24 that no interface of this machine is in (another cluster's bridge, say), from x = `start`."""
    used = run("ip", "-o", "-4", "addr", "show", check=False)
    for step in range(250):
        subnet = f"10.213.{(start + step) % 250}"
        if f" {subnet}." not in used:
            return subnet
    raise ClusterUnavailable("every 10.213.x.0/24 subnet is in use on this machine")


class TwoNodeCluster(SlurmCluster):
    """slurmctld here, ``node1`` and ``node2`` (slurmd, 2 CPUs each) in network namespaces, configured under `root`."""

    def __init__(self, root: Path, tag: str | None = None) -> None:
        super().__init__(root)
        self.tag = tag or f"tl{os.getpid() % 100000}"  # names netns and links (<= 15 characters)
        self.subnet = free_subnet(int(self.tag[2:]))
        self.bridge = f"{self.tag}br"
        self.netns = {node: f"{self.tag}{node}" for node in NODES}
        self.addresses = {"ctl": f"{self.subnet}.1"} | {node: f"{self.subnet}.{i + 2}" for i, node in enumerate(NODES)}
        self.port = free_port()
        self.bin = root / "bin"

    def settings(self) -> dict[str, str]:
        per_node = {  # %n: each slurmd has its own spool, pid file and log
            "SlurmdSpoolDir": str(self.root / "spool" / "%n"),
            "SlurmdPidFile": str(self.root / "run" / "slurmd-%n.pid"),
            "SlurmdLogFile": str(self.root / "log" / "slurmd-%n.log"),
        }
        return (
            super().settings()
            | per_node
            | {
                "ClusterName": "twonodes",
                "SlurmctldHost": f"{self.host}({self.addresses['ctl']})",
                "SlurmctldPort": str(self.port),
            }
        )

    def node_lines(self) -> list[str]:
        return [f"NodeName={node} NodeAddr={self.addresses[node]} CPUs=2 State=UNKNOWN" for node in NODES]

    def start(self, timeout: float = 90) -> None:
        if os.geteuid() != 0:
            raise ClusterUnavailable("network namespaces and veth links need root")
        if not all(shutil.which(tool) for tool in ("ip", "nsenter", "unshare")):
            raise ClusterUnavailable("`ip` (iproute2), `nsenter` and `unshare` (util-linux) make the namespaces")
        ensure_installed()
        ensure_munged()
        self.write_config()
        self.bin.mkdir(exist_ok=True)
        for daemon in ("slurmctld", "slurmd"):
            link = self.bin / f"{DAEMON_PREFIX}{daemon}"
            link.unlink(missing_ok=True)
            link.symlink_to(shutil.which(daemon) or f"/usr/sbin/{daemon}")
        try:
            self.make_network()
            run(str(self.bin / f"{DAEMON_PREFIX}slurmctld"), "-f", str(self.conf), env=self.env)
            for node, netns in self.netns.items():
                # nsenter, not `ip netns exec`, which mounts a fresh /sys without the cgroup file system slurmd needs
                host = f"mount --bind {self.root / 'hosts'} /etc/hosts && hostname {node}"
                slurmd = f"{self.bin / DAEMON_PREFIX}slurmd -f {self.conf} -N {node}"
                namespaces = ["nsenter", f"--net=/run/netns/{netns}", "unshare", "--mount", "--uts"]
                run(*namespaces, "sh", "-c", f"{host} && exec {slurmd}")
        except ClusterUnavailable as err:
            raise ClusterUnavailable(f"{err} {self.logs()}") from None
        deadline = time.monotonic() + timeout
        states = ""
        while time.monotonic() < deadline:
            states = run("sinfo", "-h", "-N", "-o", "%N %T", env=self.env, check=False).strip()
            if states.split() == [word for node in NODES for word in (node, "idle")]:
                return
            time.sleep(0.5)
        raise ClusterUnavailable(f"the nodes did not become idle within {timeout:.0f} s ({states!r}). {self.logs()}")

    def make_network(self) -> None:
        """A bridge with the controller's address, and per node a namespace joined to it by a veth pair."""
        hosts = "".join(f"{address} {name}\n" for name, address in self.addresses.items())
        (self.root / "hosts").write_text(f"127.0.0.1 localhost\n{hosts}")
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.addresses['ctl']}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for i, (node, netns) in enumerate(self.netns.items()):
            outer = f"{self.tag}v{i}"
            run("ip", "netns", "add", netns)
            run("ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", netns)
            run("ip", "link", "set", outer, "master", self.bridge, "up")
            run("ip", "-n", netns, "addr", "add", f"{self.addresses[node]}/24", "dev", "eth0")
            run("ip", "-n", netns, "link", "set", "eth0", "up")
            run("ip", "-n", netns, "link", "set", "lo", "up")

    def logs(self) -> str:
        """The last lines of every daemon log, for a start that failed."""
        tails = []
        for log in sorted((self.root / "log").glob("*.log")):
            lines = log.read_text(errors="replace").strip().splitlines()[-3:]
            tails.append(f"{log.name}: {' | '.join(lines)}")
        return " ".join(tails)

    def stop(self) -> None:
        """Everything `start` made goes, whatever state it got to: jobs, daemons, namespaces, links, files."""
        with contextlib.suppress(subprocess.TimeoutExpired):  # a controller that is not up makes scancel wait
            run("scancel", "--full", "-u", "root", env=self.env, check=False, timeout=10)
        self.stop_daemons()
        for netns in self.netns.values():
            run("ip", "netns", "del", netns, check=False)  # its eth0 goes with it, and so does the outer end
        run("ip", "link", "del", self.bridge, check=False)

    def stop_daemons(self) -> None:
        """slurmctld by its pid file; every process of a node's namespace (slurmd, slurmstepd, job tasks)."""
        pidfile = self.root / "run" / "slurmctld.pid"
        pids = [int(pidfile.read_text())] if pidfile.exists() and pidfile.read_text().strip() else []
        for netns in self.netns.values():
            pids += [int(pid) for pid in run("ip", "netns", "pids", netns, check=False).split()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(0.1)

    def settle(self, timeout: float = 60) -> None:
        """Cancel whatever is queued or running and wait until both nodes are idle again."""
        run("scancel", "--full", "-u", "root", env=self.env, check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = set(run("sinfo", "-h", "-N", "-o", "%T", env=self.env, check=False).split())
            if states == {"idle"} and not self.squeue().strip():
                return
            if any(state.startswith("drain") for state in states):
                run("scontrol", "update", f"nodename={','.join(NODES)}", "state=resume", env=self.env, check=False)
            time.sleep(0.5)


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie counts as gone: it has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "start"
    folder = Path(os.environ.get("TRANSFERLAB_SLURM_DIR", "/tmp/transferlab-two-nodes"))
    cluster = TwoNodeCluster(folder, tag=sys.argv[2] if len(sys.argv) > 2 else None)
    if command == "start":
        try:
            cluster.start()
        except ClusterUnavailable as err:
            cluster.stop()
            sys.exit(f"error: {err}")
        print(f"cluster up: export SLURM_CONF={cluster.conf}; stop it with: {sys.argv[0]} stop {cluster.tag}")
    else:
        cluster.stop()
