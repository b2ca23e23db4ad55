"""Reward-model losses: Bradley-Terry pairs, Plackett-Luce rankings, scalar regression.

Each loss returns an unreduced SUM and its denominator (the sum of weights), never a mean, so
that a mean over a gradient-accumulated batch stays exact: add the sums and the denominators of
the micro-batches, divide once. Metrics are sums too, over the same weights; divide them by the
denominator when logging. Everything is computed in float32 whatever the input dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def bradley_terry_loss(
    rewards_chosen_B,
    rewards_rejected_B,
    *,
    weight_B=None,
    margin_B=None,
    temperature: float = 1.0,
    center_coef: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array, Metrics]:
    """Pairwise preference NLL `-log sigmoid((r_c - r_r - margin) / temperature)`.

    `label_smoothing` eps treats each label as right with probability 1 - eps (human comparisons
    disagree often): `-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)`, which stops pushing a pair's
    reward gap once sigmoid(z) reaches 1 - eps instead of growing it forever.

    `margin_B` asks the chosen reward to win by at least that much (Llama 2 style preference
    strength). `center_coef * (r_c + r_r)**2` pulls the mean reward towards zero (the "reward
    centering" auxiliary loss), which the BT loss alone leaves free since it only sees
    differences. `weight_B` is 0 for padding pairs and may be fractional.

    Returns `(loss_sum, denom, metrics)`; metrics are weighted sums: `correct_sum` (r_c > r_r
    strictly, so ties count as wrong) and `margin_sum` (of r_c - r_r).
    """
    r_c = _f32(rewards_chosen_B)
    w = jnp.ones_like(r_c) if weight_B is None else _f32(weight_B)
    # Zero padding pairs before any maths: they may hold nan, which would leak into the
    # gradient even through a where() applied afterwards.
    clean = lambda x: jnp.where(w != 0, _f32(x), 0.0)
    r_c, r_r = clean(r_c), clean(rewards_rejected_B)
    diff = r_c - r_r
    logits = diff if margin_B is None else diff - clean(margin_B)
    z = logits / temperature
    nll = -jax.nn.log_sigmoid(z)
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jax.nn.log_sigmoid(-z)
    per_pair = nll + center_coef * jnp.square(r_c + r_r)
    metrics = {
        "correct_sum": jnp.sum(w * (diff > 0)),
        "margin_sum": jnp.sum(w * diff),
    }
    return jnp.sum(w * per_pair), jnp.sum(w), metrics


def plackett_luce_loss(
    rewards_BxK, ranks_BxK, valid_BxK=None
) -> tuple[jax.Array, jax.Array, Metrics]:
    """NLL of an observed ranking of K responses under the Plackett-Luce model (rank 0 = best).

    The ranking is a sequence of choices: the best of all, then the best of the rest, ... so
    `-log P = sum_k [logsumexp_{j: rank_j >= rank_k} r_j - r_k]` over valid k. Invalid responses
    (padding in groups with fewer than K answers) are left out of every choice set. For K = 2 it
    is exactly the Bradley-Terry loss. Ranks should be distinct among valid responses; tied ranks
    are put in each other's choice sets.

    The denominator counts groups with at least two valid responses (the others cost nothing).
    Metrics: `pair_correct_sum` over all valid pairs with distinct ranks (the better-ranked one
    must score strictly higher) and `pair_count`.
    """
    ranks = jnp.asarray(ranks_BxK)
    valid = jnp.ones(ranks.shape, bool) if valid_BxK is None else jnp.asarray(valid_BxK).astype(bool)
    r = jnp.where(valid, _f32(rewards_BxK), 0.0)  # padding may hold nan; keep gradients clean
    K = r.shape[-1]
    # choice_BxKxK[b, k, j]: j is still available when k is chosen.
    choice = valid[:, None, :] & (ranks[:, None, :] >= ranks[:, :, None])
    choice = choice | jnp.eye(K, dtype=bool)  # never empty, so logsumexp stays finite
    lse_BxK = jax.nn.logsumexp(jnp.where(choice, r[:, None, :], -jnp.inf), axis=-1)
    nll = jnp.sum(jnp.where(valid, lse_BxK - r, 0.0))
    denom = jnp.sum((jnp.sum(valid, axis=-1) >= 2).astype(jnp.float32))

    # better_BxKxK[b, i, j]: i is ranked strictly above j, both valid.
    better = valid[:, :, None] & valid[:, None, :] & (ranks[:, :, None] < ranks[:, None, :])
    correct = better & (r[:, :, None] > r[:, None, :])
    metrics = {
        "pair_correct_sum": jnp.sum(correct.astype(jnp.float32)),
        "pair_count": jnp.sum(better.astype(jnp.float32)),
    }
    return nll, denom, metrics


def regression_loss(pred_B, target_B, weight_B=None) -> tuple[jax.Array, jax.Array]:
    """Weighted squared error `sum w (pred - target)^2` and `sum w`, for scalar-score data."""
    pred = _f32(pred_B)
    w = jnp.ones_like(pred) if weight_B is None else _f32(weight_B)
    err = jnp.where(w != 0, pred - _f32(target_B), 0.0)
    return jnp.sum(w * jnp.square(err)), jnp.sum(w)


def length_normalise(rewards_B, lengths_B) -> jax.Array:
    """Reward per response token, to stop a reward model from simply preferring long answers.

    Lengths below 1 are treated as 1 so an empty response does not divide by zero.
    """
    return _f32(rewards_B) / jnp.maximum(_f32(lengths_B), 1.0)
