"""A non-finite loss or gradient never reaches the parameters; the run stops with one clear line or skips."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxrlhf.training.accumulate import guarded_update
from tests.helpers.data import write_separable_pairs
from tests.helpers.models import make_tiny_llama_dir
from tests.helpers.runs import tiny_rm_config

pytestmark = pytest.mark.slow  # trains, spawns processes or loads a real model


def test_guarded_update_keeps_params_and_moments_on_nan():
    opt = optax.adam(0.1)
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    good = {"w": jnp.array([1.0, -1.0, 0.5])}
    p1, s1, bad1 = guarded_update(params, state, good, opt, jnp.float32(1.0))
    assert float(bad1) == 0.0 and not np.allclose(p1["w"], 1.0)
    nan = {"w": jnp.array([1.0, jnp.nan, 0.5])}
    p2, s2, bad2 = guarded_update(p1, s1, nan, opt, jnp.float32(1.0))
    assert float(bad2) == 1.0
    np.testing.assert_array_equal(p2["w"], p1["w"])
    for a, b in zip(jax.tree_util.tree_leaves(s2), jax.tree_util.tree_leaves(s1)):
        np.testing.assert_array_equal(a, b)
    _, _, bad3 = guarded_update(p1, s1, good, opt, jnp.float32(jnp.inf))  # a non-finite loss alone too
    assert float(bad3) == 1.0


@pytest.fixture(scope="module")
def exploding(tmp_path_factory):
    d = tmp_path_factory.mktemp("nonfinite")
    return make_tiny_llama_dir(d / "model"), write_separable_pairs(d / "pairs.jsonl", 64)


def exploding_config(model, data, workdir):
    config = tiny_rm_config(model, data, workdir)
    config.optim.learning_rate = 1e30  # parameters overflow within a few steps
    config.optim.max_grad_norm = 0.0
    config.optim.warmup_steps = 0
    config.train.epochs = 2
    config.train.log_every = 1
    config.train.checkpoint_every = 1
    return config


@pytest.mark.multiprocess
def test_stop_mode_is_one_line_and_keeps_only_finite_checkpoints(exploding, tmp_path):
    model, data = exploding
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "-m", "jaxrlhf.train_rm", f"--config={root / 'jaxrlhf/configs/rm.py'}",
                          f"--config.model.name={model}", f"--config.data.source={data}",
                          f"--config.workdir={tmp_path / 'work'}", "--config.data.eval_size=16",
                          "--config.data.max_length=32", "--config.data.batch_size=8",
                          "--config.optim.learning_rate=1e30", "--config.optim.max_grad_norm=0",
                          "--config.optim.warmup_steps=0", "--config.train.log_every=1",
                          "--config.train.checkpoint_every=1", "--config.train.export=False"],
                         capture_output=True, text=True, env=dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "hf")))
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("error: step ") and "not finite" in last and "Traceback" not in out.stderr
    from jaxrlhf.rm.load import load_trained_rm

    loaded = load_trained_rm(str(tmp_path / "work")).loaded  # the newest checkpoint is a good one
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(nnx.state(loaded.model)))


def test_skip_mode_finishes_with_finite_parameters(exploding, tmp_path):
    from jaxrlhf.rm.load import load_trained_rm
    from jaxrlhf.train_rm import train

    model, data = exploding
    config = exploding_config(model, data, tmp_path / "work")
    config.train.on_nonfinite = "skip"
    summary = train(config)
    assert summary["skipped_nonfinite_steps"] > 0
    loaded = load_trained_rm(str(tmp_path / "work")).loaded
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(nnx.state(loaded.model)))
