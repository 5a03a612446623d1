"""Load generation and measurement: wrk runs (fixed URL, or a list of URLs sent once each),
hitload runs (bench/hitload.rs: large hits with bodies discarded in the kernel), a plain
HTTP GET, the 200-client burst of figure 3, and the origin request counter."""

import asyncio
import json
import os
import resource
import signal
import subprocess
import time

from . import procs

HERE = os.path.dirname(os.path.abspath(__file__))
LUA = os.path.join(os.path.dirname(HERE), "lua")


class LoadError(RuntimeError):
    """The load generator itself failed (not the server)."""


# The hitload binary (bench/run builds it: cargo build --release --example hitload).
HITLOAD_BIN = None
# hitload's SO_RCVLOWAT cap (see bench/hitload.rs): the client is woken per 256 KiB queued,
# not per segment, whichever server sends.
HITLOAD_LOWAT = 256 * 1024


def _parse_wrk(out, tag):
    for line in out.splitlines():
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    return None


def _run_load(name, argv, tag, duration, cpus):
    """Runs a load generator (on `cpus`, if given) and returns the JSON summary it printed
    after `tag`, with rps added; raises LoadError when it failed."""
    if cpus is not None:
        argv = ["taskset", "-c", str(cpus)] + argv
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    s = _parse_wrk(r.stdout, tag)
    if r.returncode != 0 or s is None:
        raise LoadError(f"{name} failed ({r.returncode}): {r.stdout[-500:]} {r.stderr[-500:]}")
    s["rps"] = s["requests"] / (s["duration_us"] / 1e6)
    return s


def wrk(url, conns, duration, threads=1, cpus=None, timeout_s=5):
    """Runs wrk against one URL. Returns its summary: requests, duration_us, bytes, the error
    counts (connect, read, write, status = HTTP status > 399, timeout), p50_us, p99_us."""
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", f"--timeout={timeout_s}s",
            "-s", os.path.join(LUA, "stats.lua"), url]
    s = _run_load("wrk", argv, "WRKJSON", duration, cpus)
    s["errors"] = s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"]
    return s


def hitload(url, conns, duration, cpus=None, timeout_s=5):
    """Runs hitload against one URL: the same summary as wrk() (no write errors: a failed
    write counts as a read error; `status` also counts bodies whose size did not match their
    Content-Length)."""
    if HITLOAD_BIN is None:
        raise LoadError("hitload was not built (bench/run builds it)")
    hostport, _, path = url.partition("://")[2].partition("/")
    argv = [HITLOAD_BIN, "--addr", hostport, "--path", "/" + path, "--conns", str(conns),
            "--duration", str(duration), "--timeout", str(timeout_s),
            "--lowat", str(HITLOAD_LOWAT)]
    s = _run_load("hitload", argv, "HITLOADJSON", duration, cpus)
    s["write"] = 0
    s["status"] += s.pop("length")
    s["errors"] = s["connect"] + s["read"] + s["status"] + s["timeout"]
    return s


def wrk_list(base_url, list_file, conns=16, max_duration=None):
    """Sends every path in list_file once, in order (one wrk thread, `conns` connections).
    Returns wrk's summary plus sent/got/bad (bad = responses that were not 200). The run ends
    when the last answer is in; if a request is lost to a socket error it ends after
    max_duration (default: 15 s + 1 s per 2,000 paths) with got < sent."""
    with open(list_file) as f:
        n = sum(1 for line in f if line.strip())
    if max_duration is None:
        max_duration = 15 + n // 2000
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{max_duration}s", "--timeout=10s",
            "-s", os.path.join(LUA, "urls.lua"), base_url, "--", list_file]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if line.startswith("URLSDONE"):
                # wrk sleeps for -d whatever happens: SIGINT makes it print and exit now.
                for _ in range(20):
                    p.send_signal(signal.SIGINT)
                    try:
                        p.wait(0.25)
                        break
                    except subprocess.TimeoutExpired:
                        pass
        lines.extend(p.stdout)
        p.wait(max_duration + 60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    r = subprocess.CompletedProcess(argv, p.returncode, "".join(lines), p.stderr.read())
    p.stdout.close()
    p.stderr.close()
    s = _parse_wrk(r.stdout, "WRKJSON")
    u = _parse_wrk(r.stdout, "URLSJSON")
    if s is None or u is None:
        raise LoadError(f"wrk (list) failed ({r.returncode}): {r.stdout[-500:]} "
                        f"{r.stderr[-500:]}")
    s.update(u)
    s["n"] = n
    s["errors"] = s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"]
    s["complete"] = s["got"] == n
    return s


class Response:
    def __init__(self, status, headers, body, field_bytes=0):
        self.status, self.headers, self.body = status, headers, body
        # Bytes of the header field lines (name: value CRLF), without the status line, the
        # blank line and the connection-management fields: what a cache stores of the head.
        self.field_bytes = field_bytes

    def header(self, name):
        return self.headers.get(name.lower(), "")


async def _read_response(reader):
    """Reads one HTTP/1.1 response (Content-Length, chunked, or until close)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    field_bytes = 0
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
            if k.strip().lower() not in ("connection", "keep-alive"):
                field_bytes += len(line) + 2
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.read()
    return Response(status, headers, body, field_bytes)


def get(port, path, timeout=10.0):
    """One GET on a new connection; returns a Response (raises OSError if it cannot connect)."""
    async def go():
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        try:
            w.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Connection: close\r\n\r\n".encode())
            return await asyncio.wait_for(_read_response(r), timeout)
        finally:
            w.close()
    return asyncio.run(go())


def burst(port, path, clients, timeout=30.0):
    """Opens `clients` connections, then sends one GET on each at once. Returns per client
    (ttfb_s, ttlb_s, ok) where ok means status 200 and a complete body."""
    async def go():
        conns = await asyncio.gather(*[asyncio.open_connection("127.0.0.1", port)
                                       for _ in range(clients)])
        req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

        async def one(reader, writer, t0):
            try:
                first = await reader.readexactly(1)
                ttfb = time.perf_counter() - t0
                rest = await _read_response(_Prefixed(first, reader))
                ttlb = time.perf_counter() - t0
                return ttfb, ttlb, rest.status == 200 and len(rest.body) > 0
            except (OSError, asyncio.IncompleteReadError, ValueError):
                return None, None, False
            finally:
                writer.close()

        starts = []
        for _, w in conns:  # every request is written before any answer is read
            starts.append(time.perf_counter())
            w.write(req)
        tasks = [one(r, w, t0) for (r, w), t0 in zip(conns, starts)]
        return await asyncio.wait_for(asyncio.gather(*tasks), timeout)
    return asyncio.run(go())


class _Prefixed:
    """A stream reader with bytes already read put back in front."""

    def __init__(self, prefix, reader):
        self.buf, self.reader = prefix, reader

    async def _fill(self, n):
        while len(self.buf) < n:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise asyncio.IncompleteReadError(self.buf, n)
            self.buf += chunk

    async def readuntil(self, sep):
        while sep not in self.buf:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise asyncio.IncompleteReadError(self.buf, None)
            self.buf += chunk
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    async def readexactly(self, n):
        await self._fill(n)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    async def read(self, n=-1):
        if self.buf:
            out, self.buf = self.buf, b""
            return out
        return await self.reader.read(n)


class OriginCounter:
    """Counts origin requests and body bytes from the origin nginx's access log (one line per
    request: path and body bytes, written unbuffered)."""

    def __init__(self, log_path):
        self.path = log_path

    def mark(self):
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def since(self, mark, settle=0.15):
        """(requests, bytes, paths) logged after `mark`."""
        time.sleep(settle)  # the origin logs after it has sent the response
        try:
            with open(self.path, "rb") as f:
                f.seek(mark)
                data = f.read()
        except OSError:
            return 0, 0, []
        reqs, nbytes, paths = 0, 0, []
        for line in data.decode("latin-1").splitlines():
            parts = line.split()
            if len(parts) == 2:
                reqs += 1
                nbytes += int(parts[1]) if parts[1].isdigit() else 0
                if len(paths) < 5:
                    paths.append(parts[0])
        return reqs, nbytes, paths


def machine_cpu():
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / procs.CLK_TCK


def children_cpu():
    """CPU seconds used by the harness's finished children (wrk runs)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def server_cpu(server):
    return procs.cpu_seconds(server.pids())


def tcp_counters():
    """The machine's TCP counters that show how loopback traffic was carried: segments sent
    (data and ACKs, both directions: on loopback every segment is sent once and received
    once) and segments the receiving side merged into the one queued before it (on arrival
    or from the socket's backlog). From /proc/net/snmp and /proc/net/netstat."""
    got = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        # Each group is a line of names followed by a line of values, both "Group: ...".
        for names, values in zip(lines[::2], lines[1::2]):
            group, _, ns = names.partition(": ")
            for n, v in zip(ns.split(), values.partition(": ")[2].split()):
                got[f"{group}.{n}"] = int(v)
    return {"segments": got.get("Tcp.OutSegs", 0),
            "merged": got.get("TcpExt.TCPRcvCoalesce", 0)
            + got.get("TcpExt.TCPBacklogCoalesce", 0)}


def wait_closed(port, timeout=10.0):
    """Waits until nothing accepts on the port (a stopped server's port is free again)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and procs.port_open(port):
        time.sleep(0.05)
