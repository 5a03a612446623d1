"""Starting, watching and stopping the benchmark's processes; reading CPU time and memory
of a process tree from /proc.

Every process is started in its own session (so a Ctrl-C in the terminal reaches only the
harness) and recorded; `stop_all()` stops each one by its PID: SIGTERM, then SIGKILL to its
own process group if it has not exited in time.
"""

import os
import signal
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")

_started = []  # every Proc, in start order


class StartError(RuntimeError):
    """A server did not come up (exited, or its port never opened)."""


class Proc:
    """One started process (a server, with its children if it forks)."""

    def __init__(self, name, argv, log_path, env=None, cpus=None, cwd=None):
        self.name = name
        if cpus is not None:
            # taskset execs the program: the PID stays the server's, children inherit the mask.
            argv = ["taskset", "-c", str(cpus)] + list(argv)
        self.argv = argv
        self.log_path = log_path
        full_env = dict(os.environ)
        full_env.update(env or {})
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self.started_at = time.monotonic()
        _started.append(self)

    def alive(self):
        return self.popen.poll() is None

    def log_tail(self, n=15):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""

    def wait_port(self, port, timeout=20.0):
        """Waits until 127.0.0.1:port accepts; StartError if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise StartError(
                    f"{self.name} exited with {self.popen.returncode} before listening on "
                    f"{port}; last log lines:\n{self.log_tail()}"
                )
            if port_open(port):
                return
            time.sleep(0.02)
        raise StartError(f"{self.name} did not listen on {port} within {timeout:.0f}s:\n"
                         f"{self.log_tail()}")

    def stop(self, timeout=10.0):
        """Stops the process by its PID (SIGTERM, then SIGKILL of its own process group)."""
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Forked children (nginx workers, the Varnish child) share the group we created.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.alive():
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self in _started:
            _started.remove(self)
        self._log.close()

    def tree(self):
        """PIDs of this process and all its descendants."""
        return descendants(self.pid)


def stop_all():
    """Stops every process still running, newest first."""
    for p in reversed(list(_started)):
        try:
            p.stop(timeout=5.0)
        except Exception as e:  # keep stopping the others
            print(f"bench: could not stop {p.name} ({p.pid}): {e}")


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def check_ports_free(ports):
    busy = [p for p in ports if port_open(p)]
    if busy:
        raise StartError(f"ports already in use on 127.0.0.1: {busy} "
                         f"(another bench run? choose others with --base-port)")


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    # The command name may hold spaces: the fields start after its closing parenthesis.
    return s[s.rindex(")") + 2:].split()


def descendants(pid):
    """pid and every process below it (read from /proc)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(_stat_fields(d)[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids):
    """User + system CPU seconds used so far by these processes (all their threads)."""
    total = 0
    for pid in pids:
        try:
            f = _stat_fields(pid)
            total += int(f[11]) + int(f[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return total / CLK_TCK


def _status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_bytes(pids):
    """Sum of VmRSS (shared pages of forked processes would count once per process)."""
    return sum(_status_kb(p, "VmRSS") for p in pids) * 1024


def pss_bytes(pids):
    """Sum of proportional set sizes: memory of a process tree with shared pages counted once."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total * 1024


def dir_bytes(path):
    """Bytes a directory tree occupies (allocated blocks: on a tmpfs, the memory it holds)."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total
