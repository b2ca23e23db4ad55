"""PPO losses (Schulman et al. 2017) over masked tokens, and entropy from logits.

Losses return `(sum, denom, metrics)` with `denom` the number of masked-in tokens and metrics as
sums over those tokens, so token means stay exact under gradient accumulation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]


def _prep(mask_BxT, *xs):
    m = jnp.asarray(mask_BxT).astype(bool)
    # Zero padding before any maths so garbage there cannot turn gradients into nan.
    return m.astype(jnp.float32), [jnp.where(m, jnp.asarray(x, jnp.float32), 0.0) for x in xs]


def policy_loss(
    logp_new_BxT, logp_old_BxT, advantages_BxT, mask_BxT, clip_eps: float
) -> tuple[jax.Array, jax.Array, Metrics]:
    """Clipped surrogate `-min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)` summed over tokens.

    Metrics: `clip_frac_sum`, tokens whose gradient the clip removes (the clipped term is the
    strictly larger loss); `approx_kl_sum`, the k3 estimate of KL(old || new) on tokens sampled
    from the old policy, `(ratio - 1) - log ratio`, which is >= 0 and tracks how far the update
    has moved; `ratio_sum`.
    """
    m, (lp_new, lp_old, adv) = _prep(mask_BxT, logp_new_BxT, logp_old_BxT, advantages_BxT)
    log_ratio = lp_new - lp_old
    ratio = jnp.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = jnp.maximum(unclipped, clipped)
    metrics = {
        "clip_frac_sum": jnp.sum(m * (clipped > unclipped)),
        "approx_kl_sum": jnp.sum(m * (jnp.expm1(log_ratio) - log_ratio)),
        "ratio_sum": jnp.sum(m * ratio),
    }
    return jnp.sum(m * loss), jnp.sum(m), metrics


def value_loss(
    values_new_BxT, values_old_BxT, returns_BxT, mask_BxT, clip_eps: float | None
) -> tuple[jax.Array, jax.Array, Metrics]:
    """`0.5 * max((v - R)^2, (clip(v, v_old - eps, v_old + eps) - R)^2)` summed over tokens.

    Value clipping keeps the critic near the values the advantages were computed with;
    `clip_eps=None` turns it off. Metrics: `clip_frac_sum` (tokens where the clipped error is
    strictly larger, i.e. the gradient is cut) and `error_sum` of the unclipped squared error.
    """
    m, (v, v_old, ret) = _prep(mask_BxT, values_new_BxT, values_old_BxT, returns_BxT)
    unclipped = jnp.square(v - ret)
    if clip_eps is None:
        loss, clip_hit = unclipped, jnp.zeros_like(unclipped)
    else:
        # Clamp v itself (as TRL): v_old + clip(v - v_old) rounds away from v inside the range, and then
        # ~0.1% of never-clipped tokens counted as clipped.
        v_clip = jnp.clip(v, v_old - clip_eps, v_old + clip_eps)
        clipped = jnp.square(v_clip - ret)
        loss, clip_hit = jnp.maximum(unclipped, clipped), (clipped > unclipped)
    metrics = {"clip_frac_sum": jnp.sum(m * clip_hit), "error_sum": jnp.sum(m * unclipped)}
    return 0.5 * jnp.sum(m * loss), jnp.sum(m), metrics


def entropy_from_logits(logits_BxTxV) -> jax.Array:
    """Entropy of softmax(logits) over the last axis, in float32 via log-softmax.

    Stable for large logits, and for -inf logits (masked vocabulary), which contribute zero.
    """
    logits = jnp.asarray(logits_BxTxV, jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(logp)
    return -jnp.sum(p * jnp.where(p > 0, logp, 0.0), axis=-1)
