"""The blocked attention (heads-major, CPU blocks, hand-written backward) against a float64 NumPy loop and
against the autodiff reference, on the masks the models make: left and right padding, causal, holes, rows
with no visible key, grouped-query heads, a one-token decode step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.models import attention


def numpy_attention(q, k, v, mask):
    """float64 loop over batch and heads: softmax(q k^T / sqrt(D), masked) v; a row with no visible key
    averages all values (uniform weights)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, T, H, D = q.shape
    K = k.shape[2]
    out = np.zeros((B, T, H, D))
    for b in range(B):
        for h in range(H):
            kv = h // (H // K)
            logits = q[b, :, h] @ k[b, :, kv].T / np.sqrt(D)
            logits = np.where(mask[b], logits, -np.inf)
            for t in range(T):
                row = logits[t]
                w = np.ones_like(row) if np.all(np.isinf(row)) else np.exp(row - row.max())
                out[b, t, h] = (w / w.sum()) @ v[b, :, kv]
    return out


def masks(kind: str, B: int, T: int, S: int) -> np.ndarray:
    causal = np.tril(np.ones((T, S), bool), k=S - T)
    m = np.broadcast_to(causal, (B, T, S)).copy()
    if kind == "left":  # left padding: row b's first b+1 keys are pads, and so are those query rows
        for b in range(B):
            m[b, :, : b + 1] = False
    elif kind == "right":
        for b in range(B):
            m[b, :, S - b - 1:] = False
    elif kind == "holed":  # holes in the middle (packed or dropped tokens), not only at the ends
        m[:, :, 2:4] = False
        m[1, :, 5] = False
    return m


def inputs(B, T, S, H, K, D, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, H, D))
    k = rng.standard_normal((B, S, K, D))
    v = rng.standard_normal((B, S, K, D))
    return [jnp.asarray(x, dtype) for x in (q, k, v)]


@pytest.mark.parametrize("kind", ["left", "right", "holed"])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2)])
@pytest.mark.parametrize("block_rows", [1, 4])
def test_blocked_equals_float64_loop_and_reference(kind, heads, block_rows):
    H, K = heads
    B, T, D = 4, 7, 8
    q, k, v = inputs(B, T, T, H, K, D)
    mask = masks(kind, B, T, T)
    want = numpy_attention(q, k, v, mask)
    got = attention.blocked_attention(q, k, v, jnp.asarray(mask), block_rows=block_rows)
    ref = attention.reference_attention(q, k, v, jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ref), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["left", "right", "holed"])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2)])
def test_blocked_gradients_equal_autodiff_of_reference(kind, heads):
    H, K = heads
    B, T, D = 4, 7, 8
    q, k, v = inputs(B, T, T, H, K, D, seed=1)
    mask = jnp.asarray(masks(kind, B, T, T))
    cot = jnp.asarray(np.random.default_rng(2).standard_normal((B, T, H, D)), jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, mask) * cot)

    want = jax.grad(loss(attention.reference_attention), argnums=(0, 1, 2))(q, k, v)
    for rows in (1, 4):
        blocked = lambda q, k, v, m, rows=rows: attention.blocked_attention(q, k, v, m, block_rows=rows)  # noqa: E731
        got = jax.grad(loss(blocked), argnums=(0, 1, 2))(q, k, v)
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=1e-4)


def test_row_without_visible_key_is_uniform_and_has_no_gradient_into_keys():
    B, T, H, D = 2, 3, 2, 4
    q, k, v = inputs(B, T, T, H, H, D)
    mask = np.ones((B, T, T), bool)
    mask[0, 0] = False  # query 0 of row 0 sees nothing (a left-pad position)
    out = attention.blocked_attention(q, k, v, jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(out[0, 0]), np.asarray(v[0].mean(0)), atol=1e-6)
    # Only that query's output in the loss: its weights are constant, so q and k get no gradient at all.
    d_q, d_k, d_v = jax.grad(lambda q, k, v: attention.blocked_attention(q, k, v, jnp.asarray(mask))[0, 0].sum(),
                             argnums=(0, 1, 2))(q, k, v)
    assert not np.any(np.asarray(d_q)) and not np.any(np.asarray(d_k))
    np.testing.assert_allclose(np.asarray(d_v[0]), np.full((T, H, D), 1.0 / T), atol=1e-6)


def test_decode_step_one_query_over_a_longer_cache():
    B, S, H, K, D = 3, 9, 6, 3, 8
    q, k, v = inputs(B, 1, S, H, K, D)
    mask = np.ones((B, 1, S), bool)
    mask[0, :, :4] = False  # left-padded prompt
    mask[:, :, 7:] = False  # cache slots not written yet
    got = attention.blocked_attention(q, k, v, jnp.asarray(mask), block_rows=1)
    np.testing.assert_allclose(np.asarray(got), numpy_attention(q, k, v, mask), atol=1e-5)


def test_bfloat16_inputs_keep_float32_softmax_and_return_bfloat16():
    B, T, H, D = 2, 6, 4, 16
    q, k, v = inputs(B, T, T, H, H, D)
    mask = jnp.asarray(masks("left", B, T, T))
    q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))
    got = attention.blocked_attention(q16, k16, v16, mask)
    assert got.dtype == jnp.bfloat16
    want = numpy_attention(q16.astype(jnp.float32), k16.astype(jnp.float32), v16.astype(jnp.float32),
                           np.asarray(mask))
    # Within bf16 rounding of the probabilities and the output (8 mantissa bits).
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=3e-2, rtol=3e-2)
    grads = jax.grad(lambda q: attention.blocked_attention(q, k16, v16, mask).astype(jnp.float32).sum())(q16)
    assert grads.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grads, np.float32)))


def test_dropout_goes_through_the_reference_and_changes_the_output():
    B, T, H, D = 2, 5, 2, 4
    q, k, v = inputs(B, T, T, H, H, D)
    mask = jnp.ones((B, T, T), bool)
    plain = attention.dot_product_attention(q, k, v, mask)
    dropped = attention.dot_product_attention(q, k, v, mask, dropout_rate=0.5, dropout_rng=jax.random.key(0))
    assert not np.allclose(np.asarray(plain), np.asarray(dropped))
    np.testing.assert_allclose(np.asarray(plain), np.asarray(attention.reference_attention(q, k, v, mask)),
                               atol=1e-6)


def test_block_rows_divide_the_batch_and_fit_the_budget():
    per_row = attention.CPU_BLOCK_BYTES // 3
    assert attention.default_block_rows(12, per_row) == 3
    assert attention.default_block_rows(10, per_row) == 2  # 3 does not divide 10
    assert attention.default_block_rows(5, attention.CPU_BLOCK_BYTES * 4) == 1
    assert attention.default_block_rows(4, 1) == 4


@pytest.mark.parametrize("T,softcap", [(1, None), (3, None), (2, 5.0)])
def test_a_shared_prefix_equals_attention_over_each_rows_concatenated_keys(T, softcap):
    """Groups of G rows that share a P-slot prompt (held once) and hold S slots of their own: one softmax over
    the P + S keys of each row, checked against the float64 loop on the keys laid end to end."""
    B, G, K, H, P, S, D = 2, 3, 2, 4, 5, 4, 8
    R = B * G
    r = np.random.RandomState(0)
    q = r.randn(R, T, H, D).astype(np.float32)
    pk, pv = (r.randn(B, P, K, D).astype(np.float32) for _ in range(2))
    k, v = (r.randn(R, S, K, D).astype(np.float32) for _ in range(2))
    prefix_mask_BxP = np.ones((B, P), bool)
    prefix_mask_BxP[1, :2] = False  # the second prompt is left-padded
    own_mask = masks("causal", R, T, S).copy()
    own_mask[4, :, 1] = False  # a finished row's pad slot
    full_k, full_v = (np.concatenate([np.repeat(p, G, 0), o], 1) for p, o in ((pk, k), (pv, v)))
    full_mask = np.concatenate([np.repeat(np.broadcast_to(prefix_mask_BxP[:, None], (B, T, P)), G, 0), own_mask], 2)
    heads_major = lambda x: jnp.asarray(x).transpose(0, 2, 1, 3)  # noqa: E731
    got = attention.shared_prefix_attention(
        jnp.asarray(q), heads_major(pk), heads_major(pv), jnp.asarray(np.broadcast_to(prefix_mask_BxP[:, None],
                                                                                      (B, T, P))),
        heads_major(k), heads_major(v), jnp.asarray(own_mask), softcap=softcap)
    if softcap is None:
        want = numpy_attention(q, full_k, full_v, full_mask)
    else:
        want = attention.reference_attention(jnp.asarray(q), jnp.asarray(full_k), jnp.asarray(full_v),
                                             jnp.asarray(full_mask), softcap=softcap)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)
