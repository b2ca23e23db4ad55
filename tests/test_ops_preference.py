"""The DPO family, SimPO, KTO and listwise DPO against their papers' formulas written out in float64."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.ops.losses import bradley_terry_loss
from jaxrlhf.ops.preference import kto_loss, kto_reference_point, listwise_loss, pair_loss, response_mask

PC = np.array([-12.0, -30.5, -7.25])   # policy log p(chosen)
PR = np.array([-14.0, -29.0, -9.0])    # policy log p(rejected)
RC = np.array([-12.5, -30.0, -8.0])    # reference
RR = np.array([-13.0, -29.5, -8.5])
LC = np.array([10.0, 25.0, 4.0])       # response tokens
LR = np.array([12.0, 20.0, 6.0])


def log_sigmoid(x):
    return -np.log1p(np.exp(-x))


def h_dpo(beta):
    return beta * ((PC - RC) - (PR - RR))


def loss_of(**kw):
    s, d, m = pair_loss(PC, PR, RC, RR, lengths_chosen_B=LC, lengths_rejected_B=LR, **kw)
    return float(s), float(d), {k: float(v) for k, v in m.items()}


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_sigmoid_and_conservative(eps):
    beta = 0.3
    h = h_dpo(beta)
    want = np.sum(-(1 - eps) * log_sigmoid(h) - eps * log_sigmoid(-h))
    s, d, m = loss_of(loss_type="sigmoid", beta=beta, label_smoothing=eps)
    assert s == pytest.approx(want, rel=1e-6) and d == 3
    assert m["reward_chosen_sum"] == pytest.approx(np.sum(beta * (PC - RC)), rel=1e-6)
    assert m["reward_rejected_sum"] == pytest.approx(np.sum(beta * (PR - RR)), rel=1e-6)
    assert m["correct_sum"] == np.sum(h > 0) == 2  # log-ratio gaps 1.5, -1.0, 1.25
    assert m["margin_sum"] == pytest.approx(np.sum(h), rel=1e-6)


def test_robust_is_unbiased_under_label_noise():
    """Chowdhury et al.: averaged over a label flipped with probability eps, the robust loss is the clean
    DPO loss: (1 - eps) L(h) + eps L(-h) = -log sigmoid(h)."""
    beta, eps = 0.5, 0.2
    s_true, _, _ = pair_loss(PC, PR, RC, RR, loss_type="robust", beta=beta, label_smoothing=eps)
    s_flip, _, _ = pair_loss(PR, PC, RR, RC, loss_type="robust", beta=beta, label_smoothing=eps)
    assert (1 - eps) * float(s_true) + eps * float(s_flip) == pytest.approx(np.sum(-log_sigmoid(h_dpo(beta))),
                                                                             rel=1e-5)


def test_hinge_and_ipo():
    beta = 0.4
    s, _, _ = loss_of(loss_type="hinge", beta=beta)
    assert s == pytest.approx(np.sum(np.maximum(0.0, 1 - h_dpo(beta))), rel=1e-6)
    s, _, _ = loss_of(loss_type="ipo", beta=beta)
    logits = (PC - RC) - (PR - RR)
    assert s == pytest.approx(np.sum((logits - 1 / (2 * beta)) ** 2), rel=1e-6)


def test_simpo_length_normalised_reference_free():
    beta, gamma, eps = 2.0, 0.5, 0.05
    h = beta * (PC / LC - PR / LR) - gamma
    want = np.sum(-(1 - eps) * log_sigmoid(h) - eps * log_sigmoid(-h))
    s, _, m = loss_of(loss_type="simpo", beta=beta, simpo_gamma=gamma, label_smoothing=eps)
    assert s == pytest.approx(want, rel=1e-6)
    assert m["reward_chosen_sum"] == pytest.approx(np.sum(beta * PC / LC), rel=1e-6)
    # the reference never enters
    s2, _, _ = pair_loss(PC, PR, RC * 0 + 99.0, RR, loss_type="simpo", beta=beta, simpo_gamma=gamma,
                         label_smoothing=eps, lengths_chosen_B=LC, lengths_rejected_B=LR)
    assert float(s2) == pytest.approx(s, rel=1e-7)


def test_sft_term_is_per_token_nll_of_chosen():
    beta, alpha = 0.1, 0.7
    base, _, _ = loss_of(loss_type="sigmoid", beta=beta)
    s, _, m = loss_of(loss_type="sigmoid", beta=beta, sft_weight=alpha)
    assert s - base == pytest.approx(alpha * np.sum(-PC / LC), rel=1e-5)
    assert m["sft_nll_sum"] == pytest.approx(np.sum(-PC / LC), rel=1e-6)


def test_reference_free_uses_zero_reference():
    beta = 0.2
    s, _, _ = pair_loss(PC, PR, loss_type="sigmoid", beta=beta)
    assert float(s) == pytest.approx(np.sum(-log_sigmoid(beta * (PC - PR))), rel=1e-6)


@pytest.mark.parametrize("beta", [0.1, 1.0, 100.0])
def test_dpo_gradient_analytic(beta):
    """d/d logp_c of -log sigmoid(h) is -beta sigmoid(-h) (and +beta sigmoid(-h) for logp_r); with the
    policy equal to the reference h = 0 whatever beta, so the gradient is -beta / 2 even for large beta."""
    grad = jax.grad(lambda pc, pr: pair_loss(pc, pr, RC, RR, beta=beta)[0], argnums=(0, 1))
    gc, gr = grad(jnp.asarray(PC, jnp.float32), jnp.asarray(PR, jnp.float32))
    sig = 1 / (1 + np.exp(h_dpo(beta)))  # sigmoid(-h)
    np.testing.assert_allclose(np.asarray(gc), -beta * sig, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gr), beta * sig, rtol=1e-5, atol=1e-6)
    gc0, gr0 = grad(jnp.asarray(RC, jnp.float32), jnp.asarray(RR, jnp.float32))
    np.testing.assert_allclose(np.asarray(gc0), -beta / 2, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(gr0), beta / 2, rtol=1e-6)


def test_padding_pairs_are_inert_even_with_nan():
    w = np.array([1.0, 1.0, 0.0])
    pc = PC.copy()
    pc[2] = np.nan
    f = lambda pc: pair_loss(pc, PR, RC, RR, beta=0.1, weight_B=w)[0]
    s, g = jax.value_and_grad(f)(jnp.asarray(pc, jnp.float32))
    want = np.sum(-log_sigmoid(h_dpo(0.1))[:2])
    assert float(s) == pytest.approx(want, rel=1e-6)
    assert np.all(np.isfinite(np.asarray(g))) and float(g[2]) == 0.0


def test_bad_settings_refused():
    with pytest.raises(ValueError, match="loss.type"):
        pair_loss(PC, PR, loss_type="orpo")
    with pytest.raises(ValueError, match="label_smoothing"):
        pair_loss(PC, PR, label_smoothing=0.5)
    with pytest.raises(ValueError, match="lengths"):
        pair_loss(PC, PR, loss_type="simpo")


def test_listwise_k2_is_dpo_and_k3_by_hand():
    beta = 0.3
    # K = 2: chosen rank 0, rejected rank 1
    lp = np.stack([PC, PR], 1)
    ref = np.stack([RC, RR], 1)
    ranks = np.tile([0, 1], (3, 1))
    s, d, _ = listwise_loss(lp, ref, ranks, beta=beta)
    dpo, _, _ = pair_loss(PC, PR, RC, RR, beta=beta)
    assert float(s) == pytest.approx(float(dpo), rel=1e-6) and float(d) == 3
    # K = 3, ranking (b, c, a): -log [e^rb/(e^ra+e^rb+e^rc)] - log [e^rc/(e^ra+e^rc)]
    lp3 = np.array([[-5.0, -4.0, -6.0]])
    ref3 = np.array([[-5.5, -4.5, -5.0]])
    r = beta * (lp3 - ref3)[0]
    ra, rb, rc = r
    want = -(rb - math.log(math.exp(ra) + math.exp(rb) + math.exp(rc))) - (rc - math.log(math.exp(ra) + math.exp(rc)))
    s3, _, _ = listwise_loss(lp3, ref3, np.array([[2, 0, 1]]), beta=beta)
    assert float(s3) == pytest.approx(want, rel=1e-6)
    # a padded third response changes nothing
    s_pad, _, _ = listwise_loss(np.concatenate([lp, np.full((3, 1), np.nan)], 1),
                                np.concatenate([ref, np.zeros((3, 1))], 1),
                                np.concatenate([ranks, np.full((3, 1), 2)], 1),
                                np.tile([True, True, False], (3, 1)), beta=beta)
    assert float(s_pad) == pytest.approx(float(dpo), rel=1e-6)
    # and the same as the reward model's Bradley-Terry loss on the implicit rewards
    bt, _, _ = bradley_terry_loss(beta * (PC - RC), beta * (PR - RR))
    assert float(bt) == pytest.approx(float(dpo), rel=1e-6)


def test_kto_by_hand():
    beta, wd, wu = 0.5, 1.0, 1.33
    lp = np.array([-10.0, -20.0, -15.0, -8.0])
    ref = np.array([-11.0, -19.0, -15.5, -9.0])
    good = np.array([True, False, True, False])
    z0 = 0.25
    r = lp - ref
    want = np.where(good, wd * (1 - 1 / (1 + np.exp(-beta * (r - z0)))), wu * (1 - 1 / (1 + np.exp(-beta * (z0 - r)))))
    s, d, m = kto_loss(lp, ref, good, z0, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    assert float(s) == pytest.approx(np.sum(want), rel=1e-6) and float(d) == 4
    assert float(m["n_desirable"]) == 2 and float(m["n_undesirable"]) == 2
    # correct: desirable with r > z0 (1.0, 0.5: both), undesirable with r < z0 (-1.0 yes, 1.0 no)
    assert float(m["correct_sum"]) == 3
    # gradient wrt logp of a desirable response: -w_D beta s (1 - s), s = sigmoid(beta (r - z0))
    g = jax.grad(lambda x: kto_loss(x, ref, good, z0, beta=beta, desirable_weight=wd,
                                    undesirable_weight=wu)[0])(jnp.asarray(lp, jnp.float32))
    sg = 1 / (1 + np.exp(-beta * (r[0] - z0)))
    assert float(g[0]) == pytest.approx(-wd * beta * sg * (1 - sg), rel=1e-5)


def test_kto_reference_point_mean_clipped_no_gradient():
    lp = np.array([-10.0, -12.0, -9.0])
    ref = np.array([-10.5, -12.0, -10.0])
    assert float(kto_reference_point(lp, ref)) == pytest.approx(np.mean(lp - ref), rel=1e-6)
    assert float(kto_reference_point(ref, lp)) == 0.0  # a negative estimate is clipped to 0
    assert float(kto_reference_point(lp, ref, np.array([1.0, 1.0, 0.0]))) == pytest.approx(0.25, rel=1e-6)
    g = jax.grad(lambda x: kto_reference_point(x, ref))(jnp.asarray(lp, jnp.float32))
    assert np.all(np.asarray(g) == 0.0)


def test_response_mask_marks_the_last_real_tokens_before_the_suffix_on_either_padding_side():
    mask = np.array([[1, 1, 1, 1, 1, 0, 0],    # right padding
                     [0, 0, 1, 1, 1, 1, 1],    # left padding
                     [1, 1, 1, 1, 1, 1, 1]])
    got = np.asarray(response_mask(mask, np.array([2, 3, 1])))
    np.testing.assert_array_equal(got, [[0, 0, 0, 1, 1, 0, 0],
                                        [0, 0, 0, 0, 1, 1, 1],
                                        [0, 0, 0, 0, 0, 0, 1]])
    got = np.asarray(response_mask(mask, np.array([2, 3, 1]), suffix_len=1))  # e.g. a closing [SEP]
    np.testing.assert_array_equal(got, [[0, 0, 1, 1, 0, 0, 0],
                                        [0, 0, 0, 1, 1, 1, 0],
                                        [0, 0, 0, 0, 0, 1, 0]])
