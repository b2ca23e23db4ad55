"""KL estimators and controllers against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.ops.kl import AdaptiveKLController, FixedKLController, kl_penalty


def test_estimators_match_formulas_in_float64():
    rng = np.random.default_rng(0)
    lp = rng.normal(-2.0, 1.0, size=(3, 5))
    ref = lp + rng.normal(0.0, 0.5, size=(3, 5))
    ref[0, 0] = lp[0, 0] + 1e-6  # tiny difference: k3 must not cancel to zero
    f = jax.jit(kl_penalty, static_argnums=2)
    lp32, ref32 = lp.astype(np.float32), ref.astype(np.float32)
    d = lp32.astype(np.float64) - ref32.astype(np.float64)
    np.testing.assert_allclose(f(lp32, ref32, "k1"), d, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f(lp32, ref32, "k2"), 0.5 * d**2, rtol=1e-5)
    k3 = np.array([math.expm1(-x) + x for x in d.ravel()]).reshape(d.shape)
    np.testing.assert_allclose(f(lp32, ref32, "k3"), k3, rtol=1e-4)
    assert np.all(np.asarray(f(lp32, ref32, "k3")) >= 0)
    assert f(jnp.zeros(2, jnp.bfloat16), jnp.zeros(2, jnp.bfloat16), "k2").dtype == jnp.float32
    with pytest.raises(ValueError):
        kl_penalty(lp, ref, "k4")


def test_k1_and_k3_are_unbiased_for_categorical_kl():
    # Exact expectation over a small categorical: sum_x p(x) k(x) vs KL(p || q).
    p = np.array([0.5, 0.3, 0.15, 0.05])
    q = np.array([0.25, 0.25, 0.25, 0.25])
    kl = float(np.sum(p * np.log(p / q)))
    for est in ("k1", "k3"):
        k = np.asarray(kl_penalty(np.log(p), np.log(q), est), np.float64)
        assert np.sum(p * k) == pytest.approx(kl, rel=1e-5)


def test_adaptive_controller_hand_case_and_clipping():
    ctl = AdaptiveKLController(init_coef=0.2, target=6.0, horizon=10000.0)
    upd = jax.jit(AdaptiveKLController.update, static_argnums=0)
    s = ctl.init()
    assert s.coef.dtype == jnp.float32 and float(s.coef) == pytest.approx(0.2)
    s1 = upd(ctl, s, 7.5, 512)  # e = 7.5/6 - 1 = 0.25 -> clipped to 0.2
    assert float(s1.coef) == pytest.approx(0.2 * (1 + 0.2 * 512 / 10000), rel=1e-6)
    s2 = upd(ctl, s1, 5.4, 256)  # e = -0.1
    assert float(s2.coef) == pytest.approx(float(s1.coef) * (1 - 0.1 * 256 / 10000), rel=1e-6)
    s3 = upd(ctl, s2, 0.0, 100)  # e = -1 -> clipped to -0.2
    assert float(s3.coef) == pytest.approx(float(s2.coef) * (1 - 0.2 * 100 / 10000), rel=1e-6)

    fixed = FixedKLController(0.05)
    f = fixed.init()
    assert float(jax.jit(fixed.update)(f, 100.0, 10).coef) == pytest.approx(0.05)
