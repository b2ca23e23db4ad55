"""GAE against a float64 Python double loop over the episodes a mask defines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.ops.gae import gae


def _reference(r, v, mask, gamma, lam, last_value=None):
    """Each maximal run of ones in a row is one episode: bootstrapped with `last_value` only if
    it runs to the last position, terminal otherwise. Masked positions get zero."""
    B, T = r.shape
    adv = np.zeros((B, T))
    for b in range(B):
        t = 0
        while t < T:
            if not mask[b, t]:
                t += 1
                continue
            end = t
            while end + 1 < T and mask[b, end + 1]:
                end += 1
            boot = last_value[b] if (last_value is not None and end == T - 1) else 0.0
            for s in range(t, end + 1):  # A_s = sum_l (gamma lam)^l delta_{s+l}
                total = 0.0
                for u in range(s, end + 1):
                    next_v = v[b, u + 1] if u < end else boot
                    delta = r[b, u] + gamma * next_v - v[b, u]
                    total += (gamma * lam) ** (u - s) * delta
                adv[b, s] = total
            t = end + 1
    ret = np.where(mask, adv + v, 0.0)
    return adv, ret


def _random_case(seed, B=6, T=13):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(B, T))
    v = rng.normal(size=(B, T))
    mask = np.zeros((B, T), bool)
    for b in range(B):
        start = rng.integers(0, 5)  # left padding (prompt)
        stop = rng.integers(start + 1, T + 1)  # EOS inside, or running to T
        mask[b, start:stop] = True
    mask[0, :] = True  # fully real row, runs to the end
    mask[1, :] = False  # empty row
    mask[2, : T - 3] = True  # right padded only
    mask[2, T - 3 :] = False
    return r, v, mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8)])
def test_gae_matches_float64_loop_with_left_and_right_padding(gamma, lam):
    r, v, mask = _random_case(0)
    last = np.random.default_rng(1).normal(size=r.shape[0])
    f = jax.jit(gae)
    for lv in (None, last):
        want_a, want_r = _reference(r, v, mask, gamma, lam, lv)
        a, ret = f(r.astype(np.float32), v.astype(np.float32), mask, gamma, lam, lv)
        assert a.dtype == ret.dtype == jnp.float32
        np.testing.assert_allclose(a, want_a, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ret, want_r, rtol=1e-5, atol=1e-5)


def test_gae_padding_values_do_not_leak():
    r, v, mask = _random_case(3)
    a0, r0 = gae(r, v, mask, 1.0, 0.95)
    junk_r = np.where(mask, r, 1e6)
    junk_v = np.where(mask, v, np.nan)
    a1, r1 = jax.jit(gae)(junk_r, junk_v, mask, 1.0, 0.95)
    np.testing.assert_array_equal(a0, a1)
    np.testing.assert_array_equal(r0, r1)
    assert np.all(np.asarray(a1)[~mask] == 0.0)


def test_gae_hand_case_single_reward_at_eos():
    # RLHF shape: prompt (masked), 3 response tokens, score at EOS, then padding.
    mask = np.array([[0, 1, 1, 1, 0]])
    r = np.array([[0.0, 0.0, 0.0, 1.0, 0.0]])
    v = np.array([[9.0, 0.5, 0.25, 0.5, 9.0]])
    g, lam = 0.5, 0.5
    # deltas: t3 = 1 - 0.5 = 0.5; t2 = 0 + 0.5*0.5 - 0.25 = 0; t1 = 0 + 0.5*0.25 - 0.5 = -0.375
    a3 = 0.5
    a2 = 0.0 + g * lam * a3
    a1 = -0.375 + g * lam * a2
    a, ret = gae(r, v, mask, g, lam)
    np.testing.assert_allclose(a, [[0.0, a1, a2, a3, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(ret, [[0.0, a1 + 0.5, a2 + 0.25, a3 + 0.5, 0.0]], rtol=1e-6)
