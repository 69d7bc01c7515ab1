"""One run per output directory, whole parts only (issue 16): a second run into a busy OUT stops at once naming
the first; a killed run leaves no stale lock and no half-written part behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from hitmodels import outdir

HOLD = ("import sys, time\nfrom hitmodels import outdir\nwith outdir.exclusive(sys.argv[1], 'extract'):\n"
        "    print('held', flush=True)\n    time.sleep(120)\n")


def _holder(out) -> subprocess.Popen:
    """Another process holding ``out``'s lock, as a running job's driver would."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_is_refused_naming_the_first_and_a_killed_one_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "out"
    holder = _holder(out)
    try:
        with pytest.raises(outdir.OutputLocked) as err:
            with outdir.exclusive(str(out), "score"):
                pass
        msg = str(err.value)
        print(msg)
        assert f"the extract job (pid {holder.pid} on" in msg and "last heartbeat" in msg
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up of its own: the kernel releases the lock
        holder.wait()
    (out / outdir.STAGING).mkdir()
    (out / outdir.STAGING / "part-half.parquet").write_bytes(b"PAR1 half")  # what a killed writer leaves
    with outdir.exclusive(str(out), "score"):
        assert not list((out / outdir.STAGING).iterdir())
        with pytest.raises(outdir.OutputLocked):  # the same process, a second run: refused too
            with outdir.exclusive(str(out), "score"):
                pass
    with outdir.exclusive(str(out), "score"):  # released on exit
        pass


@pytest.mark.parametrize("job", ["extract", "score"])
def test_the_cli_stops_before_any_work_when_out_is_busy(tmp_path, job):
    """Refused before Ray starts or a row is read: exit 2 with the holder's pid, and nothing written."""
    out = tmp_path / "out"
    holder = _holder(out)
    try:
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "hitmodels.cli", job, str(tmp_path / "absent.parquet"),
                               str(out)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "HITMUSIC_HOME": str(tmp_path / "home")}, cwd=tmp_path)
        print(f"{job} into a busy OUT: exit {proc.returncode} after {time.monotonic() - start:.1f} s")
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"is being written by the extract job (pid {holder.pid} on" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert sorted(p.name for p in out.iterdir()) == [outdir.LOCK_FILE]
    finally:
        holder.kill()
        holder.wait()


def test_a_part_is_whole_or_absent(tmp_path, monkeypatch):
    """A writer that dies mid-file leaves its bytes under _staging/, never a part in OUT that a resume would
    count or quarantine; a finished one is renamed in whole."""
    fs, table = pafs.LocalFileSystem(), pa.table({"track_id": ["a", "b"], "x": [1.0, 2.0]})
    real = pq.write_table

    def dies_midway(t, where, **kw):
        with open(where, "wb") as f:
            f.write(b"PAR1 partial")
        raise OSError("no space left on device")

    monkeypatch.setattr(pq, "write_table", dies_midway)
    with pytest.raises(OSError):
        outdir.write_part(table, fs, str(tmp_path))
    assert not list(tmp_path.glob("*.parquet")) and len(list((tmp_path / outdir.STAGING).iterdir())) == 1
    monkeypatch.setattr(pq, "write_table", real)
    row = outdir.write_part(table, fs, str(tmp_path)).to_pylist()[0]
    assert row["rows"] == 2 and pq.read_table(tmp_path / row["part"]).equals(outdir.with_attempts(table, None))
    assert outdir.write_part(table.slice(0, 0), fs, str(tmp_path)).to_pylist() == [{"part": None, "rows": 0}]


def test_the_lock_names_its_command_without_credentials_and_only_its_owner_reads_it(tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(sys, "argv", ["hitmusic", "score", "t.parquet", str(tmp_path / "out"), "--tracking-uri",
                                      "https://alice:s3cret@mlflow.example:5000/x?token=abc"])
    with outdir.exclusive(str(tmp_path / "out"), "score"):
        pass
    # read once the run is over: while it runs, the heartbeat rewrites the file (truncate, then write)
    lock = tmp_path / "out" / outdir.LOCK_FILE
    owner = json.loads(lock.read_text())
    assert os.stat(lock).st_mode & 0o077 == 0  # others cannot read who runs what
    assert "s3cret" not in owner["argv"] and "alice" not in owner["argv"] and "abc" not in owner["argv"]
    assert "https://mlflow.example:5000/x?…" in owner["argv"] and "--tracking-uri" in owner["argv"]


def test_the_outage_message_shows_no_credentials():
    from hitmodels.tracking import outage_message

    msg = outage_message("http://bob:pw@127.0.0.1:5000")
    assert "pw" not in msg.replace("point", "") and "bob" not in msg and "http://127.0.0.1:5000" in msg
