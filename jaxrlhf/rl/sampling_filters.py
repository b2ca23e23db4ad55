"""Pure next-token maths for sampling: top-k / top-p filters and one sampling step.

All functions take logits over the last axis ([..., V]) and are jit-friendly; the knobs
(`temperature`, `top_k`, `top_p`) are Python numbers fixed at trace time.

The order follows `transformers`: divide by the temperature, keep the top k, then keep the nucleus
(top p) of the renormalised top-k distribution. The log-prob returned with a sampled token is that of
the temperature-scaled, UNFILTERED distribution, `log_softmax(logits / temperature)[token]`: this is
the policy PPO optimises and what the trainer recomputes from a forward pass (`ops.logprobs` with the
same temperature), so the first PPO ratio is exactly 1. The filters only restrict which tokens can be
drawn. With temperature 0 (greedy) the log-prob is taken at temperature 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def _keep_sorted_top_p(sorted_logits_NxK: jax.Array, top_p: float) -> jax.Array:
    """For logits sorted in descending order: keep a token while the mass strictly before it is < p."""
    probs = jax.nn.softmax(sorted_logits_NxK.astype(jnp.float32), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    first = jnp.arange(probs.shape[-1]) == 0  # always at least one token
    return (mass_before < top_p) | first


def filter_logits(logits_xV: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Sets to -inf every logit outside the top k (k <= 0: off) and then outside the top-p nucleus.

    Top-k keeps exactly k tokens (ties at the k-th value are broken towards the lower token id).
    Top-p keeps the smallest set of most likely tokens whose probability (under the top-k-renormalised
    softmax) is >= p, and never fewer than one token; p >= 1 turns it off. Returns float32 logits.
    """
    logits = jnp.asarray(logits_xV, jnp.float32)
    V = logits.shape[-1]
    use_k = 0 < top_k < V
    use_p = top_p < 1.0
    if not (use_k or use_p):
        return logits
    lead = logits.shape[:-1]
    flat_NxV = logits.reshape(-1, V)
    # One path for both: the k best (k = V: a full descending sort) with their token ids.
    vals_NxK, idx_NxK = jax.lax.top_k(flat_NxV, top_k if use_k else V)
    if use_p:
        vals_NxK = jnp.where(_keep_sorted_top_p(vals_NxK, top_p), vals_NxK, NEG_INF)
    rows = jnp.arange(flat_NxV.shape[0])[:, None]
    out = jnp.full_like(flat_NxV, NEG_INF).at[rows, idx_NxK].set(vals_NxK)
    return out.reshape(*lead, V)


def top_k_filter(logits_xV: jax.Array, k: int) -> jax.Array:
    return filter_logits(logits_xV, top_k=k)


def top_p_filter(logits_xV: jax.Array, p: float) -> jax.Array:
    return filter_logits(logits_xV, top_p=p)


def sample_token(logits_BxV: jax.Array, rng: jax.Array, temperature: float, top_k: int = 0,
                 top_p: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """One token per row and its log-prob: (token_B int32, logprob_B float32).

    temperature == 0 is greedy (argmax, lowest id on ties; rng unused); otherwise a draw from
    softmax(filter(logits / temperature)). See the module docstring for which log-prob is returned.
    """
    logits = jnp.asarray(logits_BxV, jnp.float32)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logp = jax.nn.log_softmax(logits, axis=-1)
    else:
        scaled = logits / temperature
        logp = jax.nn.log_softmax(scaled, axis=-1)
        token = jax.random.categorical(rng, filter_logits(scaled, top_k, top_p), axis=-1).astype(jnp.int32)
    return token, jnp.take_along_axis(logp, token[..., None], axis=-1)[..., 0]
