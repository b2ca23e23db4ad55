"""Reward-model losses against hand-computed cases and float64 Python references."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.ops.losses import (
    bradley_terry_loss,
    length_normalise,
    plackett_luce_loss,
    regression_loss,
)


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_bradley_terry_hand_case_value_and_gradient():
    # r_c = 2, r_r = 0.5, margin 0.5, temperature 2: z = (1.5 - 0.5) / 2 = 0.5.
    rc, rr, m, t = 2.0, 0.5, 0.5, 2.0
    z = (rc - rr - m) / t
    want = math.log(1.0 + math.exp(-z))  # -log sigmoid(z)
    want_grad_rc = -_sigmoid(-z) / t

    def f(rc_, rr_):
        s, d, _ = bradley_terry_loss(rc_, rr_, margin_B=jnp.array([m]), temperature=t)
        return s / d

    loss, (g_c, g_r) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(
        jnp.array([rc]), jnp.array([rr])
    )
    assert loss == pytest.approx(want, rel=1e-6)
    assert g_c[0] == pytest.approx(want_grad_rc, rel=1e-6)
    assert g_r[0] == pytest.approx(-want_grad_rc, rel=1e-6)


def test_bradley_terry_label_smoothing_hand_case_value_and_gradient():
    # z = r_c - r_r = 3, eps = 0.1: loss = 0.9 * log(1 + e^-3) + 0.1 * log(1 + e^3);
    # d loss / d r_c = -0.9 * sigmoid(-3) + 0.1 * sigmoid(3), zero where sigmoid(z) = 1 - eps.
    eps, z = 0.1, 3.0
    want = (1 - eps) * math.log1p(math.exp(-z)) + eps * math.log1p(math.exp(z))
    want_grad = -(1 - eps) * _sigmoid(-z) + eps * _sigmoid(z)
    f = lambda rc_, rr_: bradley_terry_loss(rc_, rr_, label_smoothing=eps)[0]
    loss, (g_c, g_r) = jax.value_and_grad(f, argnums=(0, 1))(jnp.array([z + 1.0]), jnp.array([1.0]))
    assert loss == pytest.approx(want, rel=1e-6)
    assert g_c[0] == pytest.approx(want_grad, rel=1e-5) and want_grad > 0  # past 1 - eps: pushed back
    assert g_r[0] == pytest.approx(-want_grad, rel=1e-5)
    z_stop = math.log((1 - eps) / eps)
    g_stop = jax.grad(f)(jnp.array([z_stop]), jnp.array([0.0]))
    assert abs(float(g_stop[0])) < 1e-6


def test_bradley_terry_weights_centering_and_metrics_match_python_loop():
    rng = np.random.default_rng(0)
    B = 11
    rc = rng.normal(size=B) * 3
    rr = rng.normal(size=B) * 3
    rr[3] = rc[3]  # a tie: counted wrong
    margin = rng.uniform(0, 1, size=B)
    w = rng.uniform(0.2, 2.0, size=B)
    w[[1, 7]] = 0.0  # padding pairs, holding garbage
    rc[1], rr[7] = np.nan, np.inf
    t, cc = 0.7, 0.05

    want_sum = want_denom = correct = margin_sum = 0.0
    for i in range(B):
        if w[i] == 0:
            continue
        z = (rc[i] - rr[i] - margin[i]) / t
        want_sum += w[i] * (math.log1p(math.exp(-z)) + cc * (rc[i] + rr[i]) ** 2)
        want_denom += w[i]
        correct += w[i] * (rc[i] > rr[i])
        margin_sum += w[i] * (rc[i] - rr[i])

    f = jax.jit(
        lambda *a: bradley_terry_loss(
            a[0], a[1], weight_B=a[2], margin_B=a[3], temperature=t, center_coef=cc
        )
    )
    s, d, met = f(*(jnp.asarray(x, jnp.float32) for x in (rc, rr, w, margin)))
    assert s.dtype == d.dtype == met["correct_sum"].dtype == jnp.float32
    np.testing.assert_allclose(s, want_sum, rtol=1e-5)
    np.testing.assert_allclose(d, want_denom, rtol=1e-6)
    np.testing.assert_allclose(met["correct_sum"], correct, rtol=1e-6)
    np.testing.assert_allclose(met["margin_sum"], margin_sum, rtol=1e-5)

    # Garbage in padding pairs must not reach the gradient either.
    g = jax.grad(lambda a: f(a, *(jnp.asarray(x, jnp.float32) for x in (rr, w, margin)))[0])(
        jnp.asarray(rc, jnp.float32)
    )
    assert np.all(np.isfinite(g)) and g[1] == 0.0


def test_bradley_terry_accumulation_is_exact_and_stable_for_large_gaps():
    rc = jnp.array([100.0, -100.0, 1.0, 2.0])
    rr = jnp.array([0.0, 0.0, 3.0, 2.0])
    s, d, met = bradley_terry_loss(rc, rr)
    s1, d1, _ = bradley_terry_loss(rc[:2], rr[:2])
    s2, d2, _ = bradley_terry_loss(rc[2:], rr[2:])
    np.testing.assert_allclose((s1 + s2) / (d1 + d2), s / d, rtol=1e-6)
    # -log sigmoid(-100) = 100 (+ e^-100); a naive log(sigmoid) would give inf.
    want = 100.0 + math.log1p(math.exp(-100)) + math.log1p(math.exp(2.0)) + math.log(2.0)
    np.testing.assert_allclose(s, want, rtol=1e-6)
    assert met["correct_sum"] == 1.0  # the tie (2, 2) is wrong


def test_bradley_terry_bfloat16_inputs_give_float32():
    s, d, met = bradley_terry_loss(
        jnp.array([1.0, 2.0], jnp.bfloat16), jnp.array([0.0, 3.0], jnp.bfloat16)
    )
    assert s.dtype == d.dtype == met["margin_sum"].dtype == jnp.float32


def _pl_nll_reference(r, ranks, valid):
    """float64 loop: order by rank, then a sequence of softmax choices among the rest."""
    idx = sorted((k for k in range(len(r)) if valid[k]), key=lambda k: ranks[k])
    nll = 0.0
    for pos, k in enumerate(idx):
        rest = idx[pos:]
        nll -= r[k] - math.log(sum(math.exp(r[j]) for j in rest))
    return nll


def test_plackett_luce_matches_sequential_choice_reference():
    rng = np.random.default_rng(1)
    B, K = 6, 5
    r = rng.normal(size=(B, K)) * 2
    ranks = np.stack([rng.permutation(K) for _ in range(B)])
    valid = np.ones((B, K), bool)
    valid[1, [0, 3]] = False
    valid[2, 1:] = False  # one valid response: no ranking information, no denominator
    valid[4, 4] = False
    r[1, 0] = np.nan  # garbage in padding

    want = sum(_pl_nll_reference(r[b], ranks[b], valid[b]) for b in range(B))
    pairs = correct = 0
    for b in range(B):
        for i, j in itertools.permutations(range(K), 2):
            if valid[b, i] and valid[b, j] and ranks[b, i] < ranks[b, j]:
                pairs += 1
                correct += r[b, i] > r[b, j]

    f = jax.jit(plackett_luce_loss)
    s, d, met = f(jnp.asarray(r, jnp.float32), jnp.asarray(ranks), jnp.asarray(valid))
    np.testing.assert_allclose(s, want, rtol=1e-5)
    assert d == B - 1
    assert met["pair_count"] == pairs and met["pair_correct_sum"] == correct
    g = jax.grad(lambda x: f(x, jnp.asarray(ranks), jnp.asarray(valid))[0])(
        jnp.asarray(r, jnp.float32)
    )
    assert np.all(np.isfinite(g)) and np.all(g[~valid] == 0.0)


def test_plackett_luce_with_two_responses_is_bradley_terry():
    rng = np.random.default_rng(2)
    rc, rr = rng.normal(size=8), rng.normal(size=8)
    s_pl, d_pl, _ = plackett_luce_loss(
        jnp.asarray(np.stack([rr, rc], -1), jnp.float32), jnp.tile(jnp.array([1, 0]), (8, 1))
    )
    s_bt, d_bt, _ = bradley_terry_loss(jnp.asarray(rc), jnp.asarray(rr))
    np.testing.assert_allclose(s_pl, s_bt, rtol=1e-6)
    assert d_pl == d_bt == 8


def test_regression_loss_and_length_normalise():
    pred = np.array([1.0, 2.0, -1.0, 5.0])
    tgt = np.array([0.5, 2.0, 1.0, np.nan])
    w = np.array([1.0, 1.0, 2.0, 0.0])
    s, d = jax.jit(regression_loss)(pred, tgt, w)
    assert s == pytest.approx(0.25 + 0.0 + 2 * 4.0) and d == 4.0
    assert s.dtype == jnp.float32
    out = jax.jit(length_normalise)(jnp.array([3.0, 3.0, 2.0]), jnp.array([3, 0, 4]))
    np.testing.assert_allclose(out, [1.0, 3.0, 0.5])
    assert out.dtype == jnp.float32


def test_bradley_terry_hyperparameters_may_be_traced():
    f = jax.jit(lambda t, c: bradley_terry_loss(jnp.array([1.0]), jnp.array([0.0]),
                                                temperature=t, center_coef=c)[0])
    want = math.log1p(math.exp(-1.0 / 0.5)) + 0.1 * 1.0
    assert float(f(0.5, 0.1)) == pytest.approx(want, rel=1e-6)
