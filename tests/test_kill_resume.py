"""A run killed with SIGKILL, also in the middle of a checkpoint save, restarts from the last complete
checkpoint and ends with the parameters of a run that was never interrupted."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.rm_helpers import make_tiny_llama_dir, tiny_rm_config, write_separable_pairs

pytestmark = pytest.mark.slow  # trains, spawns processes or loads a real model

ROOT = Path(__file__).parents[1]


def train_args(model, data, workdir):
    return [sys.executable, "-m", "jaxrlhf.train_rm", f"--config={ROOT / 'jaxrlhf/configs/rm.py'}",
            f"--config.model.name={model}", f"--config.data.source={data}", f"--config.workdir={workdir}",
            "--config.data.eval_size=16", "--config.data.max_length=32", "--config.data.batch_size=8",
            "--config.data.eval_batch_size=8", "--config.data.pad_to_multiple=16",
            "--config.optim.learning_rate=3e-3", "--config.optim.warmup_steps=2", "--config.train.epochs=2",
            "--config.train.log_every=5", "--config.train.checkpoint_every=1", "--config.train.keep_checkpoints=2",
            "--config.train.export=False", "--config.train.histogram=False"]


def in_progress_save(ckpt_dir: Path) -> bool:
    """Orbax writes a step into a temporary folder and renames it when complete."""
    return ckpt_dir.is_dir() and any("tmp" in p.name for p in ckpt_dir.iterdir())


def complete_steps(ckpt_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) if ckpt_dir.is_dir() else []


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill")
    return make_tiny_llama_dir(d / "model"), write_separable_pairs(d / "pairs.jsonl", 96), d


def test_sigkill_during_saves_then_restart_matches_uninterrupted(setup, tmp_path):
    from flax import nnx
    import jax

    from jaxrlhf.rm.load import load_trained_rm
    from jaxrlhf.train_rm import train

    model, data, _ = setup
    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "hf"))
    work = tmp_path / "killed"
    ckpt_dir = work / "checkpoints"
    kills, killed_mid_save = 0, 0
    # Kill at several moments: the first as soon as a save is seen in progress, then after growing delays.
    for attempt, extra_delay in enumerate((0.0, 0.05, 0.3)):
        before = complete_steps(ckpt_dir)
        proc = subprocess.Popen(train_args(model, data, work), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if in_progress_save(ckpt_dir) and complete_steps(ckpt_dir) != before:
                time.sleep(extra_delay)
                break
            time.sleep(0.002)
        if proc.poll() is None:
            mid_save = in_progress_save(ckpt_dir)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            killed_mid_save += mid_save
        else:
            pytest.fail(f"run {attempt} ended before it could be killed: {proc.stderr.read()[-2000:]}")
        # Whatever the moment, every step folder present is complete and restorable.
        steps = complete_steps(ckpt_dir)
        assert steps, "no complete checkpoint after the kill"
        loaded = load_trained_rm(str(work)).loaded
        leaves = jax.tree_util.tree_leaves(nnx.state(loaded.model))
        assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
    assert kills == 3 and killed_mid_save >= 1, (kills, killed_mid_save)

    out = subprocess.run(train_args(model, data, work), env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from step" in out.stdout

    straight = tiny_rm_config(model, data, tmp_path / "straight")
    straight.train.epochs, straight.train.checkpoint_every = 2, 1000
    train(straight)
    a = jax.tree_util.tree_leaves(nnx.state(load_trained_rm(str(tmp_path / "straight")).loaded.model))
    b = jax.tree_util.tree_leaves(nnx.state(load_trained_rm(str(work)).loaded.model))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
