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
