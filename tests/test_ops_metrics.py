"""Evaluation metrics against float64 Python references and hand cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.ops import metrics as M


def test_pairwise_accuracy_ties_are_wrong():
    rc = jnp.array([1.0, 2.0, 0.5, 3.0])
    rr = jnp.array([0.0, 2.0, 1.0, 2.9])
    acc = jax.jit(M.pairwise_accuracy)(rc, rr)
    assert acc.dtype == jnp.float32 and float(acc) == pytest.approx(0.5)
    assert float(M.pairwise_accuracy(rc, rr, jnp.array([1.0, 1.0, 0.0, 0.0]))) == 0.5
    assert float(M.pairwise_accuracy(jnp.zeros(4), jnp.zeros(4))) == 0.0


def _tau_b_reference(x, y):
    """Classic counting form: (C - D) / sqrt((C + D + Tx)(C + D + Ty)), Tx = tied in x only."""
    c = d = tx = ty = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif dx * dy > 0:
                c += 1
            else:
                d += 1
    den = math.sqrt((c + d + tx) * (c + d + ty))
    return None if den == 0 else (c - d) / den


def test_kendall_tau_b_with_ties_matches_counting_reference():
    rng = np.random.default_rng(0)
    B, K = 8, 6
    scores = rng.integers(0, 4, size=(B, K)).astype(float)  # many score ties
    ranks = rng.integers(0, 4, size=(B, K))  # and rank ties
    valid = rng.uniform(size=(B, K)) < 0.8
    valid[0] = [True, True, False, False, False, False]
    scores[0, :2] = 1.0  # two valid responses, tied scores: undefined
    valid[1] = False
    valid[1, 3] = True  # one valid response: undefined
    taus = []
    for b in range(B):
        idx = np.nonzero(valid[b])[0]
        taus.append(_tau_b_reference(scores[b, idx], -ranks[b, idx].astype(float)))
    defined_ref = [t is not None for t in taus]
    tau, defined = jax.jit(M.kendall_tau_groups)(scores, ranks, valid)
    np.testing.assert_array_equal(defined, defined_ref)
    np.testing.assert_allclose(
        np.asarray(tau)[defined_ref], [t for t in taus if t is not None], rtol=1e-6
    )
    mean = jax.jit(M.kendall_tau)(scores, ranks, valid)
    assert float(mean) == pytest.approx(np.mean([t for t in taus if t is not None]), rel=1e-6)
    # Orientation: scores that agree with the ranking (rank 0 best) give +1.
    assert float(M.kendall_tau(jnp.array([[3.0, 2.0, 1.0]]), jnp.array([[0, 1, 2]]))) == 1.0


X = -1.0  # score or rank of a masked-out slot, chosen so that counting it would change the answer


def test_kendall_tau_b_hand_cases_with_ties_and_masked_slots():
    """tau-b = (C - D) / sqrt(n_s * n_r): C, D concordant / discordant pairs, n_s pairs not tied in the
    scores, n_r pairs not tied in the ranks (rank 0 best). Each row's pairs are counted below by hand."""
    scores = np.array([
        [4, 3, 3, 1, 0, X],  # (0,1) (0,2) (0,3) (1,3) C; (1,2) scores tied; (2,3) ranks tied
        [3, 1, 9, 1, 1, X],  # slot 2 masked. (0,1) (0,3) D; (0,4) ranks tied; (1,3) (1,4) (3,4) scores tied
        [2, 2, 0, 5, 1, 7],  # (0,1) tied on both sides; (0,3) (1,3) (2,4) D; (2,3) ranks tied; others C
        [1, 2, 3, 8, X, X],  # slot 3 masked: the scores run against the ranks
        [7, 7, 7, 1, X, X],  # all valid scores tied (slot 3 masked): undefined
        [1, 2, 3, X, X, X],  # all valid ranks tied (slot 2 masked): undefined
        [5, 1, X, X, X, X],  # one valid slot: undefined
        [1, 2, X, X, X, X],  # nothing valid: undefined
    ], np.float32)
    ranks = np.array([
        [0, 1, 2, 2, 0, 0],
        [2, 0, 0, 1, 2, 0],
        [1, 1, 2, 2, 3, 0],
        [0, 1, 2, 0, 0, 0],
        [0, 1, 2, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0],
    ], np.int32)
    valid = np.array([
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 1, 1, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ], np.int32)
    # Row 0: 4 pairs C, 0 D; 5 of 6 not tied in scores, 5 of 6 not tied in ranks.
    # Row 1: 0 C, 2 D; 3 of 6 not tied in scores, 5 of 6 not tied in ranks.
    # Row 2: 5 C, 3 D; 9 of 10 not tied in scores, 8 of 10 not tied in ranks.
    # Row 3: 0 C, 3 D; nothing tied.
    want = [4 / math.sqrt(5 * 5), -2 / math.sqrt(3 * 5), (5 - 3) / math.sqrt(9 * 8), -3 / 3]
    assert want[1] == pytest.approx(-0.5163977794943222) and want[2] == pytest.approx(math.sqrt(2) / 6)

    tau, defined = jax.jit(M.kendall_tau_groups)(scores, ranks, valid)
    np.testing.assert_array_equal(defined, [True] * 4 + [False] * 4)
    np.testing.assert_allclose(np.asarray(tau)[:4], want, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(tau)[4:], 0.0)  # undefined groups give 0, not nan
    assert float(M.kendall_tau(scores, ranks, valid)) == pytest.approx(np.mean(want), rel=1e-6)
    # A boolean mask means the same.
    tau_bool, _ = M.kendall_tau_groups(scores, ranks, valid.astype(bool))
    np.testing.assert_array_equal(tau_bool, tau)
    # Without a mask every slot counts. Row 0 in full, scores [4, 3, 3, 1, 0, X], ranks [0, 1, 2, 2, 0, 0]:
    # C (0,1) (0,2) (0,3) (1,3); D (1,4) (1,5) (2,4) (2,5) (3,4) (3,5); scores tied (1,2) only;
    # ranks tied (0,4) (0,5) (2,3) (4,5): tau = (4 - 6) / sqrt(14 * 11).
    full, full_defined = M.kendall_tau_groups(scores[:1], ranks[:1])
    assert bool(full_defined[0]) and float(full[0]) == pytest.approx(-2 / math.sqrt(14 * 11), rel=1e-6)


def test_pearson_and_explained_variance_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 10))
    y = 0.6 * x + rng.normal(size=(4, 10))
    mask = rng.uniform(size=(4, 10)) < 0.7
    want = np.corrcoef(x[mask], y[mask])[0, 1]
    assert float(jax.jit(M.pearson)(x, y, mask)) == pytest.approx(want, rel=1e-5)
    assert float(M.pearson(x, y)) == pytest.approx(np.corrcoef(x.ravel(), y.ravel())[0, 1], rel=1e-5)

    values, returns = x, y
    want_ev = 1 - np.var(returns[mask] - values[mask]) / np.var(returns[mask])
    ev = jax.jit(M.explained_variance)(values, returns, mask)
    assert ev.dtype == jnp.float32 and float(ev) == pytest.approx(want_ev, rel=1e-5)
    assert float(M.explained_variance(returns, returns, mask)) == pytest.approx(1.0)
