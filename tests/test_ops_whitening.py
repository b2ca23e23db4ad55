"""Masked statistics, whitening and running moments against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.ops import whitening as W


def _case(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=3.0, scale=2.0, size=(5, 9))
    mask = rng.uniform(size=x.shape) < 0.6
    mask[0, 0] = True
    x_junk = np.where(mask, x, np.nan)
    return x, x_junk, mask


def test_masked_mean_and_var_match_numpy():
    x, xj, mask = _case()
    sel = x[mask]
    assert jax.jit(W.masked_mean)(xj, mask) == pytest.approx(sel.mean(), rel=1e-5)
    var_u = jax.jit(lambda a, m: W.masked_var(a, m))(xj, mask)
    var_b = jax.jit(lambda a, m: W.masked_var(a, m, unbiased=False))(xj, mask)
    assert var_u == pytest.approx(sel.var(ddof=1), rel=1e-5)
    assert var_b == pytest.approx(sel.var(ddof=0), rel=1e-5)
    assert var_u.dtype == jnp.float32
    rows = W.masked_mean(xj, mask, axis=1)
    want = [x[i][mask[i]].mean() if mask[i].any() else np.nan for i in range(len(x))]
    np.testing.assert_allclose(rows, want, rtol=1e-5)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_numpy(shift_mean):
    x, xj, mask = _case(1)
    sel = x[mask]
    want = (x - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8)
    if not shift_mean:
        want = want + sel.mean()
    out = jax.jit(W.masked_whiten, static_argnums=2)(xj, mask, shift_mean)
    np.testing.assert_allclose(np.asarray(out)[mask], want[mask], rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(out)[~mask] == 0.0)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_of_one_real_token_only_shifts(shift_mean):
    # Bessel's n / (n - 1) is 0/0 at n = 1: the value is shifted, never turned into NaN.
    x = np.array([[7.5, np.nan, np.nan], [np.nan, np.nan, np.nan]])
    mask = np.array([[1, 0, 0], [0, 0, 0]])
    out = np.asarray(jax.jit(W.masked_whiten, static_argnums=2)(x, mask, shift_mean))
    want = np.array([[0.0 if shift_mean else 7.5, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(out, want)
    none = np.asarray(W.masked_whiten(x, np.zeros_like(mask)))
    np.testing.assert_array_equal(none, np.zeros_like(x))  # nothing real: all zero, no NaN


def test_clip_advantages():
    out = jax.jit(lambda a: W.clip_advantages(a, 2.0))(jnp.array([-5, -1, 0, 3], jnp.bfloat16))
    np.testing.assert_array_equal(out, [-2.0, -1.0, 0.0, 2.0])
    assert out.dtype == jnp.float32


def test_running_moments_equal_moments_of_all_data_seen():
    rng = np.random.default_rng(2)
    batches = [rng.normal(5.0, 3.0, size=(4, 7)) for _ in range(3)]
    masks = [rng.uniform(size=(4, 7)) < 0.5 for _ in range(3)]
    masks.append(np.zeros((4, 7), bool))  # an all-masked batch changes nothing
    batches.append(np.full((4, 7), np.nan))
    upd = jax.jit(W.update)
    state = W.RunningMoments.init()
    for x, m in zip(batches, masks):
        state = upd(state, np.where(m, x, np.nan), m)
    seen = np.concatenate([x[m] for x, m in zip(batches, masks)])
    assert state.count == len(seen)
    assert state.mean == pytest.approx(seen.mean(), rel=1e-5)
    assert state.var == pytest.approx(seen.var(), rel=1e-5)
    assert state.std == pytest.approx(seen.std(), rel=1e-5)

    x = jnp.array([seen.mean(), seen.mean() + 10 * seen.std(), seen.mean() - seen.std()])
    out = jax.jit(lambda a, s: W.normalise_and_clip(a, s, 5.0))(x, state)
    np.testing.assert_allclose(out, [0.0, 5.0, -1.0], atol=1e-5)
    out = W.normalise_and_clip(x, state, None, shift_mean=False)
    np.testing.assert_allclose(out, np.asarray(x) / seen.std(), rtol=1e-5)
