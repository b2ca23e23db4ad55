"""Dynamic loss scaling for float16 compute: the scale's rule by hand, scaled gradients, an overflowed step
skipped (not fatal) with the scale halved, and a float16 RM run that trains with the scale in its state."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.training import loss_scale


def test_scale_halves_on_overflow_and_doubles_after_a_run_of_good_steps(monkeypatch):
    monkeypatch.setattr(loss_scale, "GROWTH_INTERVAL", 3)
    s = loss_scale.init_state(8.0)
    history = []
    for overflowed in (False, False, True, False, False, False, True):
        s = loss_scale.adjust(s, jnp.asarray(overflowed))
        history.append((float(s["scale"]), int(s["good_steps"])))
    assert history == [(8, 1), (8, 2), (4, 0), (4, 1), (4, 2), (8, 0), (4, 0)]
    floor = loss_scale.adjust(loss_scale.init_state(1.0), jnp.asarray(True))
    assert float(floor["scale"]) == loss_scale.MIN_SCALE


def test_auto_scales_float16_only():
    assert loss_scale.wanted("auto", jnp.float16)
    assert not loss_scale.wanted("auto", jnp.bfloat16) and not loss_scale.wanted("auto", jnp.float32)
    assert loss_scale.wanted("dynamic", jnp.float32) and not loss_scale.wanted("none", jnp.float16)
    with pytest.raises(ValueError, match="optim.loss_scale must be one of"):
        loss_scale.wanted("static", jnp.float16)


def test_scaled_gradients_are_the_plain_ones_times_the_scale():
    def loss_fn(p, frozen, batch, key):
        return jnp.sum((p["w"] * batch) ** 2), {"n": jnp.float32(3)}

    p, batch = {"w": jnp.asarray([0.5, -1.5, 2.0])}, jnp.asarray([1.0, 2.0, 3.0])
    (loss, aux), grads = loss_scale.scaled_value_and_grad(loss_fn)(p, None, batch, None, scale=1024.0)
    (plain_loss, _), plain = jax.value_and_grad(loss_fn, has_aux=True)(p, None, batch, None)
    assert float(loss) == float(plain_loss) and float(aux["n"]) == 3.0  # loss and aux come back unscaled
    np.testing.assert_array_equal(np.asarray(grads["w"]), 1024.0 * np.asarray(plain["w"]))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from tests.helpers.models import make_tiny_llama_dir

    return make_tiny_llama_dir(tmp_path_factory.mktemp("fp16") / "model")


def test_an_overflowed_float16_step_is_skipped_and_the_scale_halves(llama_dir):
    from tests.test_precision import _pairs, _rm_step

    step, state, frozen = _rm_step(llama_dir, "float32", 1e-3, dtype="float16")
    state["loss_scale"] = loss_scale.init_state(2.0**100)  # float16 gradients cannot hold the scaled loss
    before = jax.tree_util.tree_map(np.asarray, state["params"])
    state, m = step(state, frozen, _pairs(), jax.random.key(0))
    assert float(m["loss_scale_skipped"]) == 1.0 and float(m["nonfinite"]) == 0.0 and np.isfinite(float(m["loss"]))
    assert float(state["loss_scale"]["scale"]) == 2.0**99
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(state["params"])):
        np.testing.assert_array_equal(a, np.asarray(b))  # not applied

    state["loss_scale"] = loss_scale.init_state(2.0**10)
    state, m = step(state, frozen, _pairs(), jax.random.key(0))
    assert float(m["loss_scale_skipped"]) == 0.0 and int(state["loss_scale"]["good_steps"]) == 1
    changed = [np.mean(a != np.asarray(b)) for a, b in zip(jax.tree_util.tree_leaves(before),
                                                            jax.tree_util.tree_leaves(state["params"]))]
    assert np.mean(changed) > 0.9


@pytest.mark.slow
def test_a_float16_rm_run_skips_overflowed_steps_and_trains(llama_dir, tmp_path):
    from jaxrlhf.rm.load import load_trained_rm
    from jaxrlhf.train_rm import train
    from tests.helpers.data import write_separable_pairs
    from tests.helpers.runs import tiny_rm_config

    config = tiny_rm_config(llama_dir, write_separable_pairs(tmp_path / "pairs.jsonl", 96), tmp_path / "work")
    config.model.dtype = "float16"
    config.train.epochs = 3
    summary = train(config)
    rows = [json.loads(line) for line in (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "train/loss_scale" in r]
    scales = [r["train/loss_scale"] for r in logged]
    # At 2^15 this model's float16 gradients overflow: those steps were skipped, the scale came down, and
    # the run went on (under train.on_nonfinite=stop, the default) and learnt the task.
    assert scales[0] == loss_scale.INITIAL_SCALE and scales[-1] < scales[0], scales
    assert all(b <= a for a, b in zip(scales, scales[1:])), scales  # < 2000 steps: it never grows back
    assert sum(r["train/loss_scale_skipped"] for r in logged) > 0
    assert summary["accuracy"] >= 0.9, summary
    leaves = jax.tree_util.tree_leaves(load_trained_rm(str(tmp_path / "work")).loaded.model)
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)


@pytest.mark.slow
def test_a_float16_ppo_run_carries_one_loss_scale_for_actor_and_critic(tmp_path):
    from jaxrlhf.train_ppo import train
    from tests.helpers.data import write_prompts
    from tests.helpers.models import make_tiny_llama_dir
    from tests.helpers.runs import make_tiny_rm_export, tiny_ppo_config

    config = tiny_ppo_config(make_tiny_llama_dir(tmp_path / "policy"), make_tiny_rm_export(tmp_path),
                             write_prompts(tmp_path / "p.jsonl"), tmp_path / "work")
    config.policy.dtype = config.critic.dtype = "float16"
    config.train.iterations, config.train.checkpoint_every = 3, 0
    train(config)
    rows = [json.loads(line) for line in (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()]
    it = [r for r in rows if "ppo/loss_scale" in r]
    scales = [r["ppo/loss_scale"] for r in it]  # each iteration's mean over its minibatches
    assert len(it) == 3 and scales[0] <= loss_scale.INITIAL_SCALE and scales == sorted(scales, reverse=True)
    # Overflowed minibatches were skipped and counted, not fatal; a lower scale means some were.
    assert all(np.isfinite(r["ppo/policy_loss"]) and r["ppo/nonfinite"] == 0 for r in it)
    assert (scales[-1] < loss_scale.INITIAL_SCALE) == (sum(r["ppo/loss_scale_skipped"] for r in it) > 0)
    config.critic.dtype, config.workdir = "bfloat16", str(tmp_path / "mixed")
    with pytest.raises(ValueError, match="float16 for both or neither"):
        train(config)
