"""Process control of the services the project starts (MLflow server, Ray nodes, uvicorn)."""

from __future__ import annotations

import pytest


def test_stop_process_kills_the_group_and_reaps_a_popen_that_ignores_sigterm():
    import os
    import subprocess
    import sys

    from hitmodels.services import stop_process

    # a leader that ignores SIGTERM and a child in its group: both must be gone, the leader reaped
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print('up', flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout.readline().strip() == b"up"
    pgid = os.getpgid(proc.pid)
    stop_process(proc, timeout_s=10, term_grace_s=0.5)
    assert proc.returncode == -9  # SIGKILL after the SIGTERM grace
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    proc.stdout.close()
    stop_process(proc)  # already gone: a no-op


def test_serve_runtime_env_picks_haproxy_only_where_it_exists(tmp_path, monkeypatch):
    from hitmodels import services

    fake = tmp_path / "haproxy"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.delenv("HITMUSIC_HAPROXY_REAL", raising=False)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(fake))
    env = services.serve_runtime_env("auto")
    # Serve runs the loopback wrapper, which runs the real binary
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(services.HAPROXY_WRAPPER)
    assert env["HITMUSIC_HAPROXY_REAL"] == str(fake)
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in services.serve_runtime_env("proxy")

    monkeypatch.setattr(services, "haproxy_binary", lambda: None)
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in services.serve_runtime_env("auto")  # falls back to Ray's proxy
    with pytest.raises(RuntimeError, match="no haproxy executable"):
        services.serve_runtime_env("haproxy")
    with pytest.raises(ValueError, match="must be one of"):
        services.serve_runtime_env("nginx")


def test_private_serve_env_moves_fixed_ports_and_paths_out_of_the_way(tmp_path):
    from hitmodels.services import serve_runtime_env

    env = serve_runtime_env("proxy", private_dir=tmp_path)
    ports = [int(env[k]) for k in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
                                   "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT")]
    assert not {8404, 9101, 8500} & set(ports)
    for k in ("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "RAY_SERVE_HAPROXY_SOCKET_PATH",
              "RAY_SERVE_HAPROXY_SERVER_STATE_FILE"):
        assert env[k].startswith(str(tmp_path))
    assert "RAY_SERVE_HAPROXY_STATS_PORT" not in serve_runtime_env("proxy")  # `hitmusic up`: Ray's defaults


def test_stop_serve_haproxy_stops_only_haproxies_under_its_base(tmp_path):
    """`hitmusic down` must free the HTTP port that Serve's HAProxy holds after `ray stop`, and touch no
    other process: a stand-in named haproxy with its config under the base is stopped, one elsewhere is not."""
    import os
    import subprocess
    import sys

    from hitmodels.services import stop_process, stop_serve_haproxy

    fake = tmp_path / "bin" / "haproxy"
    fake.parent.mkdir()
    fake.symlink_to(sys.executable)
    base, other = tmp_path / "haproxy-serve", tmp_path / "elsewhere"
    sleeper = "import time; time.sleep(60)"
    ours = subprocess.Popen([str(fake), "-c", sleeper, "-f", f"{base}/node/haproxy.cfg"], start_new_session=True)
    theirs = subprocess.Popen([str(fake), "-c", sleeper, "-f", f"{other}/haproxy.cfg"], start_new_session=True)
    try:
        assert stop_serve_haproxy(str(base)) == [ours.pid]
        assert ours.wait(timeout=10) != 0 and theirs.poll() is None
    finally:
        for p in (ours, theirs):
            stop_process(p, timeout_s=5)


def test_stop_ray_stops_its_instance_only(tmp_path):
    """`hitmusic down` stops the Ray instance on its port (daemons, and an actor's worker, found as a
    descendant) and leaves another instance on the same machine running; `ray stop` would stop both."""
    import os
    import secrets
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from hitmodels.services import free_ports, ray_instance_pids, signal_matching, stop_ray

    ray_bin = str(Path(sys.executable).parent / "ray")
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    env.pop("RAY_ADDRESS", None)
    tag = tempfile.mkdtemp(prefix="hm-down-", dir="/tmp")  # short: Ray's socket paths live under it
    picked = iter(free_ports(6))  # distinct: `ray start` refuses a port named twice
    ports = {name: next(picked) for name in ("ours", "theirs")}
    try:
        for name, port in ports.items():
            subprocess.run([ray_bin, "start", "--head", "--port", str(port), "--temp-dir", f"{tag}/{name}",
                            "--num-cpus", "1", "--include-dashboard", "false", "--node-ip-address", "127.0.0.1",
                            "--ray-client-server-port", str(next(picked)), "--dashboard-agent-listen-port",
                            str(next(picked)), "--object-store-memory", str(80 * 2**20), "--disable-usage-stats"],
                           env=env, check=True, capture_output=True, timeout=120)
        # a detached actor of ours: its worker's argv says only "ray::Sleeper", so it is found as a descendant
        code = ("import os, ray; ray.init(address=os.environ['ADDR'])\n"
                "@ray.remote(num_cpus=0)\nclass Sleeper:\n    def pid(self): return os.getpid()\n"
                "a = Sleeper.options(name='s', lifetime='detached').remote(); print(ray.get(a.pid.remote()))")
        actor = int(subprocess.run([sys.executable, "-c", code], env=dict(env, ADDR=f"127.0.0.1:{ports['ours']}"),
                                   check=True, capture_output=True, text=True, timeout=120).stdout.split()[-1])
        ours, session = ray_instance_pids(ports["ours"])
        theirs, _ = ray_instance_pids(ports["theirs"])
        assert actor in ours and session.startswith(f"{tag}/ours/") and not ours & theirs
        print(f"ours: {len(ours)} processes, theirs: {len(theirs)}")

        assert stop_ray(ports["ours"]) >= len(ours)  # more where a worker was forked meanwhile
        time.sleep(0.5)
        assert not ray_instance_pids(ports["ours"])[0]
        assert not any(Path(f"/proc/{p}").exists() and Path(f"/proc/{p}/stat").read_bytes().split()[2] != b"Z"
                       for p in ours)
        status = subprocess.run([ray_bin, "status", "--address", f"127.0.0.1:{ports['theirs']}"], env=env,
                                capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stdout + status.stderr
        daemons = {p for p in theirs if b"gcs_server" in Path(f"/proc/{p}/cmdline").read_bytes()
                   or b"raylet" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]}
        assert len(daemons) == 2 and daemons <= ray_instance_pids(ports["theirs"])[0]
        assert stop_ray(ports["theirs"]) > 0 and not ray_instance_pids(ports["theirs"])[0]
    finally:
        signal_matching(lambda argv: any(tag.encode() in a for a in argv), 9)


def test_ray_instance_pids_takes_local_addresses_and_descendants_only():
    """By the process table alone: the GCS on the port, a raylet naming its session, an orphaned worker
    naming the GCS at this machine's address (its raylet died while forking it) and that worker's child are
    the instance; a node here that joined a remote head with the same port number is not, nor its child; and
    so they stay once the GCS has gone, by the marks of the scan before."""
    from hitmodels.services import ray_instance_pids

    session = b"/tmp/ray/session_1"
    table = {
        10: (1, [b"gcs_server", b"--gcs_server_port=6390", b"--node-ip-address=10.0.0.7",
                 b"--session-dir=" + session]),
        11: (1, [b"raylet", b"--raylet_socket_name=" + session + b"/sockets/raylet"]),
        12: (1, [b"python", b"default_worker.py", b"--gcs-address=10.0.0.7:6390"]),
        13: (12, [b"ray::Sleeper"]),
        20: (1, [b"raylet", b"--gcs-address=10.0.0.99:6390"]),  # joined to another machine's head
        21: (20, [b"ray::IDLE"]),
        30: (1, [b"python", b"default_worker.py", b"--gcs-address=10.0.0.7:63900"]),
    }
    assert ray_instance_pids(6390, table) == ({10, 11, 12, 13}, session.decode())
    assert ray_instance_pids(6391, table) == (set(), None)
    # a rescan after the GCS died: the first scan's marks still find the raylet and the worker
    from hitmodels.services import gcs_marks

    marks = gcs_marks(6390, table)
    del table[10]
    assert ray_instance_pids(6390, table)[0] == set()
    assert ray_instance_pids(6390, table, marks=marks)[0] == {11, 12, 13}


def test_the_head_advertises_its_lan_address_only_when_told(monkeypatch, tmp_path):
    """`hitmusic up` on one machine advertises loopback; `--node-ip` (or $HITMUSIC_RAY_NODE_IP) makes the head
    joinable from a LAN while the dashboard stays on loopback."""
    from hitmodels.cli import _services, build_parser
    from hitmodels.services import ray_head_command

    def flag(cmd: list[str], name: str) -> str:
        return cmd[cmd.index(name) + 1]

    monkeypatch.delenv("HITMUSIC_RAY_NODE_IP", raising=False)
    local = ray_head_command(_services(build_parser().parse_args(["up", "--home", str(tmp_path)])))
    assert flag(local, "--node-ip-address") == "127.0.0.1" == flag(local, "--dashboard-host")
    lan = ray_head_command(_services(build_parser().parse_args(["up", "--home", str(tmp_path),
                                                                "--node-ip", "10.0.0.5"])))
    assert flag(lan, "--node-ip-address") == "10.0.0.5" and flag(lan, "--dashboard-host") == "127.0.0.1"
    monkeypatch.setenv("HITMUSIC_RAY_NODE_IP", "10.0.0.6")
    env = ray_head_command(_services(build_parser().parse_args(["up", "--home", str(tmp_path)])))
    assert flag(env, "--node-ip-address") == "10.0.0.6"
