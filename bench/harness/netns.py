"""The network the run happens in: its own network namespace with a chosen TCP congestion
control, so that the figures do not depend on the host's choice.

Why: every server and client in the run talks over loopback, where round trips take tens of
microseconds. Under BBR (some hosts' default, this project's bench machine's among them)
each flow is paced at BBR's estimate of its bandwidth, and on loopback that estimate, not the
servers, sets how fast page-cache senders go: 10 MiB hits, servers and client sharing two
cores (2026-11-27), nginx's sendfile 4.6 GB/s under BBR and 13.3 under CUBIC, Varnish 8.2
and 12.1, Strata 6.0 and 13.2. CUBIC, the kernel's default, paces nothing unless asked. The
namespace is private to the run: the host keeps its setting, and nothing is left behind when
the run ends (a namespace dies with its last process).
"""

import ctypes
import os
import subprocess

CLONE_NEWNET = 0x40000000
SYSCTL = "/proc/sys/net/ipv4/tcp_congestion_control"


def congestion_control():
    """The congestion control new TCP connections get in this process's namespace."""
    try:
        with open(SYSCTL) as f:
            return f.read().strip()
    except OSError:
        return "?"


def enter(cc):
    """Moves this process (and every process it starts from now on) into a new network
    namespace whose loopback is up and whose TCP congestion control is `cc`, unless `cc` is
    "host" or already the host's. Call it before any thread starts. Returns the line the
    results header shows; when the namespace cannot be made (not root, no unshare), says so
    and the run goes on under the host's setting."""
    host = congestion_control()
    if cc in ("host", host):
        return f"{host} (the host's)"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        return f"{host} (the host's: could not make a network namespace for {cc}: " \
               f"{os.strerror(err)})"
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
        with open(SYSCTL, "w") as f:
            f.write(cc)
    except (OSError, subprocess.CalledProcessError) as e:
        # Half made: loopback may be down. A run here would measure nothing; stop.
        raise RuntimeError(f"network namespace for {cc}: {e}") from e
    return f"{congestion_control()}, in the run's own network namespace (the host's: {host})"
