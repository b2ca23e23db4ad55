"""Key/value cache for decoder sampling, and the masks and positions every decoder family shares.

The cache is a plain pytree (jit, `lax.scan` and `while_loop` carry it as it is):

    cache = backbone.init_cache(batch, max_len)
    hidden, cache = backbone(prompt_ids_BxT, prompt_mask_BxT, cache=cache)        # prefill, T tokens
    hidden, cache = backbone(next_ids_Bx1, jnp.ones((B, 1), jnp.int32), cache=cache)  # one decode step

Every call writes its T new keys/values into slots [index, index + T) of all rows (rows stay aligned:
prompts are left-padded) and attends over the whole cache. A slot is visible to a query when it holds a
real token (`mask_BxS`) and is not to the right of the query's own slot, so the unwritten tail of the
cache never leaks in. Writing past `max_len` is not checked under jit (`dynamic_update_slice` clamps):
size the cache for prompt + new tokens.

Positions, when the caller gives none, continue from the number of real tokens already in each row,
so a left-padded prompt starts at position 0 on its first real token and decode steps carry on from
there; a token fed with mask 0 (a finished row) does not advance its row's position.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxrlhf.models.layers import positions_from_mask


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Stacked per-layer keys/values, which slots hold real tokens, and the next slot to write."""

    k_LxBxSxKxD: jax.Array
    v_LxBxSxKxD: jax.Array
    mask_BxS: jax.Array  # bool: the slot holds a real (non-pad) token
    index: jax.Array  # int32 scalar: the next slot to write (same for every row)

    @property
    def max_len(self) -> int:
        return self.mask_BxS.shape[1]

    def num_tokens_B(self) -> jax.Array:
        """Real tokens held per row (the position the next real token gets)."""
        return jnp.sum(self.mask_BxS, axis=-1, dtype=jnp.int32)


def init_cache(num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
               dtype: Any = jnp.float32) -> KVCache:
    shape = (num_layers, batch, max_len, num_kv_heads, head_dim)
    return KVCache(k_LxBxSxKxD=jnp.zeros(shape, dtype), v_LxBxSxKxD=jnp.zeros(shape, dtype),
                   mask_BxS=jnp.zeros((batch, max_len), jnp.bool_), index=jnp.zeros((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class AttentionInputs:
    """What one forward pass needs besides the hidden states (built once, shared by all layers)."""

    positions_BxT: jax.Array
    mask_BxTxS: jax.Array  # causal AND key padding (S = T without a cache, max_len with one)
    window_mask_BxTxS: jax.Array | None  # mask_BxTxS AND the sliding window, when there is one
    key_mask_BxS: jax.Array  # the cache's slot mask after this call's write
    index: jax.Array | int  # first slot this call writes


def attention_inputs(attention_mask_BxT: jax.Array, positions_BxT: jax.Array | None, cache: KVCache | None,
                     sliding_window: int | None = None) -> AttentionInputs:
    """Positions and attention masks for a call with or without a cache.

    The sliding window follows the HF convention on slot indices: a query at slot q sees slots
    q - window < s <= q.
    """
    T = attention_mask_BxT.shape[1]
    real_BxT = attention_mask_BxT.astype(jnp.bool_)
    if cache is None:
        index = 0
        key_mask_BxS = real_BxT
        if positions_BxT is None:
            positions_BxT = positions_from_mask(real_BxT)
    else:
        index = cache.index
        key_mask_BxS = jax.lax.dynamic_update_slice(cache.mask_BxS, real_BxT, (0, index))
        if positions_BxT is None:
            seen_B = cache.num_tokens_B()
            positions_BxT = jnp.maximum(seen_B[:, None] + jnp.cumsum(real_BxT, axis=-1, dtype=jnp.int32) - 1, 0)
    S = key_mask_BxS.shape[1]
    q_slot_T = index + jnp.arange(T, dtype=jnp.int32)
    k_slot_S = jnp.arange(S, dtype=jnp.int32)
    causal_TxS = k_slot_S[None, :] <= q_slot_T[:, None]
    mask_BxTxS = causal_TxS[None] & key_mask_BxS[:, None, :]
    window = None
    if sliding_window is not None:
        in_window_TxS = k_slot_S[None, :] > q_slot_T[:, None] - sliding_window
        window = mask_BxTxS & in_window_TxS[None]
    return AttentionInputs(positions_BxT.astype(jnp.int32), mask_BxTxS, window, key_mask_BxS, index)


def write(layer_cache_BxSxKxD: jax.Array, new_BxTxKxD: jax.Array, index: jax.Array | int) -> jax.Array:
    """Writes T new keys (or values) of one layer at slots [index, index + T)."""
    return jax.lax.dynamic_update_slice(layer_cache_BxSxKxD, new_BxTxKxD.astype(layer_cache_BxSxKxD.dtype),
                                        (0, index, 0, 0))


def write_layer(cache_LxBxSxKxD: jax.Array, new_BxTxKxD: jax.Array, layer: jax.Array | int,
                index: jax.Array | int) -> jax.Array:
    """Writes T new keys (or values) of layer `layer` into the stacked cache at slots [index, index + T).

    Carried through the layer scan, the stacked cache is updated in place: a decode step moves T slots
    a layer instead of rebuilding the whole cache (scan inputs/outputs) every step.
    """
    return jax.lax.dynamic_update_slice(cache_LxBxSxKxD, new_BxTxKxD[None].astype(cache_LxBxSxKxD.dtype),
                                        (layer, 0, index, 0, 0))


def updated_cache(cache: KVCache, k_LxBxSxKxD: jax.Array, v_LxBxSxKxD: jax.Array, inputs: AttentionInputs,
                  num_new: int) -> KVCache:
    return KVCache(k_LxBxSxKxD=k_LxBxSxKxD, v_LxBxSxKxD=v_LxBxSxKxD, mask_BxS=inputs.key_mask_BxS,
                   index=cache.index + num_new)
