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
import fcntl
import os
import socket
import struct

CLONE_NEWNET = 0x40000000
SYSCTL = "/proc/sys/net/ipv4/tcp_congestion_control"
ALLOWED = "/proc/sys/net/ipv4/tcp_allowed_congestion_control"
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
LIBC = ctypes.CDLL(None, use_errno=True)


def congestion_control():
    """The congestion control new TCP connections get in this process's namespace."""
    try:
        with open(SYSCTL) as f:
            return f.read().strip()
    except OSError:
        return "?"


def loopback_up():
    """Brings `lo` up (a new namespace starts with it down), as `ip link set lo up` does."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        # struct ifreq: the name (16 bytes), then a union whose first member is the flags.
        ifr = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def _checked(rc):
    """Raises the C library's errno as an OSError when a call returned non-zero."""
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _write(path, value):
    with open(path, "w") as f:
        f.write(value)


def set_default(cc, home):
    """Sets `cc` as the default congestion control of this process's (new) namespace.

    Outside the host's namespace the kernel accepts only a control on the host's allowed list
    (`tcp_allowed_congestion_control`), which holds the kernel's built-in default and what
    the host chose: a kernel built with BBR as its default lists "reno bbr", and CUBIC,
    though available, is refused (EPERM). Then the host's list (read and written through the
    host's namespace, `home`) gets `cc` for the instant of the write and is put back at once:
    the namespace keeps its default, and sockets made in it take that default without the
    list being consulted again."""
    try:
        _write(SYSCTL, cc)
        return
    except PermissionError:
        pass
    mine = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        # /proc/sys/net shows the namespace of the thread that opens it.
        _checked(LIBC.setns(home, CLONE_NEWNET))
        try:
            with open(ALLOWED) as f:
                allowed = f.read().strip()
            if cc in allowed.split():
                raise PermissionError(f"{cc} is already allowed and still refused")
            host_list = open(ALLOWED, "w")
        finally:
            if LIBC.setns(mine, CLONE_NEWNET) != 0:
                raise RuntimeError("could not go back to the run's namespace") from None
        with host_list:
            host_list.write(f"{allowed} {cc}")
            host_list.flush()
            try:
                _write(SYSCTL, cc)
            finally:
                host_list.seek(0)
                host_list.write(allowed)
                host_list.flush()
    finally:
        os.close(mine)


def enter(cc):
    """Moves this process (and every process it starts from now on) into a new network
    namespace whose loopback is up and whose TCP congestion control is `cc`, unless `cc` is
    "host" or already the host's. Call it before any thread starts. Returns the line the
    results header shows; when the namespace cannot be made or set up (not root, no such
    control), the process stays in (or goes back to) the host's, and the line says why."""
    host = congestion_control()
    if cc in ("host", host):
        return f"{host} (the host's)"
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        _checked(LIBC.unshare(CLONE_NEWNET))
        try:
            loopback_up()
            set_default(cc, home)
        except OSError:
            if LIBC.setns(home, CLONE_NEWNET) != 0:
                raise RuntimeError("left in a half-made network namespace") from None
            raise
    except OSError as e:
        return f"{host} (the host's: could not set {cc} in a network namespace of its own: " \
               f"{e.strerror or e})"
    finally:
        os.close(home)
    return f"{congestion_control()}, in the run's own network namespace (the host's: {host})"
