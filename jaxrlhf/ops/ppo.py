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
    logp_new_BxT, logp_old_BxT, advantages_BxT, mask_BxT, clip_eps: float, clip_eps_high: float | None = None
) -> tuple[jax.Array, jax.Array, Metrics]:
    """Clipped surrogate `-min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)` summed over tokens.

    Metrics: `clip_frac_sum`, tokens whose gradient the clip removes (the clipped term is the
    strictly larger loss); `approx_kl_sum`, the k3 estimate of KL(old || new) on tokens sampled
    from the old policy, `(ratio - 1) - log ratio`, which is >= 0 and tracks how far the update
    has moved; `ratio_sum`. `clip_eps_high` (DAPO's clip-higher) bounds the ratio above at
    `1 + clip_eps_high` instead of `1 + clip_eps`.
    """
    m, loss, metrics = surrogate_tokens(logp_new_BxT, logp_old_BxT, advantages_BxT, mask_BxT, clip_eps, clip_eps_high)
    return jnp.sum(loss), jnp.sum(m), {k: jnp.sum(v) for k, v in metrics.items()}


def surrogate_tokens(logp_new_BxT, logp_old_BxT, advantages_BxT, mask_BxT, clip_eps: float,
                     clip_eps_high: float | None = None) -> tuple[jax.Array, jax.Array, Metrics]:
    """(mask_BxT float, per-token clipped surrogate loss_BxT (0 where masked), per-token metrics `*_sum`)."""
    m, (lp_new, lp_old, adv) = _prep(mask_BxT, logp_new_BxT, logp_old_BxT, advantages_BxT)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = lp_new - lp_old
    ratio = jnp.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + high)
    loss = m * jnp.maximum(unclipped, clipped)
    metrics = {
        "clip_frac_sum": m * (clipped > unclipped),
        "approx_kl_sum": m * (jnp.expm1(log_ratio) - log_ratio),
        "ratio_sum": m * ratio,
    }
    return m, loss, metrics


AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def aggregate(loss_BxT, mask_BxT, mode: str, max_len: int | None = None) -> tuple[jax.Array, jax.Array]:
    """(sum, denominator) of a per-token loss, so sum / denominator is the loss and sums over minibatches stay
    exact under accumulation.

    token_mean (DAPO): every token of the batch weighs the same, sum / tokens.
    seq_mean_token_mean (GRPO): each response's token mean, averaged over responses.
    seq_mean_token_sum_norm (Dr.GRPO): each response's token sum over a constant `max_len`, averaged over
    responses, so no response is up- or down-weighted by its length.
    A response with no token in the mask (a dropped group's) counts in no denominator.
    """
    m = jnp.asarray(mask_BxT).astype(jnp.float32)
    loss = jnp.asarray(loss_BxT, jnp.float32) * m
    rows = jnp.sum(jnp.any(m > 0, axis=-1).astype(jnp.float32))  # responses in the loss (masked-out ones are not)
    if mode == "token_mean":
        return jnp.sum(loss), jnp.sum(m)
    if mode == "seq_mean_token_mean":
        return jnp.sum(jnp.sum(loss, -1) / jnp.maximum(jnp.sum(m, -1), 1.0)), rows
    if mode == "seq_mean_token_sum_norm":
        return jnp.sum(loss) / float(max_len or loss.shape[-1]), rows
    raise ValueError(f"unknown loss aggregation {mode!r}; expected one of {AGGREGATIONS}")


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
