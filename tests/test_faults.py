"""Faults a real run meets: damaged checkpoints, a checkpoint of another model size, preemption (SIGTERM, kill -9),
a full disk, resumed logs, a damaged dataset, out-of-table camera ids, a finished run started again, and config
mistakes on the command line. Each fault ends in one clear line and loses nothing."""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import tiny
from tmspr_jax import checkpoints, experiment, train, weights
from tmspr_jax.data import sources
from tmspr_jax.models import build_model, init_variables
from tmspr_jax.tools import export as ex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")


def _config(root: str, **train_overrides):
    c = tiny.train_config(root)  # 2 epochs of 2 steps, an evaluation after each
    for k, v in train_overrides.items():
        c.train[k] = v
    return c


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory) -> tuple[str, dict]:
    """A finished run: checkpoints at steps 2 and 4 (both evaluated), and its results."""
    workdir = str(tmp_path_factory.mktemp("trained") / "run")
    results = train.train_and_evaluate(_config(data_root), workdir)
    return workdir, results


def _copy(trained, tmp_path) -> str:
    dest = str(tmp_path / "run")
    shutil.copytree(trained[0], dest)
    return dest


def _damage(step_dir: str, kind: str) -> None:
    state = os.path.join(step_dir, "state")
    if kind == "no_state":
        shutil.rmtree(state)
        return
    files = [os.path.join(r, f) for r, _, fs in os.walk(state) for f in fs]
    biggest = max(files, key=os.path.getsize)
    data = bytearray(open(biggest, "rb").read())
    if kind == "truncate":
        data = data[: len(data) // 2]
    else:  # same size, other bytes
        for i in range(len(data) // 2, min(len(data), len(data) // 2 + 64)):
            data[i] ^= 0x5A
    with open(biggest, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------------------------------------- checkpoints


def test_damaged_latest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_newest_intact(
    trained,
    tmp_path,
    caplog,
    data_root,
):
    workdir = _copy(trained, tmp_path)
    _damage(os.path.join(workdir, "checkpoints", "4"), "flip")  # same size, other bytes
    with caplog.at_level(logging.WARNING):
        results = train.train_and_evaluate(_config(data_root), workdir)
    warnings = [r.getMessage() for r in caplog.records if "Damaged checkpoint" in r.getMessage()]
    assert len(warnings) == 1 and os.path.join("checkpoints", "4") in warnings[0] and "using step 2" in warnings[0]
    assert os.path.isdir(os.path.join(workdir, "checkpoints_damaged", "4"))
    # Epoch 2 ran again from step 2, so it ends where the undamaged run ended.
    step, variables = tiny.latest_variables(workdir)
    _, want = tiny.latest_variables(trained[0])
    assert step == 4 and results["mAP"] == pytest.approx(trained[1]["mAP"])
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("kind", ["truncate", "no_state"])
def test_truncated_or_missing_state_falls_back_to_the_newest_intact(trained, tmp_path, caplog, kind):
    workdir = _copy(trained, tmp_path)
    _damage(os.path.join(workdir, "checkpoints", "4"), kind)
    manager = checkpoints.make_manager(workdir, 2)
    with caplog.at_level(logging.WARNING):
        step, state, _ = checkpoints.restore_newest_intact(
            manager, checkpoints.candidate_steps(manager, prefer_best=False), move_damaged=True
        )
    assert step == 2 and int(state["step"]) == 2
    assert sum("Damaged checkpoint" in r.getMessage() for r in caplog.records) == 1
    assert manager.all_steps() == [2] and os.path.isdir(os.path.join(workdir, "checkpoints_damaged", "4"))


def test_every_checkpoint_damaged_is_one_error(trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    for step in (2, 4):
        _damage(os.path.join(workdir, "checkpoints", str(step)), "flip")
    manager = checkpoints.make_manager(workdir, 2, read_only=True)
    with pytest.raises(checkpoints.DamagedCheckpointError, match="no intact checkpoint") as e:
        checkpoints.restore_newest_intact(manager, checkpoints.candidate_steps(manager))
    assert "checkpoints/2/state" in str(e.value) and "checkpoints/4/state" in str(e.value)


def test_checkpoint_of_another_model_size_is_refused_before_anything_runs(trained, tmp_path, data_root):
    cfg = _config(data_root)
    cfg.model.depth = 3
    cfg.init_checkpoint = trained[0]
    with pytest.raises(ValueError, match=r"depth=2 in the checkpoint but depth=3 for the config \(from model.depth\)"):
        experiment.evaluate_only(cfg, str(tmp_path / "eval"))
    # Resuming a workdir with another width: refused before its logs or checkpoints change.
    workdir = _copy(trained, tmp_path)
    before = open(os.path.join(workdir, "metrics.jsonl")).read()
    cfg = _config(data_root)
    cfg.train.epochs = 3
    cfg.model.embed_dim = 64
    with pytest.raises(ValueError, match=r"embed_dim=32 in the checkpoint but embed_dim=64"):
        train.train_and_evaluate(cfg, workdir)
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == before
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    # A converted weights folder: compared from meta.json, before its arrays are read.
    small = _config(data_root)
    exp = experiment.setup_experiment(small)
    folder = str(tmp_path / "weights")
    weights.save_variables(folder, init_variables(exp.model, jax.random.PRNGKey(0)), weights.model_meta(exp.model))
    small.model.num_heads = 1
    small.model.depth = 1
    with pytest.raises(ValueError, match=r"meta.json: depth=2 in the checkpoint but depth=1"):
        experiment.load_checkpoint_variables(folder, experiment.setup_experiment(small))


def test_eval_without_an_evaluated_checkpoint_uses_the_latest_and_a_step_can_be_chosen(
    trained,
    tmp_path,
    data_root,
):
    cfg = _config(data_root, eval_period=10)
    stopped = str(tmp_path / "stopped")
    train.train_and_evaluate(cfg, stopped, stop_after_steps=3)  # checkpoint at step 2, never evaluated
    cfg.init_checkpoint = stopped
    results = experiment.evaluate_only(cfg, str(tmp_path / "eval"))
    assert 0.0 <= results["mAP"] <= 1.0
    # init_step picks a step; a missing one names the steps there are.
    cfg = _config(data_root)
    exp = experiment.setup_experiment(cfg)
    two = experiment.load_checkpoint_variables(trained[0], exp, step=2)
    four = experiment.load_checkpoint_variables(trained[0], exp, step=4)
    manager = checkpoints.make_manager(trained[0], 2, read_only=True)
    saved_two = checkpoints.restore_verified(manager, 2)[0]["params"]
    for a, b in zip(jax.tree.leaves(two["params"]), jax.tree.leaves(saved_two)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(four)))
    with pytest.raises(ValueError, match=r"no checkpoint of step 3; its steps are \[2, 4\]"):
        experiment.load_checkpoint_variables(trained[0], exp, step=3)


def test_finished_run_started_again_returns_its_trained_results(trained, tmp_path, data_root):
    workdir = _copy(trained, tmp_path)
    again = train.train_and_evaluate(_config(data_root), workdir)
    assert again["mAP"] == pytest.approx(trained[1]["mAP"]) and again["epoch"] == 2


# ---------------------------------------------------------------------------------------------------- logs, disk


def _tb_events(folder: str) -> list:
    from tensorboardX.proto import event_pb2

    events = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12 : pos + 12 + length])
            events.append(event)
            pos += 12 + length + 4
    return events


def test_resumed_run_logs_no_step_twice(tmp_path, data_root):
    cfg = _config(data_root)
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(cfg, workdir, stop_after_steps=3)  # logged 1, 2, 3; the checkpoint is step 2
    train.train_and_evaluate(cfg, workdir)
    rows = tiny.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [2, 4]
    # TensorBoard is told to discard the first run's events after step 2 (its purge mechanism).
    starts = [e.step for e in _tb_events(os.path.join(workdir, "tb")) if e.HasField("session_log")]
    assert 3 in starts


_FULL_DISK_CONFIG = """
import sys
sys.path.insert(0, {tests!r})
from tiny import train_config


def get_config():
    c = train_config({root!r})
    c.train.eval_period = 2  # epoch 1: a checkpoint but no evaluation
    return c
"""


def test_full_disk_during_an_async_save_stops_the_run_with_one_line(tmp_path, data_root):
    """The file size limit (16 KiB: the checkpoint's arrays do not fit) applies to the run's own process only, not to
    pytest's capture files or logs; its stderr is a pipe, which the limit does not cover."""
    config_file = tmp_path / "full_disk.py"
    config_file.write_text(_FULL_DISK_CONFIG.format(tests=TESTS, root=data_root))
    workdir = tmp_path / "run"
    main = shlex.join([sys.executable, "-m", "tmspr_jax.main", f"--config={config_file}", f"--workdir={workdir}"])
    out = subprocess.run(
        # SIGXFSZ ignored: a write past the limit fails with EFBIG instead of ending the process
        ["bash", "-c", f"ulimit -f 16 && trap '' XFSZ && exec {main}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONDONTWRITEBYTECODE="1"),
    )
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert out.returncode == 1, out.stderr[-3000:]
    assert len(errors) == 1 and re.search(r"A checkpoint save in .* failed .*training stopped", errors[0]), errors
    assert not os.path.exists(workdir / "results.json")  # no epoch claimed without its checkpoint


# ---------------------------------------------------------------------------------------------------- data, export


def test_damaged_prepared_dataset_names_its_files_and_the_prepare_command(tmp_path, data_root):
    tfds_dir = str(tmp_path / "tfds")
    shutil.copytree(os.path.join(data_root, "tfds"), tfds_dir)
    folder = os.path.join(tfds_dir, "synthetic_occluded", "1.0.0")
    path = next(os.path.join(folder, f) for f in os.listdir(folder) if "-train.array_record" in f)
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) // 3, len(data) // 3 + 256):
        data[i] ^= 0xFF
    open(path, "wb").write(data)
    split = sources.open_split("synthetic_occluded", "train", tfds_dir)
    with pytest.raises(sources.CorruptDatasetError, match=r"damaged: cannot read .*-train\.array_record.*prepare"):
        _ = split.pids


def test_exported_program_gives_nan_rows_for_camera_ids_outside_its_table():
    cfg = tiny.model_config()
    model = build_model(cfg, (64, 32), num_classes=5, num_cameras=3)
    variables = init_variables(model, jax.random.PRNGKey(0))
    exported = ex.export_features_fn(model, variables, (64, 32))
    images = np.random.default_rng(0).normal(size=(4, 64, 32, 3)).astype(np.float32)
    out = np.asarray(exported.call(images, np.array([0, 3, -1, 2], np.int32)))
    assert np.isnan(out[[1, 2]]).all() and np.isfinite(out[[0, 3]]).all()
    # The bad rows take no part in the others' features: as if only the good rows had been sent.
    good = np.asarray(exported.call(images[[0, 3]], np.array([0, 2], np.int32)))
    np.testing.assert_allclose(out[[0, 3]], good, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- processes

_CONFIG_FILE = """
import sys
sys.path.insert(0, {tests!r})
from tiny import train_config


def get_config():
    c = train_config({root!r})
    c.data.num_workers = 1
    c.train.epochs = 40
    c.train.max_steps_per_epoch = 4
    c.train.eval_period = 40
    c.train.checkpoint_every = 100  # no checkpoint but the one SIGTERM writes
    return c
"""


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _start_trainer(tmp_path, root: str) -> tuple[subprocess.Popen, str, list[int]]:
    """Starts ``python -m tmspr_jax.main`` with one grain worker; returns once a step is logged, with the workers.
    Its stderr goes to ``tmp_path/stderr.txt`` (a pipe nobody reads could fill and stall it)."""
    config_file = tmp_path / "tiny_run.py"
    config_file.write_text(_CONFIG_FILE.format(tests=TESTS, root=root))
    workdir = str(tmp_path / "run")
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tmspr_jax.main", f"--config={config_file}", f"--workdir={workdir}"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=dict(os.environ, JAX_PLATFORMS="cpu"),
        )
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 480  # compilation on a busy 2-core machine
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and any('"train"' in line for line in open(metrics)):
            break
        time.sleep(0.2)
    assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
    workers = [c for c in _children(proc.pid) if "multiprocessing" in open(f"/proc/{c}/cmdline").read()]
    assert workers, "no grain worker process found"
    return proc, workdir, workers


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_sigterm_finishes_the_step_saves_and_exits_with_one_line(tmp_path, data_root):
    proc, workdir, workers = _start_trainer(tmp_path, data_root)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("Stopped by SIGTERM")]
    assert len(lines) == 1 and "run the same command to resume" in lines[0] and "Traceback" not in err
    step, _ = tiny.latest_variables(workdir)
    logged = [r["step"] for r in tiny.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["kind"] == "train"]
    assert f"after step {step}:" in lines[0] and logged[-1] == step  # every logged step is in the checkpoint
    assert not _wait_gone(workers)


def test_grain_workers_never_outlive_a_killed_trainer(tmp_path, data_root):
    proc, _, workers = _start_trainer(tmp_path, data_root)
    proc.kill()  # kill -9: no cleanup runs in the trainer
    proc.wait(timeout=60)
    survivors = _wait_gone(workers)
    for p in survivors:  # do not leave them behind if the test fails
        os.kill(p, signal.SIGKILL)
    assert not survivors


# ---------------------------------------------------------------------------------------------------- command line


def _main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tmspr_jax.main", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--config=configs/demo.py", "--config.model.no_such_key=1"), "config.model has no key 'no_such_key'"),
        (("--config=configs/no_such.py",), "configs/no_such.py: no such config file"),
        (("--config.model.depth=2",), "--config.model.depth=2: overrides need --config=FILE"),
        (("--config=configs/demo.py", "--workdir={file}"), "is a file, not a folder"),
        (("--config=configs/demo.py", "--workdir={file}/sub"), "is not writable"),
    ],
)
def test_config_and_workdir_mistakes_are_one_line(tmp_path, args, expected):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    args = [a.format(file=a_file) for a in args]
    if not any(a.startswith("--workdir") for a in args):
        args.append(f"--workdir={tmp_path / 'w'}")
    out = _main(*args)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert out.returncode == 1 and len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert expected in errors[0]
    assert not os.path.exists(tmp_path / "w" / "metrics.jsonl")


def test_gitignore_covers_what_the_commands_write():
    paths = [
        "weights/vit_in1k/meta.json",
        "workdirs/demo/metrics.jsonl",
        "feats.npz",
        "run/features.npz",
        "ranks/000_q.png",
        "ranks/ranks.json",
        "M.jax_exported",
        "out/M.jax_exported.json",
        "cmp.json",
    ]
    out = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True)
    assert sorted(out.stdout.split()) == sorted(paths)
