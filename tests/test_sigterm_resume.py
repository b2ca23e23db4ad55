"""SIGTERM (what a TPU VM gets before preemption) saves a checkpoint and exits 0 within a bounded time;
rerunning the same command resumes and ends with parameters equal bit for bit to an uninterrupted run."""

import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from flax import nnx

from tests.helpers.data import write_separable_pairs
from tests.helpers.models import make_tiny_llama_dir
from tests.helpers.runs import complete_steps, rm_cli_args, tiny_rm_config

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]  # a training CLI stopped by SIGTERM and rerun


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("sigterm")
    return make_tiny_llama_dir(d / "model"), write_separable_pairs(d / "pairs.jsonl", 96), d


def test_sigterm_saves_exits_zero_and_resume_is_exact(setup, tmp_path):
    from jaxrlhf.rm.load import load_trained_rm
    from jaxrlhf.train_rm import train

    model, data, _ = setup
    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "hf"))
    work = tmp_path / "preempted"
    # 300 steps (a few seconds), long enough for the signal to land mid-run; no periodic checkpoints.
    args = rm_cli_args(model, data, work, {"train.checkpoint_every": 1000, "train.epochs": 30,
                                           "train.eval_every": 100000})
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    metrics = work / "metrics.jsonl"
    while time.time() < deadline and not (metrics.is_file() and "train/loss" in metrics.read_text()):
        time.sleep(0.02)  # the first step has run
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert time.time() - sent < 60  # one step and one save, not the rest of the run
    assert "stopped at step" in stdout
    steps = complete_steps(work / "checkpoints")
    assert len(steps) == 1 and 0 < steps[0] < 300  # saved where it stopped, not at the end

    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resumed from step {steps[0]}" in out.stdout

    straight = tiny_rm_config(model, data, tmp_path / "straight")
    straight.train.epochs, straight.train.checkpoint_every, straight.train.eval_every = 30, 1000, 100000
    train(straight)
    a = jax.tree_util.tree_leaves(nnx.state(load_trained_rm(str(tmp_path / "straight")).loaded.model))
    b = jax.tree_util.tree_leaves(nnx.state(load_trained_rm(str(work)).loaded.model))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
