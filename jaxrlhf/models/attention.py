"""Softmax attention with grouped-query heads, the one entry point every model family calls.

Two implementations of the same maths:

- `reference_attention`: logits, mask, softmax and the value product as whole arrays, differentiated by
  JAX. It carries BERT's attention dropout and is the reference the tests compare against.
- `blocked_attention` (used whenever dropout is off): heads-major layout, `[B, K, G*T, D]`, so each
  product is one batched matmul with no transpose of the `[.., T, S]` logits; on CPU the batch is cut into
  blocks (`lax.map`) whose logits stay in cache while they are masked, normalised and multiplied by V; a
  hand-written backward recomputes each block's probabilities from the saved row max and row sum instead
  of keeping `[B, H, T, S]` probabilities alive from the forward pass. On accelerators it runs as one
  block (XLA fuses it there; the fused kernels arrive with the accelerator work).

A query row with no visible key (a left-pad position) gets uniform weights instead of NaN in both;
callers ignore those rows. Logits and softmax run in float32 whatever the input dtype.

`softcap` (Gemma 2's `attn_logit_softcapping`): the scaled logits become softcap * tanh(logits / softcap)
before the mask, as HF does. The default path and "xla" (there: the reference maths, since
`jax.nn.dot_product_attention` takes no soft-cap) carry it; cuDNN and Splash refuse it.

`dot_product_attention(..., implementation=)` picks the kernel (`model.attention`): this default path,
or XLA's, cuDNN's or Splash's fused attention (`models.attention_kernels`, which says when each applies).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxrlhf.models.attention_kernels import (  # noqa: F401  (IMPLEMENTATIONS etc.: re-exported)
    IMPLEMENTATIONS,
    cache_implementation,
    check_implementation,
    effective_window,
    nn_attention,
    select_implementation,
    splash_attention,
    xla_attention,
)
from jaxrlhf.models.layers import dropout

_NEG = float(jnp.finfo(jnp.float32).min)
# Logits bytes per block on CPU: small enough to stay in L2/L3 across the mask-softmax-matmul passes,
# large enough that each block's matmuls are not dominated by loop overhead (docs/benchmarks.md).
CPU_BLOCK_BYTES = 4 << 20
LANES = 2


def dot_product_attention(q_BxTxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array,
                          mask_BxTxS: jax.Array, *, dropout_rate: float = 0.0,
                          dropout_rng: jax.Array | None = None, implementation: str = "default",
                          key_mask_BxS: jax.Array | None = None, causal: bool = False, window: int | None = None,
                          interpret: bool = False, softcap: float | None = None) -> jax.Array:
    """Attention of H query heads over K key/value heads (H a multiple of K); `mask_BxTxS` True = visible.
    With a `dropout_rng` and a positive `dropout_rate`, the probabilities are dropped (BERT training).

    `implementation`: one of IMPLEMENTATIONS (module docstring). `key_mask_BxS`, `causal`, `window` say how
    the mask was made, for the kernels that take none: `mask_BxTxS = key_mask_BxS[:, None, :]`, and, when
    `causal`, key slot s <= query slot t, and, with a `window`, s > t - window (slots from 0, T == S: no
    KV cache). `interpret`: Splash in Pallas interpret mode (CPU). `softcap`: module docstring."""
    if dropout_rng is not None and dropout_rate > 0.0:
        return reference_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS, dropout_rate=dropout_rate,
                                   dropout_rng=dropout_rng, softcap=softcap)
    window = effective_window(window, k_BxSxKxD.shape[1])
    chosen = select_implementation(implementation, q_BxTxHxD, k_BxSxKxD, key_mask_BxS=key_mask_BxS,
                                   causal=causal, window=window, interpret=interpret, softcap=softcap)
    if chosen == "xla" and softcap is not None:  # XLA compiles the plain maths; jax.nn's kernel has no soft-cap
        return reference_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS, softcap=softcap)
    if chosen == "xla":
        return xla_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS)
    if chosen == "cudnn":  # a window is not kept by packing (holes shift slots): the dense mask carries it
        return nn_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS, "cudnn",
                            key_mask_BxS=None if window is not None else key_mask_BxS, causal=causal)
    if chosen == "splash":
        return splash_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, key_mask_BxS, causal=causal, window=window,
                                interpret=interpret)
    return blocked_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS, softcap=softcap)


def soft_cap(logits: jax.Array, softcap: float | None) -> jax.Array:
    """softcap * tanh(logits / softcap), identity for None: bounds logits smoothly to (-softcap, softcap)."""
    return logits if softcap is None else softcap * jnp.tanh(logits / softcap)


def reference_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS, *, dropout_rate: float = 0.0,
                        dropout_rng: jax.Array | None = None, softcap: float | None = None) -> jax.Array:
    B, T, H, D = q_BxTxHxD.shape
    K = k_BxSxKxD.shape[2]
    q_BxTxKxGxD = q_BxTxHxD.reshape(B, T, K, H // K, D)
    logits = jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxD, k_BxSxKxD,
                        preferred_element_type=jnp.float32) / math.sqrt(D)
    logits = jnp.where(mask_BxTxS[:, None, None, :, :], soft_cap(logits, softcap), _NEG)
    probs = dropout(jax.nn.softmax(logits, axis=-1), dropout_rate, dropout_rng).astype(v_BxSxKxD.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v_BxSxKxD)
    return out.reshape(B, T, H, D)


def blocked_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS, *, block_rows: int | None = None,
                      softcap: float | None = None) -> jax.Array:
    return blocked_attention_heads_major(q_BxTxHxD, k_BxSxKxD.transpose(0, 2, 1, 3), v_BxSxKxD.transpose(0, 2, 1, 3),
                                         mask_BxTxS, block_rows=block_rows, softcap=softcap)


def blocked_attention_heads_major(q_BxTxHxD, k_BxKxSxD, v_BxKxSxD, mask_BxTxS, *,
                                  block_rows: int | None = None, softcap: float | None = None) -> jax.Array:
    """`blocked_attention` with keys and values already heads-major (the KV cache's layout): only the T
    query rows are rearranged, so a decode step reads the cache as it lies."""
    B, T, H, D = q_BxTxHxD.shape
    K, S = k_BxKxSxD.shape[1:3]
    G = H // K
    if block_rows is None:
        block_rows = default_block_rows(B, K * G * T * S * 4)
    q_BxKxMxD = q_BxTxHxD.reshape(B, T, K, G, D).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, D)
    softcap = None if softcap is None else float(softcap)  # static: one compiled block per value
    out_BxKxMxD = _attend(q_BxKxMxD, k_BxKxSxD, v_BxKxSxD, mask_BxTxS.astype(bool), block_rows, softcap)
    return out_BxKxMxD.reshape(B, K, G, T, D).transpose(0, 3, 1, 2, 4).reshape(B, T, H, D)


def cached_attention(q_BxTxHxD: jax.Array, k_BxKxSxD: jax.Array, v_BxKxSxD: jax.Array, mask_BxTxS: jax.Array, *,
                     implementation: str = "default", softcap: float | None = None) -> jax.Array:
    """Attention over KV-cache slots held heads-major ([B, K, S, D]), for a call that is not a prefill of
    an empty cache. A one-token query (the decode step) takes the blocked path with the cache as it lies;
    a longer query asked for a fused kernel gets the keys transposed back to [B, S, K, D] (rare: chunked
    prefill onto a filled cache)."""
    B, K, S, D = k_BxKxSxD.shape
    shape_BxSxKxD = jax.ShapeDtypeStruct((B, S, K, D), k_BxKxSxD.dtype)
    chosen = select_implementation(cache_implementation(implementation), q_BxTxHxD, shape_BxSxKxD, softcap=softcap)
    if chosen == "default":
        return blocked_attention_heads_major(q_BxTxHxD, k_BxKxSxD, v_BxKxSxD, mask_BxTxS, softcap=softcap)
    return dot_product_attention(q_BxTxHxD, k_BxKxSxD.transpose(0, 2, 1, 3), v_BxKxSxD.transpose(0, 2, 1, 3),
                                 mask_BxTxS, implementation=chosen, softcap=softcap)


def shared_prefix_attention(q_RxTxHxD: jax.Array, prefix_k_BxKxPxD: jax.Array, prefix_v_BxKxPxD: jax.Array,
                            prefix_mask_BxTxP: jax.Array, k_RxKxSxD: jax.Array, v_RxKxSxD: jax.Array,
                            mask_RxTxS: jax.Array, *, softcap: float | None = None) -> jax.Array:
    """Attention of R = B*G rows over a prefix of P slots that each group of G consecutive rows shares
    (its prompt, held once: [B, K, P, D]) followed by S slots of the row's own ([R, K, S, D]): one softmax
    over the P + S keys, so exactly the attention over the concatenated keys of each row.

    The G rows' queries act as G times as many query heads against the shared prefix, so the prefix is read
    once per group and its products are G times larger. `prefix_mask_BxTxP`: which prefix slots each query
    sees, the same for all rows of a group (they sit at the same slots)."""
    R, T, H, D = q_RxTxHxD.shape
    B, K, P, _ = prefix_k_BxKxPxD.shape
    G, h = R // B, H // K
    softcap = None if softcap is None else float(softcap)
    # Query rows ordered (head group g of K, then h, then T) for the row's own keys, as the blocked path has
    # them; against the prefix the group's G rows go in front: (G, h, T).
    q_RxKxMxD = q_RxTxHxD.reshape(R, T, K, h, D).transpose(0, 2, 3, 1, 4).reshape(R, K, h * T, D)
    q_BxKxNxD = q_RxKxMxD.reshape(B, G, K, h * T, D).transpose(0, 2, 1, 3, 4).reshape(B, K, G * h * T, D)
    pre_BxKxNxP = _masked(_capped_logits(q_BxKxNxD, prefix_k_BxKxPxD, softcap), prefix_mask_BxTxP.astype(bool), _NEG)
    own_RxKxMxS = _masked(_capped_logits(q_RxKxMxD, k_RxKxSxD, softcap), mask_RxTxS.astype(bool), _NEG)
    pre_RxKxMxP = pre_BxKxNxP.reshape(B, K, G, h * T, P).transpose(0, 2, 1, 3, 4).reshape(R, K, h * T, P)
    probs = jax.nn.softmax(jnp.concatenate([pre_RxKxMxP, own_RxKxMxS], axis=-1), axis=-1)
    probs_pre = probs[..., :P].reshape(B, G, K, h * T, P).transpose(0, 2, 1, 3, 4).reshape(B, K, G * h * T, P)
    out_pre = jnp.einsum("bkns,bksd->bknd", probs_pre.astype(prefix_v_BxKxPxD.dtype), prefix_v_BxKxPxD,
                         preferred_element_type=jnp.float32)
    out_own = jnp.einsum("rkms,rksd->rkmd", probs[..., P:].astype(v_RxKxSxD.dtype), v_RxKxSxD,
                         preferred_element_type=jnp.float32)
    out_RxKxMxD = out_own + out_pre.reshape(B, K, G, h * T, D).transpose(0, 2, 1, 3, 4).reshape(R, K, h * T, D)
    return out_RxKxMxD.astype(q_RxTxHxD.dtype).reshape(R, K, h, T, D).transpose(0, 3, 1, 2, 4).reshape(R, T, H, D)


def default_block_rows(batch: int, logits_bytes_per_row: int) -> int:
    """Batch rows per block: the largest divisor of `batch` whose logits fit CPU_BLOCK_BYTES on CPU
    (at least one row); the whole batch elsewhere."""
    if jax.default_backend() != "cpu":
        return batch
    rows = max(1, min(batch, CPU_BLOCK_BYTES // max(1, logits_bytes_per_row)))
    while batch % rows:
        rows -= 1
    return rows


# ----------------------------------------------------------------------------- one block, both directions

def _capped_logits(q_bxKxMxD, k_bxKxSxD, softcap):
    """Scaled (and soft-capped) logits, before the mask."""
    D = q_bxKxMxD.shape[-1]
    logits = jnp.einsum("bkmd,bksd->bkms", q_bxKxMxD, k_bxKxSxD, preferred_element_type=jnp.float32)
    return soft_cap(logits * (1.0 / math.sqrt(D)), softcap)


def _masked(x_bxKxMxS, mask_bxTxS, fill: float):
    b, K, M, S = x_bxKxMxS.shape
    T = mask_bxTxS.shape[1]
    x = x_bxKxMxS.reshape(b, K, M // T, T, S)
    return jnp.where(mask_bxTxS[:, None, None], x, fill).reshape(b, K, M, S)


def _forward_block(q, k, v, mask, softcap=None):
    logits = _masked(_capped_logits(q, k, softcap), mask, _NEG)
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    unnorm = jnp.exp(logits - row_max)
    row_sum = jnp.sum(unnorm, axis=-1, keepdims=True)
    probs = (unnorm / row_sum).astype(v.dtype)
    out = jnp.einsum("bkms,bksd->bkmd", probs, v, preferred_element_type=jnp.float32).astype(v.dtype)
    return out, row_max[..., 0], row_sum[..., 0]


def _backward_block(softcap, q, k, v, mask, out, row_max, row_sum, d_out):
    D = q.shape[-1]
    capped = _capped_logits(q, k, softcap)
    probs = jnp.exp(_masked(capped, mask, _NEG) - row_max[..., None]) / row_sum[..., None]
    d_v = jnp.einsum("bkms,bkmd->bksd", probs.astype(d_out.dtype), d_out, preferred_element_type=jnp.float32)
    d_probs = jnp.einsum("bkmd,bksd->bkms", d_out, v, preferred_element_type=jnp.float32)
    # softmax backward: d_logits = P * (dP - sum_s P dP); sum_s P dP = sum_d dO * O.
    row_dot = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_logits = probs * (d_probs - row_dot) * (1.0 / math.sqrt(D))
    if softcap is not None:  # d/dx c tanh(x / c) = 1 - tanh^2 = 1 - (capped / c)^2
        d_logits = d_logits * (1.0 - jnp.square(capped / softcap))
    # Masked logits get no gradient (as through the reference's `where`); a row with no visible key has
    # uniform, non-zero probabilities, so the mask must be applied here, not left to the exponent.
    d_logits = _masked(d_logits, mask, 0.0).astype(q.dtype)
    d_q = jnp.einsum("bkms,bksd->bkmd", d_logits, k, preferred_element_type=jnp.float32)
    d_k = jnp.einsum("bkms,bkmd->bksd", d_logits, q, preferred_element_type=jnp.float32)
    return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype)


def _map_blocks(fn, block_rows: int, *arrays):
    """`fn` over blocks of `block_rows` batch rows (one call when the block is the whole batch). The blocks
    go into LANES independent loops, which XLA's CPU executor runs on different threads at once."""
    B = arrays[0].shape[0]
    if block_rows >= B:
        return fn(*arrays)
    n = B // block_rows
    lanes = LANES if n % LANES == 0 else 1
    blocked = [a.reshape(lanes, n // lanes, block_rows, *a.shape[1:]) for a in arrays]
    outs = [jax.lax.map(lambda xs: fn(*xs), [a[lane] for a in blocked]) for lane in range(lanes)]
    return jax.tree.map(lambda *o: jnp.stack(o).reshape(B, *o[0].shape[2:]), *outs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attend(q, k, v, mask, block_rows, softcap):
    return _map_blocks(functools.partial(_forward_block, softcap=softcap), block_rows, q, k, v, mask)[0]


def _attend_fwd(q, k, v, mask, block_rows, softcap):
    out, row_max, row_sum = _map_blocks(functools.partial(_forward_block, softcap=softcap), block_rows, q, k, v, mask)
    return out, (q, k, v, mask, out, row_max, row_sum)


def _attend_bwd(block_rows, softcap, residuals, d_out):
    d_q, d_k, d_v = _map_blocks(functools.partial(_backward_block, softcap), block_rows, *residuals, d_out)
    return d_q, d_k, d_v, None


_attend.defvjp(_attend_fwd, _attend_bwd)
