"""The MLflow server goes away (issue 16): a command gives up within its bound with a message that says so, a
training whose server stops mid-run ends FAILED once the server is back and registers nothing, and a short
outage during the epochs costs no epoch's metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from hitmodels.services import free_port, start_mlflow, stop_process
from tests.tables import random_table

pytestmark = pytest.mark.integration


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hitmodels.cli", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_commands_give_up_on_a_dead_server_within_their_bound(tmp_path):
    """MLflow's own client retries for minutes; ours gives up after ~15 s (4 retries, backoff 1) and says
    which server, and what to do."""
    random_table(1).to_parquet(tmp_path / "t.parquet")
    dead = f"http://127.0.0.1:{free_port()}"
    for args in (["train", str(tmp_path / "t.parquet"), "--family", "lasso"],
                 ["score", str(tmp_path / "t.parquet"), str(tmp_path / "scores")]):
        start = time.monotonic()
        proc = _cli(*args, "--tracking-uri", dead, env={"HITMUSIC_HOME": str(tmp_path / "home")}, cwd=tmp_path)
        out, err = proc.communicate(timeout=180)
        took = time.monotonic() - start
        print(f"{args[0]} against a dead server: exit {proc.returncode} after {took:.1f} s")
        assert proc.returncode == 2, err[-3000:]
        assert f"the MLflow server at {dead} did not answer" in err and "hitmusic up" in err, err[-3000:]
        assert "Traceback" not in err
        assert took < 90


def test_training_whose_server_stops_ends_failed_and_registers_nothing(tmp_path):
    """Stop the server after the run has logged epochs: the training goes on through the outage, fails to
    register, waits for the server, which comes back, and finds the run FAILED with no version made."""
    import mlflow

    home, port = tmp_path / "mlflow", free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow(home, "127.0.0.1", port)
    random_table(2, n=160).to_parquet(tmp_path / "t.parquet")
    client = mlflow.MlflowClient(uri)
    # 1 retry per request (not 4): each failed call costs about a second, so the test does not wait out
    # four per request while the server is down
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "HITMUSIC_MLFLOW_END_RUN_WAIT_S": "120",
           "HITMUSIC_HOME": str(tmp_path / "home")}
    proc = _cli("train", str(tmp_path / "t.parquet"), "--config", "1-A", "--epochs", "150", "--patience", "150",
                "--no-classifier", "--experiment", "outage", "--tracking-uri", uri, env=env, cwd=tmp_path)
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        run = None
        while time.monotonic() < deadline:  # until the run has logged a few epochs
            exp = client.get_experiment_by_name("outage")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if runs and len(client.get_metric_history(runs[0].info.run_id, "ae_val_loss")) >= 3:
                run = runs[0]
                break
            assert proc.poll() is None, "".join(err_lines)[-3000:]
            time.sleep(0.5)
        assert run is not None, "the run never logged epochs"
        stop_process(server)
        stopped = time.monotonic()
        while not any("waiting up to" in line for line in err_lines):
            assert proc.poll() is None and time.monotonic() - stopped < 240, "".join(err_lines)[-3000:]
            time.sleep(0.5)
        server = start_mlflow(home, "127.0.0.1", port)  # back, same store
        back = time.monotonic()
        proc.wait(timeout=180)
        reader.join(timeout=10)
        err = "".join(err_lines)
        print(f"server down {back - stopped:.1f} s; training exited {proc.returncode} "
              f"{time.monotonic() - back:.1f} s after it came back")
        assert proc.returncode == 2, err[-3000:]
        assert "did not answer" in err and f"run {run.info.run_id} recorded as FAILED" in err, err[-3000:]
        assert client.get_run(run.info.run_id).info.status == "FAILED"
        assert client.search_model_versions("name='hitmusicnet'") == []
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_process(server)


def test_epoch_metrics_survive_an_outage_and_are_sent_when_the_server_answers(capsys):
    """Unit test of the buffering alone (the server stood in by a function that fails, then answers)."""
    from mlflow.exceptions import MlflowException

    from hitmodels.tracking import EpochMetrics

    sent, state = [], {"down": True}

    def log_batch(rows):
        if state["down"]:
            raise MlflowException("API request to http://x/api failed with exception ConnectionError")
        sent.extend(rows)

    m = EpochMetrics(retry_after_s=0.0, log_batch=log_batch)
    for epoch in range(3):
        m.log({"loss": float(epoch)}, epoch)
    assert sent == [] and len(m.pending) == 3
    state["down"] = False
    m.log({"loss": 3.0}, 3)
    assert [step for _, step in sent] == [0, 1, 2, 3] and m.pending == []
    err = capsys.readouterr().err
    assert err.count("did not answer") == 1 and "4 kept epoch(s)" in err

    def broken(rows):
        raise RuntimeError("a bug, not an outage")

    with pytest.raises(RuntimeError):
        EpochMetrics(log_batch=broken).log({"loss": 0.0}, 0)
