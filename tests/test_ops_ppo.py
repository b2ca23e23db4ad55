"""PPO losses and entropy against float64 Python loops and hand cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.ops.ppo import entropy_from_logits, policy_loss, value_loss


def _case(seed=0, B=4, T=9):
    rng = np.random.default_rng(seed)
    lp_old = rng.normal(-2.0, 1.0, size=(B, T))
    lp_new = lp_old + rng.normal(0.0, 0.3, size=(B, T))
    adv = rng.normal(size=(B, T))
    mask = rng.uniform(size=(B, T)) < 0.7
    return lp_new, lp_old, adv, mask


def test_policy_loss_matches_python_loop():
    lp_new, lp_old, adv, mask = _case()
    eps = 0.2
    s_ref = kl_ref = clip_ref = 0.0
    for b, t in zip(*np.nonzero(mask)):
        ratio = math.exp(lp_new[b, t] - lp_old[b, t])
        l1 = -adv[b, t] * ratio
        l2 = -adv[b, t] * min(max(ratio, 1 - eps), 1 + eps)
        s_ref += max(l1, l2)
        clip_ref += l2 > l1
        kl_ref += (ratio - 1) - math.log(ratio)
    junk = lambda x: np.where(mask, x, np.nan).astype(np.float32)
    f = jax.jit(policy_loss)
    s, d, met = f(junk(lp_new), junk(lp_old), junk(adv), mask, eps)
    assert s.dtype == jnp.float32
    np.testing.assert_allclose(s, s_ref, rtol=1e-5)
    assert d == mask.sum() and met["clip_frac_sum"] == clip_ref > 0
    np.testing.assert_allclose(met["approx_kl_sum"], kl_ref, rtol=1e-4)
    g = jax.grad(lambda x: f(x, junk(lp_old), junk(adv), mask, eps)[0])(junk(lp_new))
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[~mask] == 0)


def test_policy_loss_gradient_hand_case():
    # A > 0, ratio = e^0.5 > 1.2: clipped, no gradient. A > 0, ratio = 1: grad = -A * ratio.
    lp_old = jnp.zeros((1, 2))
    lp_new = jnp.array([[0.5, 0.0]])
    adv = jnp.array([[1.0, 2.0]])
    g = jax.grad(lambda x: policy_loss(x, lp_old, adv, jnp.ones((1, 2)), 0.2)[0])(lp_new)
    np.testing.assert_allclose(g, [[0.0, -2.0]], atol=1e-6)


@pytest.mark.parametrize("eps", [0.2, None])
def test_value_loss_matches_python_loop(eps):
    rng = np.random.default_rng(1)
    v_old = rng.normal(size=(3, 8))
    v_new = v_old + rng.normal(0, 0.5, size=(3, 8))
    ret = rng.normal(size=(3, 8))
    mask = rng.uniform(size=(3, 8)) < 0.7
    s_ref = clip_ref = 0.0
    for b, t in zip(*np.nonzero(mask)):
        u = (v_new[b, t] - ret[b, t]) ** 2
        if eps is None:
            c = u
        else:
            vc = v_old[b, t] + min(max(v_new[b, t] - v_old[b, t], -eps), eps)
            c = (vc - ret[b, t]) ** 2
        s_ref += 0.5 * max(u, c)
        clip_ref += c > u
    s, d, met = jax.jit(value_loss, static_argnums=4)(v_new, v_old, ret, mask, eps)
    np.testing.assert_allclose(s, s_ref, rtol=1e-5)
    assert d == mask.sum() and met["clip_frac_sum"] == clip_ref
    if eps is not None:
        assert clip_ref > 0


def test_entropy_from_logits_stable_and_matches_float64():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 3, 7)) * 3
    logits[0, 0] *= 1e4  # huge logits: near one-hot, must stay finite
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    want = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)
    out = jax.jit(entropy_from_logits)(logits.astype(np.float32))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    # -inf logits (masked vocabulary) drop out: uniform over 4 of 7 -> log 4.
    masked = jnp.array([[0.0, -jnp.inf, 0.0, 0.0, -jnp.inf, 0.0, -jnp.inf]])
    assert float(entropy_from_logits(masked)[0]) == pytest.approx(math.log(4), rel=1e-6)
    g = jax.grad(lambda x: entropy_from_logits(x).sum())(masked)
    assert np.all(np.isfinite(g))
    assert entropy_from_logits(jnp.zeros((1, 5), jnp.bfloat16)).dtype == jnp.float32
