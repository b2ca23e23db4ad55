"""Critic-free advantages from G sampled responses per prompt (rewards_BxG: row b holds prompt b's group).

- GRPO (Shao et al. 2024): `(r - mean_g) / (std_g + eps)`, std unbiased over the group as TRL and the
  paper compute it; Dr.GRPO (Liu et al. 2025) drops the std (`scale_by_std=False`).
- RLOO (Ahmadian et al. 2024): `r_i - mean_{j != i} r_j`, the leave-one-out baseline, `G/(G-1) (r - mean)`.
- REINFORCE++ (Hu 2025): the per-token return of the KL-shaped reward, whitened over every response token
  of the batch; its group variant subtracts the group mean of the scores first.

A group whose rewards are all equal carries no signal: its advantages are exactly zero (never 0/0).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxrlhf.ops import whitening
from jaxrlhf.ops.gae import gae

GROUP_ESTIMATORS = ("grpo", "rloo", "group_mean")


def group_advantages(rewards_BxG, estimator: str = "grpo", scale_by_std: bool = True, eps: float = 1e-4):
    """Per-response advantages [B, G] float32 from the group's rewards. `group_mean`: r - mean_g."""
    if estimator not in GROUP_ESTIMATORS:
        raise ValueError(f"unknown group estimator {estimator!r}; expected one of {GROUP_ESTIMATORS}")
    r = jnp.asarray(rewards_BxG, jnp.float32)
    G = r.shape[-1]
    if G < 2:
        raise ValueError(f"a group needs at least 2 responses for a baseline, got G={G}")
    # exactly zero for an all-equal group: its float32 mean may be an ulp off, which the std division inflates
    centred = jnp.where(degenerate_groups(r)[:, None], 0.0, r - jnp.mean(r, axis=-1, keepdims=True))
    if estimator == "rloo":
        return centred * (G / (G - 1))
    if estimator == "group_mean" or not scale_by_std:
        return centred
    std = jnp.sqrt(jnp.sum(jnp.square(centred), axis=-1, keepdims=True) / (G - 1))
    return centred / (std + eps)


def degenerate_groups(rewards_BxG) -> jnp.ndarray:
    """bool [B]: groups whose rewards are all equal (DAPO's dynamic sampling drops them)."""
    r = jnp.asarray(rewards_BxG, jnp.float32)
    return jnp.all(r == r[:, :1], axis=-1)


def reinforce_pp_advantages(rewards_BxN, mask_BxN, gamma: float = 1.0):
    """REINFORCE++: the discounted return-to-go of each token's reward, whitened over all response tokens.
    (A return is GAE with zero values and lambda 1.) Masked positions come out zero."""
    returns, _ = gae(rewards_BxN, jnp.zeros_like(jnp.asarray(rewards_BxN, jnp.float32)), mask_BxN, gamma, 1.0)
    return whitening.masked_whiten(returns, mask_BxN) * jnp.asarray(mask_BxN, jnp.float32)
