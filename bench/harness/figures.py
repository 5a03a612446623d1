"""The six figures. Each starts the servers it needs, runs the same load against each in
turn (rounds interleaved: Strata, nginx, Varnish, Strata, nginx, Varnish, ...), stops them,
and adds medians to the Results."""

import bisect
import os
import random
import shutil
import threading
import time
from typing import NamedTuple

from . import load, procs
from .results import Row, median
from .servers import NginxCache, StaticRef, Strata, StrataDiskOnly, Varnish

KIB, MIB = 1024, 1024 * 1024


class Crash(RuntimeError):
    """A server under test died during a figure."""


class Plan:
    """How much to run: the default plan stays under 10 minutes, --quick under 2."""

    def __init__(self, quick):
        self.quick = quick
        # Many one-second rounds rather than a few long ones. The bench's shared hosts have
        # spells, from under a second to tens of seconds, in which a core runs at half to
        # two thirds of its speed (another tenant on its sibling thread: the same spin loop,
        # pinned, gave 400 to 700 loops per half second on one 2.5 GHz Xeon host; no steal
        # time shows), each core on its own. A round's ratio is sound only if no spell began
        # or ended within it, so the shorter a round the more of them are; the median of
        # eight tolerates three that are not. One second is wrk's shortest run.
        self.rounds = 1 if quick else 8
        self.duration = 1                          # seconds per load run
        self.warmup = 0 if quick else 1            # seconds, once per (load, server)
        self.burst_clients = 200
        self.burst_rounds = 1 if quick else 5      # figure 3: each round takes ~1.5 s a server
        self.slow_delay, self.slow_trickle = 1.0, 0.5
        self.mem_objects = 2_000 if quick else 100_000
        self.zipf_budget_mb = 4 if quick else 32
        self.zipf_requests = 20_000 if quick else 150_000
        self.cold_objects = 2_000 if quick else 100_000
        self.cold_restarts = 1 if quick else 3


class HitLoad(NamedTuple):
    """One load of figures 1 and 2."""
    fig: str                 # "1" or "2"
    label: str               # the object, as the tables name it
    path: str
    size: int                # body bytes
    conns: int
    with_ref: bool           # the static nginx runs it too (a reference ceiling)
    client: str              # "wrk" or "hitload"
    modes: tuple = ("pinned", "unpinned")


# Large hits run with two load generators: hitload, which discards bodies in the kernel so
# that the server is the bottleneck and the throughput measures it (the target rows), and
# wrk, which copies every body and is itself the bottleneck at these sizes (what each
# server's segments cost a copying client; the CPU-per-GB target row). There is no 100 KiB
# wrk load: it carried no target, and the full run must stay under 10 minutes.
HIT_LOADS = [
    HitLoad("1", "1 KiB", "/obj/1k.bin", KIB, 64, True, "wrk"),
    HitLoad("1", "1 KiB", "/obj/1k.bin", KIB, 256, False, "wrk"),
    HitLoad("2", "100 KiB", "/obj/100k.bin", 100 * KIB, 64, False, "hitload"),
    HitLoad("2", "10 MiB", "/obj/10m.bin", 10 * MIB, 16, False, "hitload"),
    HitLoad("2", "10 MiB", "/obj/10m.bin", 10 * MIB, 16, False, "wrk"),
]


def make_objects(env, plan):
    """Writes the origin's files: the hit objects, figure 4/6's small objects, figure 5's
    catalogue. Returns the Zipf catalogue [(path, size)]."""
    rnd = random.Random(42)
    obj = os.path.join(env.docroot, "obj")
    os.makedirs(obj, exist_ok=True)
    for name, size in (("1k.bin", KIB), ("100k.bin", 100 * KIB), ("10m.bin", 10 * MIB)):
        with open(os.path.join(obj, name), "wb") as f:
            f.write(rnd.randbytes(size))
    small = os.path.join(env.docroot, "small")
    os.makedirs(small, exist_ok=True)
    block = rnd.randbytes(KIB)
    for i in range(max(plan.mem_objects, plan.cold_objects)):
        with open(os.path.join(small, f"{i}.bin"), "wb") as f:
            tag = b"%08d" % i
            f.write(tag + block[len(tag):])
    # Figure 5: sizes log-uniform in 1..64 KiB until the catalogue is 10x the memory budget.
    zdir = os.path.join(env.docroot, "zipf")
    os.makedirs(zdir, exist_ok=True)
    catalogue, total, budget = [], 0, plan.zipf_budget_mb * MIB
    big = rnd.randbytes(64 * KIB)
    while total < 10 * budget:
        size = int(KIB * 64 ** rnd.random())
        i = len(catalogue)
        with open(os.path.join(zdir, f"{i}.bin"), "wb") as f:
            tag = b"%08d" % i
            f.write(tag + big[len(tag):size])
        catalogue.append((f"/zipf/{i}.bin", size))
        total += size
    return catalogue


def write_list(path, paths):
    with open(path, "w") as f:
        f.write("\n".join(paths) + "\n")
    return path


def check_alive(servers):
    for s in servers:
        if not s.alive():
            raise Crash(f"{s.label} is not running any more (exit {s.proc.popen.returncode if s.proc else '?'}); "
                        f"last log lines:\n{s.proc.log_tail() if s.proc else ''}")


def warm(servers, paths, counter, results, what):
    """Fetches each path twice from each server (miss, then hit), checks 200 and the length,
    then checks a third fetch reaches no origin."""
    for s in servers:
        for path, size in paths:
            for _ in range(2):
                r = load.get(s.port, path)
                if r.status != 200 or len(r.body) != size:
                    results.warn(f"{what}: {s.label} answered {path} with {r.status}, "
                                 f"{len(r.body)} bytes (expected 200, {size})")
        mark = counter.mark()
        for path, _ in paths:
            load.get(s.port, path)
        n, _, seen = counter.since(mark)
        if n:
            results.warn(f"{what}: {s.label} still went to the origin after warming "
                         f"({n} requests, e.g. {seen})")


def send_list(s, list_file, results, what):
    """Sends a list of paths to server s (see load.wrk_list); warns about anything but a
    complete run of 200s."""
    r = load.wrk_list(s.url(""), list_file, conns=16)
    if r["bad"] or r["errors"] or not r["complete"]:
        results.warn(f"{what}: {s.label}: {r['got']:,} answers for {r['n']:,} requests, "
                     f"{r['bad']} not 200; socket errors: connect {r['connect']}, read "
                     f"{r['read']}, write {r['write']}, timeout {r['timeout']}")
    return r


def _stop(servers):
    for s in servers:
        s.stop()


# -- figures 1 and 2 ----------------------------------------------------------------------

def hit_figures(env, plan, results, counter, mode):
    """Figures 1 and 2 in one mode: 'pinned' (servers on core 0, one worker; wrk on core 1)
    or 'unpinned' (servers with workers = cores, wrk with 2 threads, all sharing the cores).
    In the unpinned mode figure 3 runs too, on the same servers."""
    pinned = mode == "pinned"
    cpus = 0 if pinned else None
    workers = 1 if pinned else None
    servers = [
        Strata(env, f"hits-{mode}", memory="512MB", disk=env.path(f"strata-disk-{mode}"),
               cpus=cpus, workers=workers),
        NginxCache(env, f"hits-{mode}", cache_dir=env.path(f"nginx-cache-{mode}"),
                   cpus=cpus, workers=1 if pinned else "auto"),
        Varnish(env, f"hits-{mode}", size="512m", cpus=cpus),
    ]
    ref = StaticRef(env, cpus=cpus, workers=1 if pinned else "auto")
    # The 10 MiB object once more, from a Strata whose memory tier may not hold it.
    disk_only = StrataDiskOnly(env, f"hits-{mode}-disk", disk=env.path(f"strata-disk-only-{mode}"),
                               cpus=cpus, workers=workers)
    wrk_cpus, wrk_threads = (1, 1) if pinned else (None, 2)
    title = ("pinned: server on core 0 (1 worker), wrk on core 1" if pinned
             else "unpinned: servers with workers = cores, wrk -t2, sharing both cores")
    print(f"\n== figures 1-2, {title}", flush=True)
    try:
        for s in servers + [ref, disk_only]:
            s.start()
        loads = [h for h in HIT_LOADS if mode in h.modes]
        objects = sorted({(h.path, h.size) for h in loads})
        warm(servers, objects, counter, results, f"{mode} warm-up")
        warm([disk_only], [(p, size) for p, size in objects if size == 10 * MIB], counter,
             results, f"{mode} warm-up")

        runs = {}  # (load index, server name) -> [summary]

        def one(i, s, duration):
            fig, label, path, size, conns, _, client, _ = loads[i]
            mark = counter.mark()
            cpu0, box0, wrk0 = load.server_cpu(s), load.machine_cpu(), load.children_cpu()
            tcp0 = load.tcp_counters()
            if client == "hitload":
                r = load.hitload(s.url(path), conns, duration, cpus=wrk_cpus)
                # Every body it counted must have been the object's size.
                wrong = r["requests"] * size - r["bytes"]
                if wrong:
                    r["status"] += 1
                    r["errors"] += 1
                    results.warn(f"{mode} {label} @{conns} (hitload): {s.label} sent "
                                 f"{r['bytes']} body bytes for {r['requests']} responses")
            else:
                r = load.wrk(s.url(path), conns, duration, threads=wrk_threads, cpus=wrk_cpus)
            r["cpu_s"] = load.server_cpu(s) - cpu0
            r["tcp"] = {k: v - tcp0[k] for k, v in load.tcp_counters().items()}
            # What else ran meanwhile (other people's builds on a shared box, the harness):
            # machine busy time minus the server's and the load generator's.
            wrk_s = load.children_cpu() - wrk0
            r["wrk_cores"] = wrk_s / (r["duration_us"] / 1e6)
            r["other_cores"] = ((load.machine_cpu() - box0) - r["cpu_s"]
                                - wrk_s) / (r["duration_us"] / 1e6)
            r["origin"], _, seen = counter.since(mark)
            check_alive([s])
            if r["errors"]:
                results.warn(f"{mode} {label} @{conns} ({client}): {s.label} had {r['errors']} errors "
                             f"(connect {r['connect']}, read {r['read']}, write {r['write']}, "
                             f"status>399 {r['status']}, timeout {r['timeout']})")
            if r["origin"] and s is not ref:
                results.warn(f"{mode} {label} @{conns} ({client}): {s.label} sent {r['origin']} requests "
                             f"to the origin during a hit run (e.g. {seen})")
            return r

        def targets(i):
            h = loads[i]
            return (servers + ([ref] if h.with_ref else [])
                    + ([disk_only] if h.size == 10 * MIB and h.client == "hitload" else []))

        warmed = set()  # (server, path): one warm-up run per server and object
        for i, h in enumerate(loads):  # warm-up runs, not counted
            for s in targets(i):
                if plan.warmup and (s.name, h.path) not in warmed:
                    warmed.add((s.name, h.path))
                    one(i, s, plan.warmup)
        for rnd in range(plan.rounds):
            for i, (fig, label, path, size, conns, _, client, _) in enumerate(loads):
                line = []
                # Each round starts one server further on (A B C, B C A, ...): no server is
                # always the first after a change of load, or always the neighbour of one.
                ts = targets(i)
                for s in ts[rnd % len(ts):] + ts[:rnd % len(ts)]:
                    r = one(i, s, plan.duration)
                    runs.setdefault((i, s.name), []).append(r)
                    line.append(f"{s.name} {r['rps']:,.0f}/s p99 {r['p99_us'] / 1000:.2f}ms")
                print(f"  round {rnd + 1} {label} @{conns} {client}: " + ", ".join(line),
                      flush=True)

        other = max(0.0, median([r["other_cores"] for rs in runs.values() for r in rs]))
        results.notes.append(
            f"Figures 1-2 {mode}: other processes on the machine used a median "
            f"{other:.2f} cores during the runs (machine busy time minus server and load "
            f"generator).")
        if pinned:
            results.notes.append(
                "Figure 2, two load generators. hitload (bench/hitload.rs) reads each "
                "response's head, checks status and Content-Length, and discards the body in "
                "the kernel (recv with MSG_TRUNC, woken per 256 KiB queued): the server is "
                "the bottleneck, so its throughput rows measure the servers and carry the "
                "target. wrk copies every body 8 KiB at a time and is itself the bottleneck "
                "at these sizes: its rows show what each server's segments cost a copying "
                "client on loopback, and the server CPU per GB at 10 MiB.")
            results.notes.append(
                "Figure 2, segments and merges at 10 MiB (wrk): the machine's TCP counters over each "
                "run (Tcp OutSegs; TcpExt TCPRcvCoalesce + TCPBacklogCoalesce) per GB of body. "
                "A segment sent from the page cache (sendfile, or splice from a pipe) holds 16 "
                "page-sized fragments, "
                "and the receiver merges queued segments only up to 17 fragments, so it never "
                "merges two of them; copied data sits in a few large fragments and does merge. "
                "Unmerged, wrk handles and acknowledges every segment: more segments per GB is "
                "more of its (bottleneck) core per byte.")
            results.notes.append(
                "Figure 2, 10 MiB from the disk tier only: a second Strata whose memory tier "
                "holds no body over 1 MB (`<MemoryMaxObject>1MB</MemoryMaxObject>`), so the "
                "object lives only in its disk tier (tmpfs), as a catalogue of large files "
                "behind a small memory tier does. Its values stand in Strata's column beside "
                "the same rounds of nginx (whose cache is files in the page cache anyway) and "
                "Varnish.")
        if other > 0.15:
            results.warn(f"{mode}: the machine was not quiet: other processes used "
                         f"{other:.2f} cores (median) during the load runs; absolute numbers "
                         f"are low and ratios are noisier than usual")
        for i, (fig, label, path, size, conns, with_ref, client, _) in enumerate(loads):
            names = [s.name for s in targets(i)]

            def each(f):
                """One metric: each server's value per round (for the rounds' own ratios)."""
                return {n: [f(r) for r in runs[(i, n)]] for n in names}

            rps = each(lambda r: r["rps"])
            p50 = each(lambda r: r["p50_us"] / 1000)
            p99 = each(lambda r: r["p99_us"] / 1000)
            cores = each(lambda r: r["cpu_s"] / (r["duration_us"] / 1e6))
            wrk_cores = each(lambda r: r["wrk_cores"])
            per_core = each(lambda r: r["requests"] / r["cpu_s"] if r["cpu_s"] > 0 else None)
            mbs = each(lambda r: r["rps"] * size / 1e6)

            def per_gb(f):
                """A run's amount f(r) per GB of body served."""
                return each(lambda r: f(r) / (r["requests"] * size / 1e9)
                            if r["requests"] else None)

            cpu_gb = per_gb(lambda r: r["cpu_s"])

            def row(metric, unit, per_round, better=None, target=None, fmt="{:,.0f}"):
                medians = {n: median(xs) for n, xs in per_round.items()}
                return Row(figname, metric, unit, medians, better, target, fmt=fmt,
                           rounds=per_round)
            extra = []  # rows with their own flags (the disk-only Strata's)
            flags = {}
            for n in names:
                err = sum(r["errors"] for r in runs[(i, n)])
                org = sum(r["origin"] for r in runs[(i, n)])
                f = []
                if err:
                    f.append(f"{err} errors")
                if org and n != "static":
                    f.append(f"{org} origin req")
                if f:
                    flags[n] = ", ".join(f)
            if fig == "1":
                figname = "Figure 1: 1 KiB hits"
                key = f"{mode}, {conns} conns"
                head = pinned and conns == 64
                unp64 = not pinned and conns == 64
                rows = [
                    row(f"req/s, {key}", "req/s", rps, "high",
                        1.2 if head else (1.1 if unp64 else None)),
                    row(f"p50, {key}", "ms", p50, "low", fmt="{:.2f}"),
                    row(f"p99, {key}", "ms", p99, "low", 1.0 if (head or unp64) else None,
                        fmt="{:.2f}"),
                    row(f"req/s per server core, {key}", "req/s/core", per_core, "high"),
                    row(f"server cores busy, {key}", "cores", cores, fmt="{:.2f}"),
                    row(f"wrk cores busy, {key}", "cores", wrk_cores, fmt="{:.2f}"),
                ]
            elif client == "hitload":
                figname = "Figure 2: large hits"
                key = f"{label}, {mode}, {conns} conns, hitload"
                rows = [
                    row(f"throughput, {key}", "MB/s", mbs, "high", 1.0),
                    row(f"p99, {key}", "ms", p99, "low", fmt="{:.1f}"),
                    row(f"server CPU per GB, {key}", "CPU s/GB", cpu_gb, "low", fmt="{:.3f}"),
                    row(f"server cores busy, {key}", "cores", cores, fmt="{:.2f}"),
                    row(f"hitload cores busy, {key}", "cores", wrk_cores, fmt="{:.2f}"),
                ]
                if size == 10 * MIB:
                    def disk_tier(per_round):
                        # The disk-only Strata in Strata's column, beside the same peers' runs.
                        return {("strata" if n == "strata_disk" else n): v
                                for n, v in per_round.items() if n != "strata"}
                    where = f"{label} from the disk tier only, {mode}, {conns} conns, hitload"
                    extra += [
                        row(f"throughput, {where}", "MB/s", disk_tier(mbs), "high"),
                        row(f"server CPU per GB, {where}", "CPU s/GB", disk_tier(cpu_gb), "low",
                            fmt="{:.3f}"),
                    ]
                    for r in extra:
                        r.flags = disk_tier(flags)
            else:
                figname = "Figure 2: large hits"
                key = f"{label}, {mode}, {conns} conns, wrk"
                rows = [
                    row(f"throughput, {key}", "MB/s", mbs, "high"),
                    row(f"p99, {key}", "ms", p99, "low", fmt="{:.1f}"),
                    row(f"server CPU per GB, {key}", "CPU s/GB", cpu_gb, "low",
                        1.0 if size == 10 * MIB else None, fmt="{:.3f}"),
                    row(f"server cores busy, {key}", "cores", cores, fmt="{:.2f}"),
                    row(f"wrk cores busy, {key}", "cores", wrk_cores, fmt="{:.2f}"),
                    # What each server's bytes cost the load generator (its bottleneck when
                    # wrk is ~1 core busy per thread).
                    row(f"wrk CPU per GB, {key}", "CPU s/GB",
                        per_gb(lambda r: r["wrk_cores"] * r["duration_us"] / 1e6), fmt="{:.3f}"),
                ]
                if size == 10 * MIB:
                    # Why the 10 MiB rows come out as they do (see the note on figure 2).
                    rows += [
                        row(f"loopback TCP segments per GB, {key}", "segments/GB",
                            per_gb(lambda r: r["tcp"]["segments"])),
                        row(f"segments merged by the receiver per GB, {key}", "merges/GB",
                            per_gb(lambda r: r["tcp"]["merged"])),
                    ]
            for r in rows:
                r.flags = flags
                results.add(r)
            for r in extra:
                results.add(r)

        if not pinned:
            collapse_figure(env, plan, results, counter, servers)
    finally:
        _stop(servers + [ref, disk_only])


# -- figure 3 -----------------------------------------------------------------------------

def collapse_figure(env, plan, results, counter, servers):
    print(f"\n== figure 3: {plan.burst_clients} clients at once on a cold object "
          f"(origin: {plan.slow_delay:g} s to first byte, body over {plan.slow_trickle:g} s more)",
          flush=True)
    # The origin's own time to first byte, through the origin nginx (as the caches see it).
    before = counter.mark()
    direct = load.burst(env.ports.origin, f"/slow/direct-{os.getpid()}.bin", 1)
    origin_ttfb = direct[0][0]
    # The origin logs a request once it has sent it; wait for that line (at most 2 s), or
    # it lands in the first server's count.
    for _ in range(20):
        if counter.since(before, settle=0.1)[0] >= 1:
            break
    runs = {s.name: [] for s in servers}
    for rnd in range(plan.burst_rounds):
        line = []
        for s in servers:
            path = f"/slow/r{rnd}-{s.name}-{os.getpid()}-{time.time_ns()}.bin"
            mark = counter.mark()
            res = load.burst(s.port, path, plan.burst_clients)
            n, _, paths = counter.since(mark, settle=0.3)
            check_alive([s])
            ttfb = sorted(t for t, _, ok in res if t is not None)
            ttlb = sorted(t for _, t, ok in res if t is not None)
            bad = sum(1 for _, _, ok in res if not ok)
            r = {"origin": n, "bad": bad,
                 "ttfb_p50": median(ttfb) if ttfb else None,
                 "ttfb_max": ttfb[-1] if ttfb else None,
                 "ttlb_p50": median(ttlb) if ttlb else None}
            runs[s.name].append(r)
            if bad:
                results.warn(f"collapse: {s.label}: {bad} of {plan.burst_clients} clients got "
                             f"no complete 200")
            if n != 1:
                results.warn(f"collapse: {s.label} sent {n} requests to the origin for one "
                             f"cold object fetched by {plan.burst_clients} clients at once "
                             f"(paths: {', '.join(paths)})")
            line.append(f"{s.name} origin×{n} ttfb p50 {1000 * (r['ttfb_p50'] or 0):.0f}ms "
                        f"max {1000 * (r['ttfb_max'] or 0):.0f}ms")
        print(f"  round {rnd + 1}: " + ", ".join(line), flush=True)

    def med(f):
        return {n: median([f(r) for r in rs]) for n, rs in runs.items()}

    fig = f"Figure 3: {plan.burst_clients} clients on a cold object"
    ms = lambda x: None if x is None else 1000 * x  # noqa: E731
    results.add(Row(fig, "origin requests", "count", med(lambda r: r["origin"]), "low", 1,
                    absolute=True, fmt="{:g}"))
    results.add(Row(fig, "waiters' TTFB p50", "ms", med(lambda r: ms(r["ttfb_p50"])), "low",
                    fmt="{:.0f}"))
    results.add(Row(fig, "waiters' TTFB max", "ms", med(lambda r: ms(r["ttfb_max"])), "low",
                    fmt="{:.0f}"))
    results.add(Row(fig, "waiters' TTFB max − origin's TTFB", "ms",
                    med(lambda r: ms(r["ttfb_max"] - origin_ttfb) if r["ttfb_max"] else None),
                    "low", 50, absolute=True, fmt="{:.0f}"))
    results.add(Row(fig, "time to last byte p50", "ms", med(lambda r: ms(r["ttlb_p50"])), "low",
                    fmt="{:.0f}"))
    results.notes.append(
        f"Figure 3: the origin's own time to first byte was {1000 * origin_ttfb:.0f} ms "
        f"(its body then takes {1000 * plan.slow_trickle:.0f} ms more); a new URL per round "
        f"and server.")


# -- figure 4 -----------------------------------------------------------------------------

def _memory(s, cache_dir=None):
    m = procs.pss_bytes(s.pids())
    if cache_dir:
        m += procs.dir_bytes(cache_dir)
    return m


def _settle(env, release):
    """Lets a filled server come to rest before its memory is read. With `release`, Strata
    also returns the pages its allocator holds free (`/command/releasememory`): growing the
    index table frees the old one (5 MB at 50,000 objects), and jemalloc gives such pages
    back only as they age, so a reading a second later counted all, part or none of them:
    the index overhead read 148-208 B/object from run to run, and 163-169 with the release."""
    time.sleep(1.0)
    if release:
        r = load.get(env.ports.strata_manager, "/command/releasememory")
        if r.status != 200:
            raise Crash(f"Strata's /command/releasememory answered {r.status}")
        time.sleep(0.3)


def memory_figure(env, plan, results, counter):
    n = plan.mem_objects
    print(f"\n== figure 4: memory with {n:,} cached 1 KiB objects", flush=True)
    cache_dir = env.path("nginx-cache-mem")
    servers = [Strata(env, "mem", memory="1024MB", disk=None),
               NginxCache(env, "mem", cache_dir=cache_dir, keys_zone="64m"),
               Varnish(env, "mem", size="1024m")]
    # The index alone: Strata with its objects on a disk tier (on tmpfs, like nginx's cache
    # directory) and a memory tier too small to hold them.
    indexed = Strata(env, "idx", memory="1MB", disk=env.path("strata-disk-idx"))
    paths = [f"/small/{i}.bin" for i in range(n)]
    # Filled in two halves: the cost per object is the growth over the second half, so
    # what comes up once (pools, per-thread caches, buffers) is not spread over the objects.
    halves = (write_list(env.path("mem-urls-1.txt"), paths[:n // 2]),
              write_list(env.path("mem-urls-2.txt"), paths[n // 2:]))
    second = n - n // 2
    sample = write_list(env.path("mem-sample.txt"),
                        random.Random(7).sample(paths, min(1000, n)))
    after, per, over, kept, index, strata_rss, own = {}, {}, {}, {}, {}, None, {}
    # What a cache has to keep of each response besides the body: its header fields.
    fields = load.get(env.ports.origin, paths[0]).field_bytes

    def fill(s, cdir=None, release=False):
        """Fills s with the n objects; (memory after, memory per object, process memory per
        object), memory as in `_memory` (cdir: a cache directory counted with the server),
        per object over the second half of the fill. release: before each reading, have
        Strata hand its allocator's free pages back (see `_settle`)."""
        send_list(s, halves[0], results, "memory fill")
        _settle(env, release)
        base, proc_base = _memory(s, cdir), procs.pss_bytes(s.pids())
        send_list(s, halves[1], results, "memory fill")
        _settle(env, release)
        total = _memory(s, cdir)
        return (total, (total - base) / second,
                (procs.pss_bytes(s.pids()) - proc_base) / second)

    try:
        for s in servers:
            s.start()
        for s in servers:
            cdir = cache_dir if s.name == "nginx" else None
            after[s.name], per[s.name], proc_per = fill(s, cdir)
            if s.name == "nginx":
                index["nginx"] = proc_per  # its keys zone; the objects are files on tmpfs
            if s.name == "strata":
                strata_rss = procs.rss_bytes(s.pids())
                own = strata_metrics(env)
            over[s.name] = per[s.name] - KIB
            mark = counter.mark()
            send_list(s, sample, results, "memory sample")
            missed, _, _ = counter.since(mark)
            kept[s.name] = 100.0 * (1 - missed / min(1000, n))
            check_alive([s])
            print(f"  {s.label}: {after[s.name] / MIB:,.1f} MiB after, "
                  f"{per[s.name]:,.0f} B/object, {kept[s.name]:.1f}% of a sample still cached",
                  flush=True)
        _stop(servers)
        indexed.start()
        _, _, index["strata"] = fill(indexed, release=True)
        own_idx = strata_metrics(env)
        check_alive([indexed])
        print(f"  {indexed.label} with a disk tier: {index['strata']:,.0f} B/object of process "
              f"memory (nginx: {index['nginx']:,.0f}); its own accounting: index "
              f"{own_idx.get('strata_store_index_bytes', 0) / n:,.0f} B/object, memory tier "
              f"{own_idx.get('strata_store_memory_bytes', 0) / MIB:,.1f} MiB", flush=True)
    finally:
        _stop(servers + [indexed])
    fig = f"Figure 4: memory, {n:,} cached 1 KiB objects"
    results.add(Row(fig, "memory after the fill", "MiB", {k: v / MIB for k, v in after.items()},
                    "low", fmt="{:,.1f}"))
    results.add(Row(fig, "memory per cached object", "bytes", per, "low"))
    results.add(Row(fig, "overhead per object beyond its 1 KiB body", "bytes", over, "low"))
    results.add(Row(fig, f"overhead per object beyond the body and its {fields} bytes of "
                    "header fields", "bytes", {k: v - fields for k, v in over.items()}, "low"))
    results.add(Row(fig, "index overhead per object (objects on tmpfs, process memory)",
                    "bytes", index, "low", 200, absolute=True))
    results.add(Row(fig, "sample of 1,000 still cached", "%", kept, "high", fmt="{:.1f}"))
    results.notes.append(
        "Figure 4: memory = proportional set size (Pss) of the server's processes, plus for "
        "nginx the size of its cache directory on tmpfs; per object = growth over the second "
        f"half of the fill / {second:,} (what is set up once is not counted per object; it is "
        "in 'memory after the fill'). Strata runs memory-only here. Strata's VmRSS after the fill: "
        f"{(strata_rss or 0) / MIB:,.1f} MiB. The origin's header fields of each object "
        f"(without connection fields) are {fields} bytes.")
    results.notes.append(
        "Figure 4, index overhead: what a server's processes grow by per object when the "
        "objects themselves (headers and body) sit in files on tmpfs — nginx's keys zone and "
        "workers as run above; Strata run again with a disk tier on tmpfs and a 1 MB memory "
        "tier (its index entry, full key, S3-FIFO slot), read after it handed its allocator's "
        "free pages back (/command/releasememory). Varnish keeps no index apart from its "
        "storage.")
    if own.get("strata_store_objects"):
        objs = own["strata_store_objects"]
        results.notes.append(
            f"Figure 4: Strata's own accounting after the memory-only fill: {objs:,.0f} "
            f"objects, memory tier {own.get('strata_store_memory_bytes', 0) / objs:,.0f} "
            "B/object charged (bodies, metas, header fields, index slots, allocator rounding), "
            f"of which the index {own.get('strata_store_index_bytes', 0) / objs:,.0f} "
            "B/object; the rest of the measured memory is allocator free space and the "
            "runtime.")


def strata_metrics(env):
    """Strata's gauges from its manager's /metrics (name -> value); {} if unreachable."""
    try:
        text = load.get(env.ports.strata_manager, "/metrics").body.decode("latin-1")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#"):
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                pass
    return out


# -- figure 5 -----------------------------------------------------------------------------

def zipf_list(catalogue, n_requests, s=1.0, seed=1):
    """n_requests paths drawn with P(rank k) ~ 1/k^s; ranks are shuffled over the catalogue so
    popularity does not follow file number or size."""
    rnd = random.Random(seed)
    order = list(range(len(catalogue)))
    rnd.shuffle(order)
    cdf, acc = [], 0.0
    for k in range(1, len(catalogue) + 1):
        acc += 1.0 / k ** s
        cdf.append(acc)
    out = []
    for _ in range(n_requests):
        k = bisect.bisect_left(cdf, rnd.random() * acc)
        out.append(catalogue[order[min(k, len(order) - 1)]])
    return out


def lru_hit_ratio(reqs, budget):
    """Hit ratio (%) of an exact LRU holding `budget` bytes of bodies, for reference."""
    from collections import OrderedDict
    lru, used, hits = OrderedDict(), 0, 0
    for path, size in reqs:
        if path in lru:
            hits += 1
            lru.move_to_end(path)
            continue
        if size > budget:
            continue
        lru[path] = size
        used += size
        while used > budget:
            _, sz = lru.popitem(last=False)
            used -= sz
    return 100.0 * hits / len(reqs)


class MemorySampler:
    """Samples a server's memory (Pss + cache dir) every 0.2 s in a thread; keeps the peak."""

    def __init__(self, server, cache_dir=None):
        self.server, self.cache_dir, self.peak, self.peak_dir = server, cache_dir, 0, 0
        self._stop = threading.Event()

    def _sample(self):
        self.peak = max(self.peak, _memory(self.server, self.cache_dir))
        if self.cache_dir:
            self.peak_dir = max(self.peak_dir, procs.dir_bytes(self.cache_dir))

    def _run(self):
        while not self._stop.wait(0.2):
            self._sample()

    def __enter__(self):
        self._sample()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._sample()


def zipf_figure(env, plan, results, counter, catalogue):
    mb = plan.zipf_budget_mb
    cat_bytes = sum(sz for _, sz in catalogue)
    reqs = zipf_list(catalogue, plan.zipf_requests)
    req_bytes = sum(sz for _, sz in reqs)
    print(f"\n== figure 5: Zipf (s=1.0), {len(reqs):,} requests over {len(catalogue):,} objects "
          f"({cat_bytes / MIB:,.0f} MiB) with {mb} MiB of cache each", flush=True)
    lst = write_list(env.path("zipf-urls.txt"), [p for p, _ in reqs])
    cache_dir = env.path("nginx-cache-zipf")
    servers = [Strata(env, "zipf", memory=f"{mb}MB", disk=None),
               NginxCache(env, "zipf", cache_dir=cache_dir, max_size=f"{mb}m",
                          keys_zone="32m"),
               Varnish(env, "zipf", size=f"{mb}m")]
    hit, bhit, oreq, obytes, mem, peak, took, grow = {}, {}, {}, {}, {}, {}, {}, {}
    nginx_dir_peak = 0
    try:
        for s in servers:
            s.start()
        for s in servers:
            cdir = cache_dir if s.name == "nginx" else None
            for _ in range(20):  # let pools and buffers come up before the baseline
                load.get(s.port, "/obj/1k.bin")
            base = _memory(s, cdir)
            mark = counter.mark()
            t0 = time.monotonic()
            with MemorySampler(s, cdir) as sampler:
                send_list(s, lst, results, "zipf")
            took[s.name] = time.monotonic() - t0
            n, nb, _ = counter.since(mark, settle=0.3)
            check_alive([s])
            hit[s.name] = 100.0 * (1 - n / len(reqs))
            bhit[s.name] = 100.0 * (1 - nb / req_bytes)
            oreq[s.name], obytes[s.name] = n, nb / MIB
            mem[s.name] = _memory(s, cdir) / MIB
            peak[s.name] = sampler.peak / MIB
            grow[s.name] = (sampler.peak - base) / MIB
            if s.name == "nginx":
                nginx_dir_peak = sampler.peak_dir
            print(f"  {s.label}: hit ratio {hit[s.name]:.1f}%, byte hit ratio "
                  f"{bhit[s.name]:.1f}%, origin {n:,} requests / {nb / MIB:,.1f} MiB, "
                  f"peak memory {peak[s.name]:,.1f} MiB (+{grow[s.name]:,.1f}) ({took[s.name]:.1f}s)", flush=True)
    finally:
        _stop(servers)
    lru = lru_hit_ratio(reqs, mb * MIB)
    fig = f"Figure 5: Zipf over a catalogue 10× the cache ({mb} MiB each)"
    ratio_rows = [
        Row(fig, "hit ratio", "%", hit, "high", 1.0, fmt="{:.1f}"),
        Row(fig, "byte hit ratio", "%", bhit, "high", fmt="{:.1f}"),
        Row(fig, "origin requests", "count", oreq, "low"),
        Row(fig, "origin bytes", "MiB", obytes, "low", fmt="{:,.1f}"),
    ]
    if nginx_dir_peak > 1.5 * mb * MIB:
        # nginx's cache manager enforces max_size only when it wakes (up to 10 s apart), so
        # between checks its cache outgrows the budget: not a comparison at equal memory.
        for row in ratio_rows:
            row.flags["nginx"] = f"over budget: cache dir peaked at {nginx_dir_peak / MIB:,.0f} MiB"
            row.exclude.add("nginx")
    for row in ratio_rows:
        results.add(row)
    results.add(Row(fig, "memory after the run", "MiB", mem, "low", fmt="{:,.1f}"))
    results.add(Row(fig, "peak memory during the run", "MiB", peak, "low", fmt="{:,.1f}"))
    results.add(Row(fig, "peak memory growth over the idle baseline", "MiB", grow, "low",
                    fmt="{:,.1f}"))
    results.add(Row(fig, "time to send the requests", "s", took, "low", fmt="{:.1f}"))
    results.notes.append(
        f"Figure 5: {len(catalogue):,} objects of 1–64 KiB (log-uniform), {cat_bytes / MIB:,.0f} "
        f"MiB in all; {len(reqs):,} requests (Zipf s=1.0, same sequence for each server, 16 "
        f"connections, from cold). Budget: Strata <MemorySize>{mb}MB</MemorySize> with no "
        f"disk, nginx max_size={mb}m on tmpfs, Varnish -s malloc,{mb}m. Memory after = Pss "
        f"(+ nginx cache dir), peak sampled every 0.2 s. nginx enforces max_size only when its "
        f"cache manager wakes (up to 10 s apart), so its cache can outgrow the budget in "
        f"between; when its cache dir peaked above 1.5× the budget it is left out of the best "
        f"peer for the hit-ratio rows. For reference, an exact LRU over "
        f"{mb} MiB of bodies (no overhead, simulated) gets a hit ratio of {lru:.1f}%.")


# -- figure 6 -----------------------------------------------------------------------------

def on_tmpfs(path):
    """Whether path is on a tmpfs (from /proc/mounts: the longest mount point above it)."""
    path, best, fstype = os.path.realpath(path), "", ""
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mnt = parts[1]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, fstype = mnt, parts[2]
    return fstype == "tmpfs"


def _drop_page_cache():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def _first_hit(s, paths, is_hit, t0, timeout=120.0):
    """Polls a new path each time until one is answered as a hit. Returns (listen_s, hit_s,
    misses before it)."""
    listen_at, misses, i = None, 0, 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not s.alive():
            raise Crash(f"{s.label} exited during its cold start:\n{s.proc.log_tail()}")
        try:
            r = load.get(s.port, paths[i % len(paths)], timeout=30)
        except OSError:
            time.sleep(0.002)
            continue
        now = time.monotonic() - t0
        if listen_at is None:
            listen_at = now
        i += 1
        if r.status == 200 and is_hit(r):
            return listen_at, now, misses
        misses += 1
    raise Crash(f"{s.label} served no hit within {timeout:.0f}s of starting")


class Cleaner:
    """Deletes directories in a background thread (figure 6's disk tiers)."""

    def __init__(self):
        self.threads = []

    def delete(self, path):
        t = threading.Thread(target=shutil.rmtree, args=(path,), kwargs={"ignore_errors": True},
                             daemon=True)
        t.start()
        self.threads.append(t)

    def wait(self, timeout=600):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))


def cold_start_figure(env, plan, results, counter, cleaner):
    n = plan.cold_objects
    print(f"\n== figure 6: cold start with {n:,} objects on disk", flush=True)
    paths = [f"/small/{i}.bin" for i in range(n)]
    lst = write_list(env.path("cold-urls.txt"), paths)
    rnd = random.Random(11)
    probes = rnd.sample(paths, min(200, n))
    sample = write_list(env.path("cold-sample.txt"), rnd.sample(paths, min(1000, n)))
    dropped = None
    tmpfs = on_tmpfs(env.disk)
    servers = [
        (Strata(env, "cold", memory="512MB", disk=os.path.join(env.disk, "strata")),
         lambda r: r.header("age").isdigit() and int(r.header("age")) >= 1),
        (NginxCache(env, "cold", cache_dir=os.path.join(env.disk, "nginx"),
                    extra="add_header X-Cache-Status $upstream_cache_status always;"),
         lambda r: r.header("x-cache-status") == "HIT"),
    ]
    listen, first, missed, sampled = {}, {}, {}, {}
    try:
        for s, is_hit in servers:
            s.start()
            send_list(s, lst, results, "cold start fill")
            time.sleep(1.2)  # so that Age >= 1 on a stored copy
            runs = []
            for k in range(plan.cold_restarts):
                s.stop()
                load.wait_closed(s.port)
                if not tmpfs:
                    dropped = _drop_page_cache()
                t0 = time.monotonic()
                s.start(wait=False)
                la, fh, miss = _first_hit(s, probes[k * 7:] + probes[:k * 7], is_hit, t0)
                mark = counter.mark()
                send_list(s, sample, results, "cold start sample")
                o, _, _ = counter.since(mark)
                runs.append((la, fh, miss, o))
                print(f"  {s.label} restart {k + 1}: listening after {1000 * la:.0f} ms, "
                      f"first hit after {1000 * fh:.0f} ms ({miss} misses before it); "
                      f"{o} of {min(1000, n)} sampled objects went to the origin", flush=True)
            listen[s.name] = median([x[0] * 1000 for x in runs])
            first[s.name] = median([x[1] * 1000 for x in runs])
            missed[s.name] = median([x[2] for x in runs])
            sampled[s.name] = median([x[3] for x in runs])
            s.stop()
            cleaner.delete(s.disk if s.name == "strata" else s.cache_dir)
    finally:
        _stop([s for s, _ in servers])
    fig = f"Figure 6: cold start, {n:,} objects on disk"
    results.add(Row(fig, "process start → listening", "ms", listen, "low"))
    results.add(Row(fig, "process start → first hit from disk", "ms", first, "low"))
    results.add(Row(fig, "misses before the first hit", "count", missed, "low", fmt="{:g}"))
    results.add(Row(fig, f"origin requests for {min(1000, n):,} stored objects right after",
                    "count", sampled, "low", fmt="{:g}"))
    results.notes.append(
        "Figure 6: fill, stop (SIGTERM), restart, then GET a different stored object until "
        "one is a hit (Strata: Age ≥ 1; nginx: X-Cache-Status HIT, added for this figure "
        "only). "
        + ("Disk tiers on tmpfs: this measures start-up and index work, not disk reads "
           "(bench/run --cold-disk DIR for a real disk)." if tmpfs else
           f"Disk tiers in {env.disk}; page cache dropped before each restart: ")
        + ("" if tmpfs else "yes." if dropped else "no (not permitted here), so the files "
                                                   "may be in the page cache.")
        + " Varnish's malloc storage does not survive a "
        "restart, so it has no row.")
