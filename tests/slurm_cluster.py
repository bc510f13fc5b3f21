"""A single-node SLURM cluster on localhost for the tests: munged, MariaDB, slurmdbd, slurmctld and
slurmd from Debian's packages (.ci/run installs them), every file under one temporary folder,
every daemon stopped by its pid.

    with SlurmCluster(tmp) as c:           # SLURM_CONF points at it while it runs
        c.sbatch("-p", "high", "--wrap", "sleep 1")

Facts that shape it: no systemd or cgroups (proctrack/linuxproc, task/none, no accounting
gather); ``slurmd -N localhost`` with ``NodeAddr=127.0.0.1`` so the host name does not matter;
``AuthInfo=cred_expire`` lowered so a requeued job may start again within seconds (default 120
s); slurmdbd because submitit reads job states with ``sacct``.  Two partitions share the node:
``low`` (the default, PreemptMode=REQUEUE) and ``high`` (a higher PriorityTier), so a job in
``high`` preempts a running ``low`` job, whose tasks get SIGTERM and which is requeued.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "mariadbd", "mariadb-install-db", "mariadb", "slurmdbd", "slurmctld", "slurmd", "sbatch",
            "squeue", "sacct", "scontrol", "sacctmgr")


def missing_binaries() -> list:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [b for b in BINARIES if shutil.which(b, path=path) is None]


def _which(b: str) -> str:
    return shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClusterError(RuntimeError):
    pass


class SlurmCluster:
    def __init__(self, root: Path, cpus: int = 2):
        self.root = Path(root)
        self.cpus = cpus
        self.pids: dict = {}  # daemon -> pid file
        self.env_before = {}

    # -- helpers ---------------------------------------------------------------------------
    def _run(self, *cmd, check=True, timeout=60, **kw):
        r = subprocess.run([_which(cmd[0]) or cmd[0], *cmd[1:]], capture_output=True, text=True, timeout=timeout,
                           **kw)
        if check and r.returncode:
            raise ClusterError(f"{' '.join(map(str, cmd))} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
        return r

    def _wait_for(self, what: str, ok, timeout: float, log: Path = None):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ok():
                return
            time.sleep(0.2)
        tail = log.read_text(errors="replace")[-1500:] if log is not None and log.exists() else ""
        raise ClusterError(f"{what} did not come up in {timeout:.0f} s\n{tail}")

    def sbatch(self, *args) -> str:
        return self._run("sbatch", "--parsable", *args).stdout.strip().split(";")[0]

    def squeue(self) -> str:
        return self._run("squeue", "-h", "-o", "%i %P %T %j").stdout

    # -- start -----------------------------------------------------------------------------
    def start(self) -> "SlurmCluster":
        r = self.root
        for d in ("munge", "db", "state", "spool", "log", "run"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        self._start_munge()
        self._start_mariadb()
        self._write_conf()
        os.environ["SLURM_CONF"] = str(r / "slurm.conf")
        self._start_daemon("slurmdbd", ["-D"], r / "log" / "slurmdbd.log", r / "run" / "slurmdbd.pid",
                           ready=lambda: self._run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0)
        self._run("sacctmgr", "-i", "add", "cluster", "flopscale-test", check=False)
        self._start_daemon("slurmctld", ["-D", "-i"], r / "log" / "slurmctld.log", r / "run" / "slurmctld.pid",
                           ready=lambda: self._run("scontrol", "ping", check=False).stdout.count("UP") >= 1)
        self._start_daemon("slurmd", ["-D", "-N", "localhost"], r / "log" / "slurmd.log", r / "run" / "slurmd.pid",
                           ready=lambda: "idle" in self._run("sinfo", "-h", "-o", "%t", check=False).stdout)
        return self

    def _spawn(self, name: str, cmd: list, log: Path) -> subprocess.Popen:
        lf = open(log, "ab")
        p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pids[name] = p
        return p

    def _start_daemon(self, name, args, log, pidfile, ready):
        p = self._spawn(name, [_which(name), *args], log)

        def ok():
            if p.poll() is not None:
                raise ClusterError(f"{name} exited with {p.returncode}: "
                                   f"{log.read_text(errors='replace')[-1500:] if log.exists() else ''}")
            return ready()

        self._wait_for(name, ok, 60, log)

    def _start_munge(self):
        r = self.root / "munge"
        key = r / "munge.key"
        self._run("mungekey", "--create", f"--keyfile={key}", "--force")
        os.chmod(key, 0o600)
        self.munge_socket = r / "munge.socket"
        self._spawn("munged", [_which("munged"), "--foreground", "--force", f"--key-file={key}",
                               f"--socket={self.munge_socket}", f"--pid-file={r / 'munged.pid'}",
                               f"--log-file={r / 'munged.log'}", f"--seed-file={r / 'munged.seed'}"],
                    self.root / "log" / "munged.out")
        self._wait_for("munged", lambda: self.munge_socket.exists(), 20, self.root / "log" / "munged.out")

    def _start_mariadb(self):
        d = self.root / "db"
        self.db_socket = d / "mysqld.sock"
        self.db_port = _free_port()
        self._run("mariadb-install-db", f"--datadir={d / 'data'}", "--user=root", "--auth-root-authentication-method=socket",
                  "--skip-test-db", timeout=180)
        self._spawn("mariadbd", [_which("mariadbd"), "--no-defaults", f"--datadir={d / 'data'}", "--user=root",
                                 f"--socket={self.db_socket}", f"--port={self.db_port}", "--bind-address=127.0.0.1",
                                 f"--pid-file={d / 'mariadbd.pid'}", "--innodb-buffer-pool-size=32M",
                                 "--skip-log-bin", "--log-error=" + str(self.root / "log" / "mariadbd.log")],
                    self.root / "log" / "mariadbd.out")
        self._wait_for("mariadbd", lambda: self.db_socket.exists(), 60, self.root / "log" / "mariadbd.log")
        sql = ("CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmtest';"
               "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmtest';"
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;")
        self._run("mariadb", "--no-defaults", f"--socket={self.db_socket}", "-uroot", "-e", sql)

    def _write_conf(self):
        r = self.root
        self.ctld_port, self.slurmd_port, self.dbd_port = _free_port(), _free_port(), _free_port()
        auth = f"AuthInfo=socket={self.munge_socket},cred_expire=5"
        (r / "slurmdbd.conf").write_text(f"""\
AuthType=auth/munge
{auth}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.dbd_port}
SlurmUser=root
LogFile={r / 'log' / 'slurmdbd.log'}
PidFile={r / 'run' / 'slurmdbd.pid'}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.db_port}
StorageUser=slurm
StoragePass=slurmtest
StorageLoc=slurm_acct_db
""")
        os.chmod(r / "slurmdbd.conf", 0o600)
        (r / "slurm.conf").write_text(f"""\
ClusterName=flopscale-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
{auth}
CredType=cred/munge
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}
SlurmdPidFile={r / 'run' / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.dbd_port}
AccountingStoragePass={self.munge_socket}
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
ReturnToService=2
KillWait=20
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=20
JobRequeue=1
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=2000 State=UNKNOWN
PartitionName=low Nodes=localhost Default=YES PriorityTier=1 PreemptMode=REQUEUE MaxTime=INFINITE State=UP
PartitionName=high Nodes=localhost PriorityTier=10 PreemptMode=OFF MaxTime=INFINITE State=UP
""")

    # -- stop ------------------------------------------------------------------------------
    def stop(self):
        """Stop every daemon by its pid (SIGTERM, then SIGKILL), slurmd first; jobs' processes
        left behind are in slurmd's session and go with a kill of its process group."""
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            p = self.pids.get(name)
            if p is None or p.poll() is not None:
                continue
            try:
                os.killpg(p.pid, signal.SIGTERM)  # its own session (start_new_session): itself and its children
            except ProcessLookupError:
                continue
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        os.environ.pop("SLURM_CONF", None)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    def logs(self) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*.log")):
            out.append(f"== {f.name}\n" + f.read_text(errors="replace")[-2000:])
        return "\n".join(out)
