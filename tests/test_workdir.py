"""A run's workdir: one run holds it (tmspr_jax.workdir.WorkdirLock), evaluations write their own records, and no
step is logged twice however a run ended."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import tiny
from tmspr_jax import experiment, train
from tmspr_jax.workdir import WorkdirBusy, WorkdirLock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_lock(workdir, **holder) -> str:
    path = os.path.join(workdir, WorkdirLock.FILE)
    with open(path, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": "then", "command": "x", **holder}, f)
    return path


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_the_lock_is_held_for_the_run_refuses_a_second_and_is_removed_on_exit(tmp_path):
    path = tmp_path / WorkdirLock.FILE
    with WorkdirLock(str(tmp_path)):
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(WorkdirBusy) as e:
            WorkdirLock(str(tmp_path)).acquire()
        message = str(e.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in message and "\n" not in message
        assert f"--workdir={tmp_path} is in use" in message
    assert not path.exists()
    with pytest.raises(RuntimeError), WorkdirLock(str(tmp_path)):
        raise RuntimeError("the run failed")
    assert not path.exists()


def test_a_stale_lock_on_this_host_is_taken_over(tmp_path):
    _write_lock(str(tmp_path), pid=_dead_pid())  # its process is gone (kill -9, a crash)
    with WorkdirLock(str(tmp_path)):
        assert json.loads((tmp_path / WorkdirLock.FILE).read_text())["pid"] == os.getpid()
    # a live pid that is now another program (its start time differs): stale too
    _write_lock(str(tmp_path), pid=os.getpid(), process_start="1")
    with WorkdirLock(str(tmp_path)):
        pass
    # a live holder is not
    _write_lock(str(tmp_path), pid=os.getppid())
    with pytest.raises(WorkdirBusy, match=f"pid {os.getppid()}"):
        WorkdirLock(str(tmp_path)).acquire()


def test_a_lock_from_another_host_is_stale_only_once_its_holder_stopped_touching_it(tmp_path):
    path = _write_lock(str(tmp_path), host="other-host", pid=1)
    with pytest.raises(WorkdirBusy, match="pid 1 on host other-host"):
        WorkdirLock(str(tmp_path)).acquire()
    old = time.time() - WorkdirLock.STALE_S - 10
    os.utime(path, (old, old))
    with WorkdirLock(str(tmp_path)):
        pass
    # an empty lock (its writer died between creating and writing it): busy while fresh, stale when old
    open(path, "w").close()
    with pytest.raises(WorkdirBusy, match="being written"):
        WorkdirLock(str(tmp_path)).acquire()
    os.utime(path, (old, old))
    with WorkdirLock(str(tmp_path)):
        pass


def test_the_holder_touches_the_lock_while_it_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(WorkdirLock, "HEARTBEAT_S", 0.05)
    with WorkdirLock(str(tmp_path)):
        path = tmp_path / WorkdirLock.FILE
        os.utime(path, (1, 1))
        deadline = time.time() + 10
        while path.stat().st_mtime == 1 and time.time() < deadline:
            time.sleep(0.05)
        assert path.stat().st_mtime > 1


def test_sigterm_removes_the_lock(tmp_path):
    code = (
        "import sys; from tmspr_jax.workdir import WorkdirLock\n"
        "with WorkdirLock(sys.argv[1]):\n    print('held', flush=True); import time; time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    assert (tmp_path / WorkdirLock.FILE).exists()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 128 + signal.SIGTERM
    assert not (tmp_path / WorkdirLock.FILE).exists()


def test_main_refuses_a_workdir_held_by_another_run_in_one_line_before_any_work(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    _write_lock(str(workdir), pid=os.getpid(), command="python -m tmspr_jax.main --workdir=w")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tmspr_jax.main",
            "--config=configs/demo.py",
            f"--config.data.data_dir={tmp_path / 'tfds'}",
            f"--config.data.manual_dir={tmp_path / 'raw'}",
            f"--workdir={workdir}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert len(errors) == 1 and f"is in use by pid {os.getpid()} on host" in errors[0], out.stderr
    assert not (tmp_path / "raw").exists() and sorted(os.listdir(workdir)) == [WorkdirLock.FILE]


def test_eval_writes_its_own_record_and_no_step_is_logged_twice(data_root, tmp_path):
    workdir = str(tmp_path / "run")
    metrics = os.path.join(workdir, "metrics.jsonl")
    # A run stopped before its first checkpoint (Ctrl-C, kill -9) leaves rows of steps the next run repeats.
    cfg = tiny.train_config(data_root)
    train.train_and_evaluate(cfg, workdir, stop_after_steps=1)
    assert [r["step"] for r in tiny.read_jsonl(metrics)] == [1]
    trained = train.train_and_evaluate(cfg, workdir)
    rows = tiny.read_jsonl(metrics)
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
    with open(os.path.join(workdir, "results.json")) as f:
        saved = f.read()

    # --mode=eval into the training's workdir: its own record, by checkpoint step; the training's untouched.
    eval_cfg = tiny.train_config(data_root)
    eval_cfg.init_checkpoint, eval_cfg.init_step = workdir, 2
    record = experiment.evaluate_only(eval_cfg, workdir)
    assert record["step"] == 2 and record["checkpoint"] == workdir
    with open(os.path.join(workdir, "eval_results", "step_2.json")) as f:
        assert json.load(f)["mAP"] == pytest.approx(record["mAP"])
    with open(os.path.join(workdir, "results.json")) as f:
        assert f.read() == saved
    assert tiny.read_jsonl(metrics) == rows

    # The finished training run again reports its own figures.
    again = train.train_and_evaluate(cfg, workdir)
    assert again["epoch"] == trained["epoch"] == 2 and again["mAP"] == pytest.approx(trained["mAP"])
