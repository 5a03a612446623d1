"""The servers under test and the origin behind them, configured from the templates in
bench/conf/. All listen on 127.0.0.1 only, on fixed ports derived from --base-port.

    origin      nginx serving the object files (logs every request: the origin counter)
    slow        python origin for figure 3 (reached through the origin nginx at /slow/)
    static      nginx serving the same files, no proxy: the reference ceiling (not a peer)
    strata      Strata (target/release/strata run --conf DIR)
    strata_disk Strata whose memory tier may not hold the 10 MiB object (figure 2)
    nginx       nginx proxy_cache
    varnish     varnishd, malloc storage
"""

import os
import resource
import shutil
import sys

from . import procs

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
CONF = os.path.join(BENCH, "conf")


def nofile_limit():
    """The hard limit on open files (containers often cap it below nginx's wishes)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def render(template, dest, **values):
    with open(os.path.join(CONF, template)) as f:
        text = f.read()
    nofile = min(nofile_limit(), 65536)
    values.setdefault("NOFILE", nofile)
    values.setdefault("CONNECTIONS", nofile // 2)
    for k, v in values.items():
        text = text.replace("{{" + k + "}}", str(v))
    if "{{" in text:
        raise ValueError(f"{template}: unfilled placeholder near "
                         f"{text[text.index('{{'):text.index('{{') + 30]!r}")
    with open(dest, "w") as f:
        f.write(text)
    return dest


class Ports:
    def __init__(self, base):
        self.origin = base
        self.slow = base + 1
        self.static = base + 2
        self.strata = base + 10
        self.strata_manager = base + 11
        self.strata_disk = base + 12
        self.strata_disk_manager = base + 13
        self.nginx = base + 20
        self.varnish = base + 30

    def all(self):
        return [self.origin, self.slow, self.static, self.strata, self.strata_manager,
                self.strata_disk, self.strata_disk_manager,
                self.nginx, self.varnish]


class Env:
    """Where things live for one run: a work dir on tmpfs, the document root, the ports."""

    def __init__(self, run_dir, disk_dir, ports, strata_bin):
        self.run = run_dir          # on /dev/shm: configs, logs, nginx cache, docroot
        self.disk = disk_dir        # on a real disk: figure 6's disk tiers
        self.docroot = os.path.join(run_dir, "www")
        self.ports = ports
        self.strata_bin = strata_bin
        os.makedirs(self.docroot, exist_ok=True)

    def path(self, *parts):
        return os.path.join(self.run, *parts)


class Server:
    """A server under test: its name in the tables, its port, its process."""

    label = "?"
    name = "?"
    port = 0

    def __init__(self):
        self.proc = None

    def pids(self):
        return self.proc.tree() if self.proc else []

    def alive(self):
        return self.proc is not None and self.proc.alive()

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"


def _nginx_dirs(env, name):
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(env.path(f"nginx-{name}-tmp", d), exist_ok=True)


class Origin(Server):
    """The origin: nginx serving env.docroot with Cache-Control: max-age=3600, logging each
    request's path and body bytes (the harness counts origin requests and bytes from it)."""

    name, label = "origin", "origin nginx"

    def __init__(self, env):
        super().__init__()
        self.env = env
        self.port = env.ports.origin
        self.log = env.path("origin-access.log")

    def start(self):
        _nginx_dirs(self.env, "origin")
        conf = render("nginx-static.conf.tmpl", self.env.path("nginx-origin.conf"),
                      NAME="origin", RUN=self.env.run, WORKERS="auto", PORT=self.port,
                      DOCROOT=self.env.docroot, SLOW_PORT=self.env.ports.slow,
                      ACCESS_LOG=f"{self.log} count")
        self.proc = procs.Proc("origin nginx", ["nginx", "-p", self.env.run, "-e", "stderr",
                                                "-c", conf],
                               self.env.path("nginx-origin.out"))
        self.proc.wait_port(self.port)
        return self


class SlowOrigin(Server):
    """Figure 3's origin: waits before answering (see slow_origin.py)."""

    name, label = "slow", "slow origin"

    def __init__(self, env, delay, trickle):
        super().__init__()
        self.env, self.port = env, env.ports.slow
        self.delay, self.trickle = delay, trickle

    def start(self):
        script = os.path.join(HERE, "slow_origin.py")
        self.proc = procs.Proc("slow origin",
                               [sys.executable, script, str(self.port), str(self.delay),
                                str(self.trickle)],
                               self.env.path("slow-origin.out"))
        self.proc.wait_port(self.port)
        return self


class StaticRef(Server):
    """nginx serving the files directly, configured like the caching nginx: the ceiling."""

    name, label = "static", "static nginx (ref)"

    def __init__(self, env, cpus=None, workers="auto"):
        super().__init__()
        self.env, self.port, self.cpus, self.workers = env, env.ports.static, cpus, workers

    def start(self):
        _nginx_dirs(self.env, "static")
        conf = render("nginx-static.conf.tmpl", self.env.path("nginx-static.conf"),
                      NAME="static", RUN=self.env.run, WORKERS=self.workers, PORT=self.port,
                      DOCROOT=self.env.docroot, SLOW_PORT=self.env.ports.slow,
                      ACCESS_LOG="off")
        self.proc = procs.Proc("static nginx", ["nginx", "-p", self.env.run, "-e", "stderr",
                                                "-c", conf],
                               self.env.path("nginx-static.out"), cpus=self.cpus)
        self.proc.wait_port(self.port)
        return self


class Strata(Server):
    """Strata. disk=None: memory only; otherwise the disk tier's directory. max_object: the
    largest body the memory tier holds (`<MemoryMaxObject>`)."""

    name, label = "strata", "Strata"

    def __init__(self, env, tag, memory="512MB", disk=None, cpus=None, workers=None,
                 max_object="16MB"):
        super().__init__()
        self.env, self.tag, self.memory, self.disk = env, tag, memory, disk
        self.cpus, self.workers, self.max_object = cpus, workers, max_object
        self.port, self.manager_port = env.ports.strata, env.ports.strata_manager
        self.conf_dir = env.path(f"strata-{tag}")

    def write_conf(self):
        os.makedirs(self.conf_dir, exist_ok=True)
        storage = ""
        if self.disk:
            os.makedirs(self.disk, exist_ok=True)
            storage = f'<Storage><Disk Quota="8GB">{self.disk}</Disk></Storage>'
        render("strata-server.xml.tmpl", os.path.join(self.conf_dir, "server.xml"),
               MANAGER_PORT=self.manager_port, STORAGE=storage,
               MEMORY_SIZE=self.memory, MEMORY_MAX_OBJECT=self.max_object)
        render("strata-vhosts.xml.tmpl", os.path.join(self.conf_dir, "vhosts.xml"),
               PORT=self.port, ORIGIN_PORT=self.env.ports.origin)

    def start(self, wait=True):
        self.write_conf()
        env = {"RUST_LOG": "warn"}
        if self.workers:
            # tokio's multi-thread runtime reads TOKIO_WORKER_THREADS.
            env["TOKIO_WORKER_THREADS"] = str(self.workers)
        self.proc = procs.Proc("strata", [self.env.strata_bin, "run", "--conf", self.conf_dir],
                               self.env.path(f"strata-{self.tag}.out"), env=env,
                               cpus=self.cpus)
        if wait:
            self.proc.wait_port(self.port)
        return self


class StrataDiskOnly(Strata):
    """Strata whose memory tier holds no body over 1 MB: the 10 MiB object lives only in the
    disk tier (tmpfs), as a large-file catalogue does behind a small memory tier."""

    name, label = "strata_disk", "Strata, disk tier only"

    def __init__(self, env, tag, disk, cpus=None, workers=None):
        super().__init__(env, tag, memory="512MB", disk=disk, cpus=cpus, workers=workers,
                         max_object="1MB")
        self.port, self.manager_port = env.ports.strata_disk, env.ports.strata_disk_manager


class NginxCache(Server):
    """nginx proxy_cache; its cache directory is `cache_dir` (on tmpfs unless figure 6)."""

    name, label = "nginx", "nginx"

    def __init__(self, env, tag, cache_dir, max_size="8g", keys_zone="64m", cpus=None,
                 workers="auto", extra=""):
        super().__init__()
        self.env, self.tag, self.cache_dir = env, tag, cache_dir
        self.max_size, self.keys_zone = max_size, keys_zone
        self.cpus, self.workers, self.extra = cpus, workers, extra
        self.port = env.ports.nginx

    def start(self, wait=True):
        name = f"cache-{self.tag}"
        _nginx_dirs(self.env, name)
        os.makedirs(self.cache_dir, exist_ok=True)
        conf = render("nginx-cache.conf.tmpl", self.env.path(f"nginx-{name}.conf"),
                      NAME=name, RUN=self.env.run, WORKERS=self.workers, PORT=self.port,
                      ORIGIN_PORT=self.env.ports.origin, CACHE_DIR=self.cache_dir,
                      KEYS_ZONE=self.keys_zone, MAX_SIZE=self.max_size, EXTRA=self.extra)
        self.proc = procs.Proc("nginx", ["nginx", "-p", self.env.run, "-e", "stderr",
                                         "-c", conf],
                               self.env.path(f"nginx-{name}.out"), cpus=self.cpus)
        if wait:
            self.proc.wait_port(self.port)
        return self


class Varnish(Server):
    """varnishd in the foreground, malloc storage of `size`; thread pools as they come."""

    name, label = "varnish", "Varnish"

    def __init__(self, env, tag, size="512m", cpus=None):
        super().__init__()
        self.env, self.tag, self.size, self.cpus = env, tag, size, cpus
        self.port = env.ports.varnish

    def start(self):
        workdir = self.env.path(f"varnish-{self.tag}")
        shutil.rmtree(workdir, ignore_errors=True)
        vcl = render("varnish.vcl.tmpl", self.env.path(f"varnish-{self.tag}.vcl"),
                     ORIGIN_PORT=self.env.ports.origin, EXTRA="")
        argv = ["varnishd", "-F", "-n", workdir, "-a", f"127.0.0.1:{self.port}",
                "-f", vcl, "-s", f"malloc,{self.size}", "-T", "none"]
        self.proc = procs.Proc("varnish", argv, self.env.path(f"varnish-{self.tag}.out"),
                               cpus=self.cpus)
        self.proc.wait_port(self.port, timeout=60)
        return self
