"""Learning-rate schedules against hand-computed values."""

import math

import ml_collections
import numpy as np
import pytest

from jaxrlhf.training.optim import make_optimizer, make_schedule


def test_warmup_then_cosine():
    s = make_schedule(1.0, total_steps=110, warmup_steps=10, kind="cosine")
    assert float(s(0)) == 0.0
    assert float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0)
    assert float(s(60)) == pytest.approx(0.5 * (1 + math.cos(math.pi * 50 / 100)), abs=1e-6)
    assert float(s(110)) == pytest.approx(0.0, abs=1e-6)


def test_warmup_then_linear():
    s = make_schedule(2.0, total_steps=30, warmup_steps=10, kind="linear")
    assert float(s(20)) == pytest.approx(1.0)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="optim.schedule"):
        make_schedule(1.0, 10, 0, "step")


def test_weight_decay_skips_vectors():
    import jax.numpy as jnp

    cfg = ml_collections.ConfigDict(dict(learning_rate=0.1, schedule="constant", warmup_steps=0, warmup_ratio=0.0,
                                         weight_decay=0.5, max_grad_norm=0.0, b1=0.9, b2=0.999, eps=1e-8))
    opt, _ = make_optimizer(cfg, 10)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    zero_grads = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros((2,))}
    updates, _ = opt.update(zero_grads, opt.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_allclose(updates["bias"], np.zeros(2), atol=0)
