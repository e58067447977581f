"""A one-node Slurm cluster on this machine, for the tests of ``--executor slurm``.

The cluster lives in one folder: a munge key and daemon on its own socket, a ``slurm.conf`` naming
this host as the controller and the only node (its CPUs and memory from ``slurmd -C``), free ports,
``select/cons_tres`` and ``proctrack/linuxproc`` (no cgroups), no accounting daemon. The daemons
run in the foreground as children of this process, so :meth:`LocalCluster.stop` ends exactly them.
Clients find the cluster through ``SLURM_CONF``.

It needs Debian's (or Ubuntu's) packages and root (slurmd starts jobs as their users)::

    apt-get install slurm-wlm munge

Also a door for trying the Slurm path by hand (what the README shows)::

    python -m tests.slurm_fixtures start /tmp/remedi-slurm   # prints the SLURM_CONF to export
    python -m tests.slurm_fixtures stop /tmp/remedi-slurm
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo")
INSTALL_HINT = (
    "install Slurm and munge to run them (Debian/Ubuntu, as root: `apt-get install slurm-wlm "
    "munge`); the tests start a one-node cluster themselves"
)
REQUIRE_SLURM = "REMEDI_REQUIRE_SLURM"
PID_FILE = "daemons.pid"


def missing_requirements() -> str | None:
    """Why a local cluster cannot start here (None: it can)."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]
    if missing:
        return f"Slurm is not installed here ({', '.join(missing)} not on PATH); {INSTALL_HINT}"
    if os.geteuid() != 0:
        return "a local Slurm cluster's slurmd must run as root; run the Slurm tests as root"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _node_line() -> str:
    """``NodeName=<host> CPUs=... RealMemory=...`` of this machine, as slurmd sees it."""
    described = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True)
    return described.stdout.splitlines()[0].strip()


def write_config(root: Path) -> Path:
    """Write the munge key and ``slurm.conf`` of a one-node cluster under ``root``."""
    for sub in ("munge", "state", "spool", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node = _node_line()
    host = node.split()[0].split("=", 1)[1]
    controller_port, node_port = _free_ports(2)
    config = root / "slurm.conf"
    config.write_text(
        "\n".join(
            [
                "ClusterName=remeditest",
                f"SlurmctldHost={host}",
                f"SlurmctldPort={controller_port}",
                f"SlurmdPort={node_port}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={root / 'munge' / 'munge.socket'}",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'logs' / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'logs' / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                "SchedulerType=sched/builtin",
                "MpiDefault=none",
                "ReturnToService=2",
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                "JobCompType=jobcomp/none",
                # Finished jobs stay listed by squeue for a minute (the default is 300 s).
                "MinJobAge=60",
                f"{node} State=UNKNOWN",
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        ),
        encoding="utf-8",
    )
    return config


@dataclass
class LocalCluster:
    """The daemons of a one-node cluster started under ``root``; ``config`` is its SLURM_CONF."""

    root: Path
    config: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.config)}

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """A Slurm client command against this cluster."""
        return subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=60)

    def wait_idle(self, timeout: float = 90.0) -> None:
        """Wait until the node takes jobs; raise with the daemons' logs if it does not."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            dead = [p.args for p in self.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"Slurm daemon(s) exited: {dead}\n{self.logs()}")
            state = self.run("sinfo", "--noheader", "--format=%T").stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                return
            time.sleep(1.0)
        raise RuntimeError(
            f"the local Slurm node is {state!r} after {timeout:.0f} s\n{self.logs()}"
        )

    def logs(self) -> str:
        tails = []
        for log in sorted((self.root / "logs").glob("*.log")):
            lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
            tails.append(f"--- {log.name}\n" + "\n".join(lines[-15:]))
        return "\n".join(tails)

    def stop(self) -> None:
        """Cancel the cluster's jobs, then end the daemons this cluster started (by their ids)."""
        if self.processes and all(p.poll() is None for p in self.processes):
            self.run("scancel", "--full", "--user", str(os.geteuid()))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.run("squeue", "--noheader").stdout.strip():
                time.sleep(0.5)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.processes.clear()


def start_cluster(root: Path) -> LocalCluster:
    """Start munged, slurmctld and slurmd for a one-node cluster under ``root`` (empty or new)
    and wait until its node is idle (about 2 s); stop it with :meth:`LocalCluster.stop`."""
    root = Path(root).resolve()
    config = write_config(root)
    cluster = LocalCluster(root, config)
    munge = root / "munge"
    logs = root / "logs"
    commands = [
        [
            "munged",
            "--foreground",
            "--force",
            f"--key-file={munge / 'munge.key'}",
            f"--socket={munge / 'munge.socket'}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={logs / 'munged.log'}",
            f"--seed-file={munge / 'munged.seed'}",
        ],
        ["slurmctld", "-D", "-i", "-f", str(config)],
        ["slurmd", "-D", "-f", str(config)],
    ]
    try:
        for command in commands:
            cluster.processes.append(
                subprocess.Popen(
                    command,
                    env=cluster.env,
                    stdout=(logs / f"{command[0]}.out").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
            if command[0] == "munged":
                _wait_for(munge / "munge.socket", cluster)
        cluster.wait_idle()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for(path: Path, cluster: LocalCluster, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or any(p.poll() is not None for p in cluster.processes):
            raise RuntimeError(f"{path} did not appear\n{cluster.logs()}")
        time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    """``start ROOT`` (daemons detached, their ids in ROOT/daemons.pid) or ``stop ROOT``."""
    parser = argparse.ArgumentParser(description="a one-node Slurm cluster on this machine")
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("root", type=Path)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.action == "start":
        why = missing_requirements()
        if why:
            print(why, file=sys.stderr)
            return 1
        cluster = start_cluster(root)
        (root / PID_FILE).write_text(" ".join(str(p.pid) for p in cluster.processes))
        print(f"export SLURM_CONF={cluster.config}")
        return 0
    config = root / "slurm.conf"
    env = {**os.environ, "SLURM_CONF": str(config)}
    subprocess.run(["scancel", "--full", "--user", str(os.geteuid())], env=env, check=False)
    for pid in reversed((root / PID_FILE).read_text().split()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGTERM)
    (root / PID_FILE).unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
