"""Pure next-token maths for sampling: top-k / top-p filters and one sampling step.

All functions take logits over the last axis ([..., V]) and are jit-friendly; the knobs
(`temperature`, `top_k`, `top_p`) are Python numbers fixed at trace time.

The order follows `transformers`: divide by the temperature, keep the top k, then keep the nucleus
(top p) of the renormalised top-k distribution. The log-prob returned with a sampled token is that of
the temperature-scaled, UNFILTERED distribution, `log_softmax(logits / temperature)[token]`: this is
the policy PPO optimises and what the trainer recomputes from a forward pass (`ops.logprobs` with the
same temperature), so the first PPO ratio is exactly 1. The filters only restrict which tokens can be
drawn. With temperature 0 (greedy) the log-prob is taken at temperature 1.

No full-vocabulary sort: on CPU, XLA sorts 8 x 49k logits in ~60 ms, as long as a whole SmolLM2
decode step. Top-k uses `lax.top_k`. Top-p alone first looks for the nucleus among the 256 most likely
tokens (one `lax.top_k`, then a draw among those 256); only if a row's nucleus is larger does the step
fall back to a bisection for the probability threshold over the whole vocabulary (31 masked sums on
the float bits, exact). With top-k the draw is among the k candidates.

Draws are by inverse CDF (`sample_categorical`: two uniforms a row, two-level cumulative sums) rather
than `jax.random.categorical`, whose Gumbel noise for each of the 8 x 49k logits costs ~6 ms a step
here, a fifth of a SmolLM2 decode step. Both resolve probabilities down to ~1e-7 in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf
FAST_NUCLEUS = 256  # candidates searched first for a top-p nucleus
SAMPLE_BLOCK = 256  # tokens per block of the two-level inverse-CDF draw


def _sorted_nucleus_threshold(sorted_NxK: jax.Array, logz_N: jax.Array, top_p: float) -> jax.Array:
    """The smallest logit kept by top-p, for logits sorted in descending order.

    `logz_N` normalises the distribution top-p applies to. Walking down the sorted list, a token is in
    the nucleus while the mass strictly before it is < p; the first token always is.
    """
    probs = jnp.exp(sorted_NxK - logz_N[:, None])
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    in_nucleus = (mass_before < top_p) | (jnp.arange(sorted_NxK.shape[-1]) == 0)
    return jnp.min(jnp.where(in_nucleus, sorted_NxK, jnp.inf), axis=-1)


def _bisect_nucleus_keep(logits_NxV: jax.Array, top_p: float) -> jax.Array:
    """Top-p over the whole vocabulary without sorting: the largest probability threshold t with
    mass(prob >= t) >= p, found by bisection on the float bits (non-negative floats order like ints)."""
    probs = jax.nn.softmax(logits_NxV, axis=-1)
    bits = jax.lax.bitcast_convert_type(probs, jnp.int32)
    N = logits_NxV.shape[0]

    def body(_, lo_hi):
        lo, hi = lo_hi
        mid = lo + (hi - lo) // 2
        ok = jnp.sum(jnp.where(bits >= mid[:, None], probs, 0.0), axis=-1) >= top_p
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo0 = jnp.zeros((N,), jnp.int32)  # mass(prob >= 0) is everything
    hi0 = jnp.full((N,), 0x7F800000, jnp.int32)  # +inf: nothing
    lo, _ = jax.lax.fori_loop(0, 31, body, (lo0, hi0))
    # Never fewer than one token (rounding could leave the total mass just under p).
    return (bits >= lo[:, None]) | (probs >= jnp.max(probs, axis=-1, keepdims=True))


def filter_logits(logits_xV: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Sets to -inf every logit outside the top k (k <= 0: off) and then outside the top-p nucleus.

    Top-k keeps exactly k tokens (ties at the k-th value are broken towards the lower token id).
    Top-p keeps the smallest set of most likely tokens whose probability (under the top-k-renormalised
    softmax) is >= p, and never fewer than one; tokens tied with the least likely kept one are kept
    too. p >= 1 turns it off. Returns float32 logits of the input's shape.
    """
    logits = jnp.asarray(logits_xV, jnp.float32)
    V = logits.shape[-1]
    use_k, use_p = 0 < top_k < V, top_p < 1.0
    if not (use_k or use_p):
        return logits
    flat_NxV = logits.reshape(-1, V)
    if use_k:
        vals_NxK, idx_NxK = jax.lax.top_k(flat_NxV, top_k)
        if use_p:
            thr = _sorted_nucleus_threshold(vals_NxK, jax.nn.logsumexp(vals_NxK, axis=-1), top_p)
            vals_NxK = jnp.where(vals_NxK >= thr[:, None], vals_NxK, NEG_INF)
        rows = jnp.arange(flat_NxV.shape[0])[:, None]
        out = jnp.full_like(flat_NxV, NEG_INF).at[rows, idx_NxK].set(vals_NxK)
    else:
        out = jnp.where(_bisect_nucleus_keep(flat_NxV, top_p), flat_NxV, NEG_INF)
    return out.reshape(logits.shape)


def top_k_filter(logits_xV: jax.Array, k: int) -> jax.Array:
    return filter_logits(logits_xV, top_k=k)


def top_p_filter(logits_xV: jax.Array, p: float) -> jax.Array:
    return filter_logits(logits_xV, top_p=p)


def _first_above(cum_NxM: jax.Array, target_N: jax.Array, positive_NxM: jax.Array) -> jax.Array:
    """The first index whose cumulative mass exceeds the target, capped at the last index with mass
    (so float rounding at the top end can never select a zero-probability entry)."""
    idx = jnp.sum(cum_NxM <= target_N[:, None], axis=-1)
    last_positive = cum_NxM.shape[-1] - 1 - jnp.argmax(positive_NxM[:, ::-1], axis=-1)
    return jnp.minimum(idx, last_positive)


def categorical_from_uniforms(logits_BxV: jax.Array, u1_B: jax.Array, u2_B: jax.Array,
                              with_logz: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Inverse-CDF draw from softmax(logits) given two uniforms in [0, 1) per row.

    Two levels keep float32 cumulative sums accurate: u1 picks a block of SAMPLE_BLOCK tokens by the
    blocks' masses, u2 a token inside it by the token masses. -inf logits are never drawn.
    `with_logz`: also return logsumexp(logits) per row, from the same exponentials (a second pass over a
    [B, V] array costs as much as the draw itself).
    """
    B, V = logits_BxV.shape
    nb = -(-V // SAMPLE_BLOCK)
    x = jnp.pad(jnp.asarray(logits_BxV, jnp.float32), ((0, 0), (0, nb * SAMPLE_BLOCK - V)),
                constant_values=NEG_INF)
    max_Bx1 = jnp.max(x, axis=-1, keepdims=True)
    w_BxNxK = jnp.exp(x - max_Bx1).reshape(B, nb, SAMPLE_BLOCK)
    mass_BxN = jnp.sum(w_BxNxK, axis=-1)
    cum_BxN = jnp.cumsum(mass_BxN, axis=-1)
    block = _first_above(cum_BxN, u1_B * cum_BxN[:, -1], mass_BxN > 0)
    w_BxK = jnp.take_along_axis(w_BxNxK, block[:, None, None], axis=1)[:, 0]
    cum_BxK = jnp.cumsum(w_BxK, axis=-1)
    token = (block * SAMPLE_BLOCK + _first_above(cum_BxK, u2_B * cum_BxK[:, -1], w_BxK > 0)).astype(jnp.int32)
    return (token, max_Bx1[:, 0] + jnp.log(cum_BxN[:, -1])) if with_logz else token


def sample_categorical(rng: jax.Array, logits_BxV: jax.Array, rows: tuple[jax.Array, int] | None = None,
                       with_logz: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """A draw from softmax(logits) per row: two uniforms a row instead of `jax.random.categorical`'s
    Gumbel noise for every logit (an order of magnitude less work at a 49k vocabulary; docs/benchmarks.md).

    `rows` (row_ids_B, num_rows): the B rows are these rows of a batch of num_rows, and each draws the
    uniforms that row would draw in the whole batch (a decode loop that drops finished rows samples what
    the full batch would). `with_logz`: (token_B, logsumexp_B), as `categorical_from_uniforms`."""
    if rows is None:
        u = jax.random.uniform(rng, (2, logits_BxV.shape[0]), jnp.float32)
    else:
        u = jax.random.uniform(rng, (2, rows[1]), jnp.float32)[:, rows[0]]
    return categorical_from_uniforms(logits_BxV, u[0], u[1], with_logz)


def _sample_top_p(rng: jax.Array, scaled_BxV: jax.Array, logz_B: jax.Array, top_p: float, rows=None) -> jax.Array:
    """A draw from the top-p nucleus: among the FAST_NUCLEUS best tokens when every row's nucleus (and
    its ties) lies inside them, else from the bisection filter over the whole vocabulary."""
    # The barrier keeps XLA:CPU's TopK custom call: without it, a top_k whose result reaches a
    # `cond` is lowered as a full sort (60 ms for 8 x 49k).
    vals_BxK, idx_BxK = jax.lax.optimization_barrier(jax.lax.top_k(scaled_BxV, FAST_NUCLEUS))
    thr_B = _sorted_nucleus_threshold(vals_BxK, logz_B, top_p)
    inside = jnp.all(vals_BxK[:, -1] < thr_B)

    def among_candidates():
        pick = sample_categorical(rng, jnp.where(vals_BxK >= thr_B[:, None], vals_BxK, NEG_INF), rows)
        return jnp.take_along_axis(idx_BxK, pick[:, None], axis=-1)[:, 0]

    def whole_vocabulary():
        return sample_categorical(rng, filter_logits(scaled_BxV, top_p=top_p), rows)

    return jax.lax.cond(inside, among_candidates, whole_vocabulary)


def sample_token(logits_BxV: jax.Array, rng: jax.Array, temperature: float, top_k: int = 0,
                 top_p: float = 1.0, rows: tuple[jax.Array, int] | None = None) -> tuple[jax.Array, jax.Array]:
    """One token per row and its log-prob: (token_B int32, logprob_B float32).

    temperature == 0 is greedy (argmax, lowest id on ties; rng unused); otherwise a draw from
    softmax(filter(logits / temperature)). See the module docstring for which log-prob is returned.
    `rows`: the rows' places in a larger batch, whose draws they take (`sample_categorical`).
    """
    logits = jnp.asarray(logits_BxV, jnp.float32)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    V = logits.shape[-1]
    if temperature == 0:
        token = jnp.argmax(logits, axis=-1)
        logp = jax.nn.log_softmax(logits, axis=-1)
    else:
        scaled = logits / temperature
        if not 0 < top_k < V and top_p >= 1.0:  # no filter: the draw's exponentials give the log-partition too
            token, logz = sample_categorical(rng, scaled, rows, with_logz=True)
            return token, jnp.take_along_axis(scaled, token[:, None], axis=-1)[:, 0] - logz
        logz = jax.nn.logsumexp(scaled, axis=-1)
        logp = scaled - logz[:, None]
        if 0 < top_k < V:  # draw among the k candidates, not over a [B, V] array of -inf
            vals_BxK, idx_BxK = jax.lax.top_k(scaled, top_k)
            if top_p < 1.0:
                thr = _sorted_nucleus_threshold(vals_BxK, jax.nn.logsumexp(vals_BxK, axis=-1), top_p)
                vals_BxK = jnp.where(vals_BxK >= thr[:, None], vals_BxK, NEG_INF)
            pick = sample_categorical(rng, vals_BxK, rows)
            token = jnp.take_along_axis(idx_BxK, pick[:, None], axis=-1)[:, 0]
        elif top_p < 1.0 and V > FAST_NUCLEUS:
            token = _sample_top_p(rng, scaled, logz, top_p, rows)
        else:
            token = sample_categorical(rng, filter_logits(scaled, top_k, top_p), rows)
    token = token.astype(jnp.int32)
    return token, jnp.take_along_axis(logp, token[..., None], axis=-1)[..., 0]
