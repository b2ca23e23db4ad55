"""Evaluation metrics for reward models and critics, as jittable float32 JAX functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrlhf.ops.whitening import masked_mean, masked_var


def pairwise_accuracy(rewards_chosen_B, rewards_rejected_B, weight_B=None) -> jax.Array:
    """Weighted fraction of pairs with r_c > r_r strictly: a tie is a wrong answer, so a reward
    model that outputs a constant scores 0, not 0.5 or 1."""
    r_c = jnp.asarray(rewards_chosen_B, jnp.float32)
    w = jnp.ones_like(r_c) if weight_B is None else jnp.asarray(weight_B, jnp.float32)
    correct = r_c > jnp.asarray(rewards_rejected_B, jnp.float32)
    return jnp.sum(jnp.where(correct, w, 0.0)) / jnp.sum(w)


def kendall_tau_groups(scores_BxK, ranks_BxK, valid_BxK=None) -> tuple[jax.Array, jax.Array]:
    """Kendall's tau-b per group between scores and a ranking (rank 0 = best).

    Oriented so that +1 means the scores order the responses exactly as the ranking does.
    tau-b = sum_{i<j} s_ij t_ij / sqrt(#pairs not tied in scores * #pairs not tied in ranks),
    with s, t the signs of the pairwise differences, which corrects for ties on either side.
    Returns `(tau_B, defined_B)`: undefined (tau 0) when a group has fewer than two valid
    responses or is all tied on one side.
    """
    s = jnp.asarray(scores_BxK, jnp.float32)
    goodness = -jnp.asarray(ranks_BxK, jnp.float32)
    valid = jnp.ones(s.shape, bool) if valid_BxK is None else jnp.asarray(valid_BxK).astype(bool)
    K = s.shape[-1]
    pair = valid[:, :, None] & valid[:, None, :] & jnp.triu(jnp.ones((K, K), bool), k=1)
    sign_s = jnp.where(pair, jnp.sign(s[:, :, None] - s[:, None, :]), 0.0)
    sign_g = jnp.where(pair, jnp.sign(goodness[:, :, None] - goodness[:, None, :]), 0.0)
    num = jnp.sum(sign_s * sign_g, axis=(1, 2))
    den = jnp.sqrt(jnp.sum(jnp.abs(sign_s), axis=(1, 2)) * jnp.sum(jnp.abs(sign_g), axis=(1, 2)))
    defined = den > 0
    return jnp.where(defined, num / jnp.where(defined, den, 1.0), 0.0), defined


def kendall_tau(scores_BxK, ranks_BxK, valid_BxK=None) -> jax.Array:
    """Mean tau-b over the groups where it is defined (nan if none is)."""
    tau, defined = kendall_tau_groups(scores_BxK, ranks_BxK, valid_BxK)
    return jnp.sum(tau) / jnp.sum(defined)


def pearson(x, y, mask=None) -> jax.Array:
    """Pearson correlation over masked-in entries (nan if either side is constant)."""
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    m = jnp.ones(x.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
    dx = jnp.where(m, x - masked_mean(x, m), 0.0)
    dy = jnp.where(m, y - masked_mean(y, m), 0.0)
    return jnp.sum(dx * dy) / jnp.sqrt(jnp.sum(dx * dx) * jnp.sum(dy * dy))


def explained_variance(values, returns, mask=None) -> jax.Array:
    """`1 - Var[returns - values] / Var[returns]`: 1 for a perfect critic, 0 for one no better
    than a constant, negative when worse (nan when the returns are constant)."""
    v = jnp.asarray(values, jnp.float32)
    ret = jnp.asarray(returns, jnp.float32)
    return 1.0 - masked_var(ret - v, mask, unbiased=False) / masked_var(ret, mask, unbiased=False)
