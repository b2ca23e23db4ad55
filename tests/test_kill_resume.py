"""A run killed with SIGKILL, also in the middle of a checkpoint save, restarts from the last complete
checkpoint and ends with the parameters of a run that was never interrupted."""

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.data import write_separable_pairs
from tests.helpers.models import make_tiny_llama_dir
from tests.helpers.runs import complete_steps, rm_cli_args, tiny_rm_config

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]  # killed and restarted training CLIs


def in_progress_save(ckpt_dir: Path) -> bool:
    """Orbax writes a step into a temporary folder and renames it when complete."""
    return ckpt_dir.is_dir() and any("tmp" in p.name for p in ckpt_dir.iterdir())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill")
    return make_tiny_llama_dir(d / "model"), write_separable_pairs(d / "pairs.jsonl", 96), d


def test_sigkill_during_saves_then_restart_matches_uninterrupted(setup, tmp_path):
    import jax
    from flax import nnx

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
        proc = subprocess.Popen(rm_cli_args(model, data, work), env=env, stdout=subprocess.DEVNULL,
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

    out = subprocess.run(rm_cli_args(model, data, work), env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from step" in out.stdout

    straight = tiny_rm_config(model, data, tmp_path / "straight")
    straight.train.epochs, straight.train.checkpoint_every = 2, 1000
    train(straight)
    a = jax.tree_util.tree_leaves(nnx.state(load_trained_rm(str(tmp_path / "straight")).loaded.model))
    b = jax.tree_util.tree_leaves(nnx.state(load_trained_rm(str(work)).loaded.model))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
