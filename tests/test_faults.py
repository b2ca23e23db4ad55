"""Everyday faults end in one line, not a traceback or a silent mix of two runs: Ctrl-C, a second run in the
same workdir, a resume with a config that changes the run, a workdir that cannot be one."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jaxrlhf.infra import preemption, workdir_lock
from jaxrlhf.training.resume_guard import changed_keys
from tests.helpers.data import write_separable_pairs
from tests.helpers.models import make_tiny_llama_dir
from tests.helpers.runs import complete_steps, rm_cli_args, tiny_rm_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    return make_tiny_llama_dir(d / "model"), write_separable_pairs(d / "pairs.jsonl", 96), d


# ----------------------------------------------------------------------------- Ctrl-C

def test_first_ctrl_c_requests_a_stop_and_the_second_interrupts():
    preemption.clear()
    preemption._on_signal(signal.SIGINT, None)
    assert preemption.should_stop()
    with pytest.raises(KeyboardInterrupt):
        preemption._on_signal(signal.SIGINT, None)
    preemption.clear()
    assert not preemption.should_stop()


def test_keyboard_interrupt_on_the_command_line_is_one_line_and_exit_130():
    code = "from jaxrlhf.infra.runtime import cli_errors\nwith cli_errors():\n    raise KeyboardInterrupt\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 130
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted"), out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ctrl_c_finishes_the_step_saves_and_exits_zero(setup, tmp_path):
    model, data, _ = setup
    work = tmp_path / "interrupted"
    args = rm_cli_args(model, data, work, {"train.checkpoint_every": 1000, "train.epochs": 30,
                                           "train.eval_every": 100000})
    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "hf"))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = work / "metrics.jsonl", time.time() + 240
    while time.time() < deadline and not (metrics.is_file() and "train/loss" in metrics.read_text()):
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "Ctrl-C: stopping after the step in flight" in stderr and "Traceback" not in stderr
    assert "stopped at step" in stdout and "rerun the same command to resume" in stdout
    steps = complete_steps(work / "checkpoints")
    assert len(steps) == 1 and 0 < steps[0] < 300
    assert not (work / workdir_lock.LOCK_NAME).exists()  # released at exit


# ----------------------------------------------------------------------------- one run per workdir

def _holder(workdir):
    """A process holding the workdir's lock until killed."""
    code = (f"import time\nfrom pathlib import Path\nfrom jaxrlhf.infra import workdir_lock\n"
            f"workdir_lock.acquire(Path({str(workdir)!r}))\nprint('held', flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(ValueError, match=rf"in use by another run \(pid {holder.pid} on"):
            workdir_lock.acquire(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    workdir_lock.acquire(tmp_path)  # its owner is gone: stale
    owner = json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())
    assert owner["pid"] == os.getpid()
    workdir_lock.acquire(tmp_path)  # the owner again: fine
    workdir_lock.release(tmp_path)
    assert not (tmp_path / workdir_lock.LOCK_NAME).exists()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_second_run_on_a_locked_workdir_refuses_with_one_line(setup, tmp_path):
    model, data, _ = setup
    work = tmp_path / "busy"
    work.mkdir()
    holder = _holder(work)
    try:
        out = subprocess.run(rm_cli_args(model, data, work), capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "hf")))
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip().splitlines()[-1]]
    assert f"is in use by another run (pid {holder.pid}" in out.stderr
    assert not (work / "checkpoints").exists()


# ----------------------------------------------------------------------------- resume with another config

def test_changed_keys_ignores_cadence_and_mesh_and_reports_the_rest():
    old = {"data": {"batch_size": 8, "eval_batch_size": 8}, "mesh": {"data": -1}, "train": {"log_every": 5},
           "optim": {"learning_rate": 1e-3, "schedule": "cosine"}, "model": {"lora_targets": ["q", "v"]}}
    new = {"data": {"batch_size": 4, "eval_batch_size": 2}, "mesh": {"data": 2}, "train": {"log_every": 1},
           "optim": {"learning_rate": 1e-3, "schedule": "linear"}, "model": {"lora_targets": ("q", "v")},
           "loss": {"new_key": 1}}  # a key the old run did not have: not a difference
    assert changed_keys(old, new) == [("data.batch_size", 8, 4), ("optim.schedule", "cosine", "linear")]


@pytest.mark.slow
def test_resume_with_another_batch_size_refuses_unless_accepted(setup, tmp_path):
    from jaxrlhf.train_rm import train

    model, data, _ = setup
    config = tiny_rm_config(model, data, tmp_path / "work")
    config.train.stop_after = 5
    assert train(config) == {"stopped_at": 5}
    config.train.stop_after = 0
    config.data.batch_size = 4
    with pytest.raises(ValueError, match=r"another config \(data.batch_size: 8 -> 4\).*allow_config_change=True"):
        train(config)
    assert json.loads((tmp_path / "work" / "run_config.json").read_text())["data"]["batch_size"] == 8
    config.data.batch_size, config.train.log_every, config.train.max_steps = 8, 1, 7  # cadence may change...
    config.train.allow_config_change = True  # ...and max_steps only when accepted
    assert "accuracy" in train(config)
    assert complete_steps(tmp_path / "work" / "checkpoints")[-1] == 7


@pytest.mark.slow
def test_resume_false_sets_the_old_checkpoints_aside(setup, tmp_path):
    from jaxrlhf.train_rm import train

    model, data, _ = setup
    config = tiny_rm_config(model, data, tmp_path / "work")
    config.train.stop_after = 5
    train(config)
    config.train.resume, config.train.stop_after = False, 3
    assert train(config) == {"stopped_at": 3}
    aside = [p for p in (tmp_path / "work").iterdir() if p.name.startswith("checkpoints.before-")]
    assert len(aside) == 1 and complete_steps(aside[0]) == [5]
    assert complete_steps(tmp_path / "work" / "checkpoints") == [3]


# ----------------------------------------------------------------------------- a workdir that cannot be one

def test_workdir_that_is_a_file_is_one_line(setup, tmp_path):
    from jaxrlhf.train_rm import train

    model, data, _ = setup
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        train(tiny_rm_config(model, data, tmp_path / "file"))
    with pytest.raises(ValueError, match="is a file, not a folder"):
        train(tiny_rm_config(model, data, tmp_path / "file" / "below"))
