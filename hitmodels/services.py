"""Starting, finding and stopping the long-running parts: the local Ray instance and the MLflow server.

``hitmusic up`` starts both as background processes (pid files and logs under ``$HITMUSIC_HOME/run``),
``hitmusic down`` stops them. Tests use the same functions with free ports and temporary directories.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

from .config import ServiceConfig


class ServiceError(RuntimeError):
    """A service that could not be started or reached, with what to do about it."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports: :func:`free_port` holds nothing, so two calls can name the same one, which a
    program given both (``ray start``'s component ports) refuses."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


def wait_http(url: str, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200; raise with the reason if it never does or ``proc`` dies."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception as exc:  # connection refused while starting
            last = exc
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s (last error: {last})")


def _bin(name: str) -> str:
    """An executable of this environment (the venv's ``mlflow``/``ray``), falling back to PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def mlflow_server_command(backend_db: Path, artifacts_dir: Path | str, host: str, port: int,
                          workers: int = 1) -> list[str]:
    """The ``mlflow server`` command line: SQLite backend store, artifacts (a directory or an ``s3://``
    prefix) proxied over HTTP so that clients never touch the store's files nor need its credentials.
    ``mlflow/server.sh`` runs the same command."""
    return [_bin("mlflow"), "server", "--backend-store-uri", f"sqlite:///{backend_db}",
            "--artifacts-destination", str(artifacts_dir), "--host", host, "--port", str(port),
            "--workers", str(workers)]


def start_mlflow(home: Path, host: str, port: int, log_path: Path | None = None,
                 artifacts: str | None = None) -> subprocess.Popen:
    """Start ``mlflow server`` in the background and wait until ``/health`` answers. ``artifacts``: where
    registered models and run artifacts go, ``home/artifacts`` by default, or an ``s3://`` prefix (the
    server reaches it with the standard AWS environment and ``MLFLOW_S3_ENDPOINT_URL`` for an
    S3-compatible store)."""
    home.mkdir(parents=True, exist_ok=True)
    if artifacts is None:
        (home / "artifacts").mkdir(exist_ok=True)
    log = open(log_path or home / "server.log", "ab")
    proc = subprocess.Popen(mlflow_server_command(home / "mlflow.db", artifacts or home / "artifacts", host, port),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://{host}:{port}/health", timeout_s=120, proc=proc)
    except Exception:
        stop_process(proc)
        raise
    return proc


def stop_process(proc: subprocess.Popen | int, timeout_s: float = 15.0, term_grace_s: float | None = None) -> None:
    """SIGTERM the process group of ``proc`` (a Popen or a pid), SIGKILL it if it lingers more than
    ``term_grace_s`` (default ``timeout_s``). A Popen is reaped as well: its zombie would otherwise keep the
    group alive until the SIGKILL and leave a "subprocess still running" warning behind."""
    popen = proc if isinstance(proc, subprocess.Popen) else None
    try:
        pgid = os.getpgid(proc if popen is None else popen.pid)
    except ProcessLookupError:
        return
    for sig, grace in ((signal.SIGTERM, term_grace_s or timeout_s), (signal.SIGKILL, timeout_s)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        if _group_gone(pgid, popen, time.monotonic() + grace):
            break
    if popen is not None:
        try:
            popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:  # unkillable (stuck in the kernel): nothing more to do from here
            pass


def _group_gone(pgid: int, popen: subprocess.Popen | None, deadline: float) -> bool:
    """Wait until no process of group ``pgid`` is left (reaping ``popen`` on the way) or ``deadline``."""
    while time.monotonic() < deadline:
        if popen is not None:
            popen.poll()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


INGRESS_CHOICES = ("auto", "haproxy", "proxy")
HAPROXY_DEFAULT_BASE = "/tmp/haproxy-serve"  # Ray Serve's default for its HAProxy config, sockets and state


HAPROXY_WRAPPER = Path(__file__).resolve().parents[1] / "serve" / "haproxy_loopback.sh"


def haproxy_binary() -> str | None:
    """The real HAProxy executable: ``$HITMUSIC_HAPROXY_REAL``, ``$RAY_SERVE_HAPROXY_BINARY_PATH`` (unless it
    is our wrapper), ``haproxy`` on PATH, or Debian's /usr/sbin/haproxy (not on a non-root user's PATH);
    None if there is none."""
    named = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    for candidate in (os.environ.get("HITMUSIC_HAPROXY_REAL"), None if named == str(HAPROXY_WRAPPER) else named,
                      shutil.which("haproxy"),
                      "/usr/sbin/haproxy", "/usr/local/sbin/haproxy"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


# How HAProxy treats a replica that dies (Ray's defaults: 5 s to connect or to wait in the queue for a
# server, no server timeout, a health check every 5 s, retries on connection failure only).
HAPROXY_FAILOVER = {
    # with no replica up, a request waits this long in HAProxy's queue (it falls back to the connect
    # timeout), then gets a 503: an answer within about a second, not a hang
    "RAY_SERVE_HAPROXY_TIMEOUT_CONNECT_S": "1",
    # a replica that accepted a request and never answers: 504 after this long (the longest legitimate
    # request, a 15-minute upload's extraction, takes seconds)
    "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": "120",
    # every endpoint is a pure function of its request, so a request a dying replica dropped (connection
    # refused or reset, no or a cut-off response) is safe to send to another one. A dead replica is marked
    # down after the errors HAProxy sees; the health check is left at Ray's 5 s, which is also how long a
    # check may take: a 1 s one marked healthy replicas down while a new one started on a 2-core machine.
    "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response junk-response 503",
    "RAY_SERVE_HAPROXY_RETRIES": "3",
    # with every replica of an app down: HAProxy's 503 at once, not a wait in Ray's Python proxy until a
    # replica is back (serve/haproxy_loopback.sh)
    "HITMUSIC_HAPROXY_FAIL_FAST": "1",
}


def serve_runtime_env(ingress: str = "auto", private_dir: Path | None = None) -> dict[str, str]:
    """``RAY_SERVE_*`` settings for the processes of a Ray instance about to start (Serve reads them once,
    at import, in its controller, proxies and replicas, so they go in the environment of ``ray start`` or of
    the driver that starts a local instance).

    Serve runs throughput-optimised (request path on the replica's own event loop, gRPC between proxy and
    replicas, GC frozen after start-up) and, with ``ingress`` "haproxy" (or "auto" where HAProxy is
    installed), HAProxy on the HTTP port forwards straight to each replica's own HTTP server instead of
    Ray's Python proxy, which is the larger part of a single-track request's latency on a small machine.

    ``private_dir``: for a throwaway instance next to others on one machine (tests, benchmarks): HAProxy's
    stats and metrics ports and the fallback proxy's port become free ports instead of the fixed 8404, 9101
    and 8500, and HAProxy's config, sockets and state live under that (short: Unix socket paths) directory.
    """
    if ingress not in INGRESS_CHOICES:
        raise ValueError(f"serve ingress must be one of {INGRESS_CHOICES}, not {ingress!r}")
    env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    binary = haproxy_binary()
    if ingress == "haproxy" and binary is None:
        raise RuntimeError("serve ingress 'haproxy' asked for, but no haproxy executable was found (install "
                           "Debian's haproxy package, or set RAY_SERVE_HAPROXY_BINARY_PATH)")
    if binary is not None and ingress != "proxy":
        # Serve runs our wrapper, which moves HAProxy's stats and metrics listeners to loopback and makes its
        # admin socket private before it becomes the real binary (serve/haproxy_loopback.sh)
        env.update(RAY_SERVE_ENABLE_HA_PROXY="1", RAY_SERVE_HAPROXY_BINARY_PATH=str(HAPROXY_WRAPPER),
                   HITMUSIC_HAPROXY_REAL=binary, **{k: os.environ.get(k, v) for k, v in HAPROXY_FAILOVER.items()})
    if private_dir is not None:
        d = Path(private_dir)
        env.update(RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()),
                   RAY_SERVE_FALLBACK_PROXY_HTTP_PORT=str(free_port()),
                   RAY_SERVE_FALLBACK_PROXY_GRPC_PORT=str(free_port()),
                   RAY_SERVE_HAPROXY_CONFIG_FILE_LOC=str(d / "haproxy.cfg"),
                   RAY_SERVE_HAPROXY_SOCKET_PATH=str(d / "admin.sock"),
                   RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH=str(d / "metrics.sock"),
                   RAY_SERVE_HAPROXY_SERVER_STATE_BASE=str(d),
                   RAY_SERVE_HAPROXY_SERVER_STATE_FILE=str(d / "server-state"),
                   # replicas behind a direct ingress drain at least 30 s before stopping so that load
                   # balancers notice; a throwaway instance is stopped whole, and 30 s per test teardown adds up
                   RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S="3")
    return env


def serve_ingress_in_use() -> str:
    """Which HTTP ingress Serve of the Ray instance this process starts or joins uses: haproxy or proxy."""
    return "haproxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "proxy"


RAY_TOKEN_FILE = "ray_auth_token"


def ray_token_path(home: Path | None = None) -> Path:
    """Where ``hitmusic up`` keeps the Ray cluster's token: ``$HITMUSIC_HOME/ray_auth_token``, mode 0600."""
    return Path(home or ServiceConfig().home) / RAY_TOKEN_FILE


def ensure_ray_token(path: Path) -> Path:
    """Create a random token at ``path`` (mode 0600, created so, never world-readable even for a moment)
    unless one is there; tighten a looser mode on an existing one. Returns ``path``."""
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        if not path.read_text().strip():
            raise ServiceError(f"the Ray token file {path} is empty: delete it and run hitmusic up again")
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def ray_auth_env(home: Path | None = None, create: bool = False) -> dict[str, str]:
    """Environment that makes Ray (``ray start``, drivers, ``ray job submit``, ``ray status``) use token
    auth with the project's token. An explicit ``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH`` (a cluster's own,
    KubeRay's secret) wins over the project's file."""
    env = {"RAY_AUTH_MODE": "token"}
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return env
    path = ray_token_path(home)
    if create:
        ensure_ray_token(path)
    if path.exists():
        env["RAY_AUTH_TOKEN_PATH"] = str(path)
    return env


def use_ray_auth(home: Path | None = None) -> None:
    """Put :func:`ray_auth_env` into this process's environment (before Ray is imported or connects), so
    every client of ours, and every local instance it starts, runs with token auth."""
    for k, v in ray_auth_env(home, create=True).items():
        os.environ.setdefault(k, v)
    if os.environ["RAY_AUTH_MODE"] != "token":
        raise RuntimeError(f"RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']!r}: this project runs Ray with token "
                           "auth only (unset it, or set it to 'token')")
    refresh_ray_auth()


def refresh_ray_auth() -> None:
    """Make an already imported Ray see the auth settings now in the environment: it reads RAY_AUTH_MODE
    and the token once, when its config is first built (what Ray's own token setup does, too)."""
    if "ray._raylet" in sys.modules:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def ray_head_command(cfg: ServiceConfig, num_cpus: int | None = None, extra_args: tuple[str, ...] = ()) -> list[str]:
    """``ray start --head`` advertising ``cfg.ray_node_ip`` to joining nodes, with the dashboard (needed by
    ``ray job submit``) on ``cfg.host``."""
    cmd = [_bin("ray"), "start", "--head", "--port", str(cfg.ray_port), "--node-ip-address", cfg.ray_node_ip,
           "--dashboard-host", cfg.host, "--dashboard-port", str(cfg.ray_dashboard_port), "--disable-usage-stats",
           *extra_args]
    return cmd + (["--num-cpus", str(num_cpus)] if num_cpus else [])


def start_ray_head(cfg: ServiceConfig, num_cpus: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
    """Start :func:`ray_head_command` with token auth and Serve's settings."""
    cmd = ray_head_command(cfg, num_cpus, extra_args)
    # `ray job submit -- python -m pipelines.x` runs `python` from the head's PATH: make it this environment's.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.update(ray_auth_env(cfg.home, create=True))
    env.update(serve_runtime_env(cfg.serve_ingress))
    subprocess.run(cmd, check=True, env=env)


def _processes() -> dict[int, tuple[int, list[bytes]]]:
    """Every live process of this user: pid -> (parent pid, argv). Other users' processes are left out (not
    ours to signal), and so are zombies: they have exited and only wait for a parent (in a container,
    perhaps an init that never reaps) to collect them."""
    table = {}
    uid = os.getuid()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            stat = Path(f"/proc/{pid}/stat").read_bytes()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        # the command name in parentheses may itself hold spaces and parentheses: the fields follow the last ")"
        fields = stat.rsplit(b")", 1)[1].split()
        if fields[0] != b"Z":
            table[int(pid)] = (int(fields[1]), argv)
    return table


def gcs_marks(port: int, table: dict[int, tuple[int, list[bytes]]] | None = None) -> tuple[str | None, set[bytes]]:
    """The session directory of the Ray instance whose GCS listens on ``port`` (None when none runs) and the
    hosts by which an address names it: loopback and the GCS's ``--node-ip-address``."""
    table = _processes() if table is None else table
    session = None
    hosts = {b"127.0.0.1", b"localhost"}
    for _, argv in table.values():
        if f"--gcs_server_port={port}".encode() in argv:
            session = next((a.split(b"=", 1)[1].decode() for a in argv if a.startswith(b"--session-dir=")), None)
            hosts |= {a.split(b"=", 1)[1] for a in argv if a.startswith(b"--node-ip-address=")}
    return session, hosts


def ray_instance_pids(port: int, table: dict[int, tuple[int, list[bytes]]] | None = None,
                      marks: tuple[str | None, set[bytes]] | None = None) -> tuple[set[int], str | None]:
    """The processes of the Ray instance whose GCS listens on ``port``, and its session directory (None when
    no GCS of that port runs). Its daemons name the port (``--gcs_server_port=``, ``--gcs-address=...:port``,
    ``--address=...:port``) or the session directory; workers, actors, job drivers and the HAProxy a Serve
    actor runs are their descendants. Other Ray instances on the machine match neither. An address names this
    instance only with a host of this machine: a node here that joined a remote head listening on the same
    port number belongs to that other cluster. ``marks``: :func:`gcs_marks` of an earlier scan, for a scan
    after the GCS itself has gone."""
    table = _processes() if table is None else table
    session, hosts = marks or gcs_marks(port, table)
    addresses = {h + f":{port}".encode() for h in hosts}
    roots = {pid for pid, (_, argv) in table.items()
             if f"--gcs_server_port={port}".encode() in argv
             or any(a.startswith((b"--gcs-address=", b"--address=")) and a.split(b"=", 1)[1] in addresses
                    for a in argv)
             or (session is not None and any(session.encode() + b"/" in a for a in argv))}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid not in found and pid != os.getpid():
            found.add(pid)
            stack += children.get(pid, [])
    return found, session


def stop_ray(port: int, grace_s: float = 10.0) -> int:
    """Stop the Ray instance on ``port`` (:func:`ray_instance_pids`): SIGTERM, then SIGKILL what is left after
    ``grace_s``; returns how many processes it stopped. Unlike ``ray stop``, which matches Ray's process
    names and so stops every Ray of this user on the machine, other instances are left alone. The
    ``ray_current_cluster`` file that named this instance is removed, as ``ray stop`` does, so that a later
    ``ray.init()`` starts a fresh instance instead of dialling a dead one."""
    marks = gcs_marks(port)  # kept: the rescans below may run after the GCS, which the marks come from, is gone
    pids, session = ray_instance_pids(port, marks=marks)
    stopped: set[int] = set()
    # a raylet that forks a worker while it is being stopped leaves a process the first scan did not see:
    # scan again until nothing of this instance is left (bounded: a daemon that respawns forever is not ours)
    for _ in range(5):
        if not pids:
            break
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace_s
            while sig == signal.SIGTERM and time.monotonic() < deadline and any(_alive_pid(p) for p in pids):
                time.sleep(0.2)
        stopped |= pids
        time.sleep(0.2)
        pids = ray_instance_pids(port, marks=marks)[0] - stopped
    if session is not None:
        address_file = Path(session).parent / "ray_current_cluster"
        try:
            if address_file.read_text().strip().endswith(f":{port}"):
                address_file.unlink()
        except OSError:
            pass
    return len(stopped)


def _alive_pid(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie counts as gone: it only waits for its parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def ray_running(cfg: ServiceConfig) -> bool:
    """Whether a Ray head answers at ``cfg.host:cfg.ray_port`` to our token."""
    env = dict(os.environ, **ray_auth_env(cfg.home))
    try:
        return subprocess.run([_bin("ray"), "status", "--address", f"{cfg.host}:{cfg.ray_port}"],
                              capture_output=True, env=env, timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def up(cfg: ServiceConfig, ray_args: tuple[str, ...] = ()) -> dict[str, str]:
    """Start Ray (token auth) and the MLflow server unless they already run; returns their addresses, what
    was already running, and where the Ray token is. ``ray_args``: extra ``ray start`` flags."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("RAY_AUTH_TOKEN"):
        token = "$RAY_AUTH_TOKEN"
    else:  # a path named in the environment (a cluster's own), or the project's
        token = str(ensure_ray_token(Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or ray_token_path(cfg.home))))
    pid_file = cfg.run_dir / "mlflow.pid"
    running = []
    if _alive(pid_file):
        running.append("mlflow")
    else:
        proc = start_mlflow(cfg.mlflow_dir, cfg.host, cfg.mlflow_port, cfg.run_dir / "mlflow.log", cfg.mlflow_artifacts)
        pid_file.write_text(str(proc.pid))
    if ray_running(cfg):
        running.append("ray")
    else:
        try:
            start_ray_head(cfg, extra_args=ray_args)
        except subprocess.CalledProcessError:
            raise ServiceError(f"`ray start --head` failed on {cfg.host}:{cfg.ray_port} (its output is above). If "
                               "a Ray head already runs there, it does not accept this project's token "
                               f"({token}): stop it (`ray stop`) or point RAY_AUTH_TOKEN_PATH at its token") from None
    return {"mlflow": f"http://{cfg.host}:{cfg.mlflow_port}",
            "ray": f"{cfg.ray_node_ip}:{cfg.ray_port}",
            "ray_dashboard": f"http://{cfg.host}:{cfg.ray_dashboard_port}",
            "serve": cfg.serve_url, "ray_token": token,
            "already_running": ",".join(running)}


def signal_matching(match: Callable[[list[bytes]], bool], sig: int = signal.SIGTERM,
                    skip: set[int] = frozenset()) -> list[int]:
    """Send ``sig`` to every process but ``skip`` whose argv (``/proc/<pid>/cmdline``, split) satisfies
    ``match``; returns their pids. For processes that outlived the group or session that started them."""
    hit = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(pid) != os.getpid() and int(pid) not in skip \
                    and match(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")):
                os.kill(int(pid), sig)
                hit.append(int(pid))
        except (OSError, IndexError, UnicodeDecodeError):
            pass  # gone meanwhile, or not ours to read
    return hit


def stop_serve_haproxy(base: str | None = None) -> list[int]:
    """SIGTERM the HAProxy processes Serve started with their config under ``base`` (Serve's state directory:
    ``$RAY_SERVE_HAPROXY_SERVER_STATE_BASE``, default /tmp/haproxy-serve); returns their pids. ``ray stop``
    kills Ray's own processes but not the HAProxy a Serve actor runs, which would keep the HTTP port."""
    base = (base or os.environ.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE") or HAPROXY_DEFAULT_BASE).rstrip("/") + "/"
    table = _processes()
    # A live Serve's HAProxy is the child of its proxy actor (a "ray::" process): that one belongs to a
    # running Ray instance, perhaps another's, and is stopped with its instance, never here.
    serving = {pid for pid, (ppid, _) in table.items() if table.get(ppid, (0, [b""]))[1][0].startswith(b"ray::")}
    return signal_matching(lambda argv: Path(argv[0].decode()).name == "haproxy"
                           and any(a.startswith(base.encode()) for a in argv), skip=serving)


def down(cfg: ServiceConfig) -> int:
    """Stop Serve, Ray and the MLflow server started by :func:`up`, and nothing else: other Ray instances on
    the machine (another user's session, a test's) keep running."""
    n = stop_ray(cfg.ray_port)
    stop_serve_haproxy()  # orphans only: HAProxies left by a Serve whose Ray is gone
    pid_file = cfg.run_dir / "mlflow.pid"
    if pid_file.exists():
        stop_process(int(pid_file.read_text()))
        pid_file.unlink()
    return n


def _alive(pid_file: Path) -> bool:
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text()), 0)
        return True
    except (ProcessLookupError, ValueError):
        return False


def init_ray(**kwargs) -> None:
    """Connect to the running Ray instance (``RAY_ADDRESS``, ``ray start`` or a ``ray job submit`` driver),
    or start a local one; idempotent."""
    import ray

    if not ray.is_initialized():
        use_ray_auth()  # token auth whether this joins a cluster or starts a local instance
        # a local instance started here gets the same Serve settings as `hitmusic up` gives its cluster
        for k, v in serve_runtime_env(ServiceConfig().serve_ingress).items():
            os.environ.setdefault(k, v)
        try:
            ray.init(ignore_reinit_error=True, log_to_driver=False, **kwargs)
        except (ray.exceptions.AuthenticationError, ConnectionError) as exc:
            # a token mismatch surfaces as a failed connection after Ray's retries
            source = os.environ.get("RAY_AUTH_TOKEN_PATH") or "$RAY_AUTH_TOKEN"
            raise ServiceError(f"{exc}: the cluster is down, or it refused this driver's token ({source}). "
                               "Run from the directory whose .hitmusic holds the cluster's token, set "
                               "HITMUSIC_HOME to it, or export RAY_AUTH_TOKEN_PATH=<the cluster's token file>") \
                from exc
