"""Key/value cache for decoder sampling, and the masks and positions every decoder family shares.

The cache is a plain pytree (jit, `lax.scan` and `while_loop` carry it as it is):

    cache = backbone.init_cache(batch, max_len)
    hidden, cache = backbone(prompt_ids_BxT, prompt_mask_BxT, cache=cache, kv_len=T)  # prefill, T tokens
    hidden, cache = backbone(next_ids_Bx1, jnp.ones((B, 1), jnp.int32), cache=cache)  # one decode step

Every call writes its T new keys/values into slots [index, index + T) of all rows (rows stay aligned:
prompts are left-padded) and attends over slots [0, kv_len) (`kv_len`: a static bound the caller
guarantees index + T <= kv_len; None: the whole cache). A slot is visible to a query when it holds a
real token (`mask_BxS`) and is not to the right of the query's own slot, so the unwritten tail of the
cache never leaks in. A call with kv_len == T starts on an empty cache (index 0): it attends over its
own keys only, as a call without a cache does, and writes them into the cache for later steps. Writing
past `max_len` is not checked under jit (`dynamic_update_slice` clamps): size the cache for prompt + new
tokens.

The keys and values are stored heads-major, [L, B, K, S, D], in the model's compute dtype: the layout
the attention's batched matmuls read (`attention.cached_attention`), so a decode step reads its layer's
prefix in place instead of transposing the cache every step.

A group of G samples of one prompt can share the prompt's keys/values instead of holding G copies
(`share_prefix`): the prefilled prompt cache becomes a read-only `PrefixKV` of B rows, and the cache's own
slots (B*G rows) hold only the new tokens; every call attends over the prefix and the own slots [0, kv_len)
in one softmax (`attention.shared_prefix_attention`). Slot indices (`index`, `kv_len`) then count the own
slots. Not for sliding-window models (their window would have to span both parts).

Positions, when the caller gives none, continue from the number of real tokens already in each row,
so a left-padded prompt starts at position 0 on its first real token and decode steps carry on from
there; a token fed with mask 0 (a finished row) does not advance its row's position.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxrlhf.models.attention import cached_attention, dot_product_attention, shared_prefix_attention
from jaxrlhf.models.layers import positions_from_mask


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PrefixKV:
    """Prompt keys/values shared by each group of consecutive cache rows (read, never written)."""

    k_LxBxKxPxD: jax.Array
    v_LxBxKxPxD: jax.Array
    mask_BxP: jax.Array  # bool: the slot holds a real (non-pad) token


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Stacked per-layer keys/values, which slots hold real tokens, and the next slot to write."""

    k_LxBxKxSxD: jax.Array
    v_LxBxKxSxD: jax.Array
    mask_BxS: jax.Array  # bool: the slot holds a real (non-pad) token
    index: jax.Array  # int32 scalar: the next slot to write (same for every row)
    prefix: PrefixKV | None = None  # a prompt shared by groups of rows (`share_prefix`), or none

    @property
    def max_len(self) -> int:
        return self.mask_BxS.shape[1]

    def repeat_rows(self, times: int) -> KVCache:
        """Each row `times` times in a row (row b -> rows b*times .. b*times + times - 1): a prompt prefilled
        once serves a group of samples."""
        return KVCache(jnp.repeat(self.k_LxBxKxSxD, times, axis=1), jnp.repeat(self.v_LxBxKxSxD, times, axis=1),
                       jnp.repeat(self.mask_BxS, times, axis=0), self.index)

    def share_prefix(self, times: int, new_slots: int) -> KVCache:
        """A cache for `times` rows per row of this one (row b -> rows b*times .. b*times + times - 1) that
        share all this cache's slots as their prefix and write `new_slots` slots of their own: what
        `repeat_rows` computes, without `times` copies of the prompt. For a cache the prompt filled (a
        prefill of P tokens into `init_cache(B, P)`): the slots are read as they are."""
        if self.prefix is not None:
            raise ValueError("share_prefix: the cache already has a shared prefix")
        L, B, K, _, D = self.k_LxBxKxSxD.shape
        own = init_cache(L, B * times, new_slots, K, D, self.k_LxBxKxSxD.dtype)
        return dataclasses.replace(own, prefix=PrefixKV(self.k_LxBxKxSxD, self.v_LxBxKxSxD, self.mask_BxS))

    def take_rows(self, rows_r: jax.Array) -> KVCache:
        """The cache of rows `rows_r` only (a decode batch that drops its finished rows). The picked rows need
        not come in groups any more, so a shared prefix is copied into each row's slots, in front of its own:
        the slot indices then count from the prompt's first slot again."""
        take = functools.partial(jnp.take, indices=rows_r, axis=1)
        if self.prefix is None:
            return KVCache(take(self.k_LxBxKxSxD), take(self.v_LxBxKxSxD), self.mask_BxS[rows_r], self.index)
        pre = self.prefix
        prompt_r = rows_r // (self.mask_BxS.shape[0] // pre.mask_BxP.shape[0])
        k, v = (jnp.concatenate([jnp.take(p, prompt_r, axis=1), take(own)], axis=3)
                for p, own in ((pre.k_LxBxKxPxD, self.k_LxBxKxSxD), (pre.v_LxBxKxPxD, self.v_LxBxKxSxD)))
        mask = jnp.concatenate([pre.mask_BxP[prompt_r], self.mask_BxS[rows_r]], axis=1)
        return KVCache(k, v, mask, self.index + pre.mask_BxP.shape[1])

    def num_tokens_B(self) -> jax.Array:
        """Real tokens held per row (the position the next real token gets)."""
        own_B = jnp.sum(self.mask_BxS, axis=-1, dtype=jnp.int32)
        if self.prefix is None:
            return own_B
        prompt_B = jnp.sum(self.prefix.mask_BxP, axis=-1, dtype=jnp.int32)
        return own_B + jnp.repeat(prompt_B, own_B.shape[0] // prompt_B.shape[0])


def init_cache(num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
               dtype: Any = jnp.float32) -> KVCache:
    shape = (num_layers, batch, num_kv_heads, max_len, head_dim)
    return KVCache(k_LxBxKxSxD=jnp.zeros(shape, dtype), v_LxBxKxSxD=jnp.zeros(shape, dtype),
                   mask_BxS=jnp.zeros((batch, max_len), jnp.bool_), index=jnp.zeros((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class AttentionInputs:
    """What one forward pass needs besides the hidden states (built once, shared by all layers)."""

    positions_BxT: jax.Array
    mask_BxTxS: jax.Array  # causal AND key padding over the S = kv_len slots attended (S = T: own keys only)
    window_mask_BxTxS: jax.Array | None  # mask_BxTxS AND the sliding window, when there is one
    key_mask_BxS: jax.Array  # which of the S attended slots hold real tokens
    index: jax.Array | int  # first slot this call writes
    cache_mask_BxS: jax.Array | None = None  # the cache's slot mask after this call's write (None: no cache)
    kv_len: int | None = None  # the cache slots [0, kv_len) attended (static; None: no cache)
    segmented: bool = False  # rows of a shared prompt and its responses (`segments_BxT`)
    prefix: PrefixKV | None = None  # the cache's shared prefix (`KVCache.share_prefix`), attended in full
    prefix_mask_BxTxP: jax.Array | None = None  # which prefix slots each query sees, per prompt (B = rows / G)

    @property
    def own_keys(self) -> bool:
        """True when the call attends over its own T keys only: no cache, or a prefill of an empty cache
        (kv_len == T) without a shared prefix. Its mask is then a self-attention mask with structure (fused
        kernels can serve it)."""
        return self.kv_len is None or (self.kv_len == self.mask_BxTxS.shape[1] and self.prefix is None)

    @property
    def structured(self) -> bool:
        """True when the mask is causal + key padding (+ a window) over the call's own keys, which fused
        kernels that take no dense mask can rebuild; a cache or segments leave only the dense mask."""
        return self.own_keys and not self.segmented


def attention_inputs(attention_mask_BxT: jax.Array, positions_BxT: jax.Array | None, cache: KVCache | None,
                     sliding_window: int | None = None, kv_len: int | None = None,
                     segments_BxT: jax.Array | None = None) -> AttentionInputs:
    """Positions and attention masks for a call with or without a cache.

    `segments_BxT` (no cache; `positions_BxT` given): rows of one prompt (segment 0) followed by its responses
    (segments 1, 2, ...; `data.shared_prompt`): a token sees the earlier tokens of the prompt and of its own
    segment, and the window is measured in positions, so each response is computed as if alone after the prompt.

    With a cache the call attends over slots [0, kv_len) (static; None: the whole cache); the caller
    guarantees index + T <= kv_len, so kv_len == T means a prefill of an empty cache (index 0).
    The sliding window follows the HF convention on slot indices: a query at slot q sees slots
    q - window < s <= q.
    """
    T = attention_mask_BxT.shape[1]
    real_BxT = attention_mask_BxT.astype(jnp.bool_)
    given_positions = positions_BxT is not None
    cache_mask_BxS = None
    prefix = None if cache is None else cache.prefix
    if prefix is not None and sliding_window is not None:
        raise ValueError("a KV cache with a shared prefix does not serve sliding-window attention")
    if cache is None:
        index = 0
        key_mask_BxS = real_BxT
        if positions_BxT is None:
            positions_BxT = positions_from_mask(real_BxT)
    else:
        index = cache.index
        kv_len = cache.max_len if kv_len is None else int(kv_len)
        if not T <= kv_len <= cache.max_len:
            raise ValueError(f"kv_len={kv_len} must lie in [T={T}, max_len={cache.max_len}]")
        cache_mask_BxS = jax.lax.dynamic_update_slice(cache.mask_BxS, real_BxT, (0, index))
        key_mask_BxS = real_BxT if kv_len == T else cache_mask_BxS[:, :kv_len]
        if positions_BxT is None:
            seen_B = cache.num_tokens_B()
            positions_BxT = jnp.maximum(seen_B[:, None] + jnp.cumsum(real_BxT, axis=-1, dtype=jnp.int32) - 1, 0)
    S = key_mask_BxS.shape[1]
    q_slot_T = (0 if S == T else index) + jnp.arange(T, dtype=jnp.int32)  # S == T: index is 0
    k_slot_S = jnp.arange(S, dtype=jnp.int32)
    causal_TxS = k_slot_S[None, :] <= q_slot_T[:, None]
    mask_BxTxS = causal_TxS[None] & key_mask_BxS[:, None, :]
    window = None
    if segments_BxT is not None:
        if cache is not None or not given_positions:
            raise ValueError("segments_BxT need their positions_BxT and no KV cache")
        seg_BxT = jnp.asarray(segments_BxT, jnp.int32)
        same_BxTxS = (seg_BxT[:, None, :] == 0) | (seg_BxT[:, None, :] == seg_BxT[:, :, None])
        mask_BxTxS = mask_BxTxS & same_BxTxS
        if sliding_window is not None:
            pos = positions_BxT.astype(jnp.int32)
            window = mask_BxTxS & (pos[:, None, :] > pos[:, :, None] - sliding_window)
    elif sliding_window is not None:
        in_window_TxS = k_slot_S[None, :] > q_slot_T[:, None] - sliding_window
        window = mask_BxTxS & in_window_TxS[None]
    prefix_mask_BxTxP = None
    if prefix is not None:  # every prefix slot precedes every query: only its padding is masked
        prefix_mask_BxTxP = jnp.broadcast_to(prefix.mask_BxP[:, None, :], (prefix.mask_BxP.shape[0], T,
                                                                          prefix.mask_BxP.shape[1]))
    return AttentionInputs(positions_BxT.astype(jnp.int32), mask_BxTxS, window, key_mask_BxS, index,
                           cache_mask_BxS, kv_len, segments_BxT is not None, prefix, prefix_mask_BxTxP)


def write_layer(cache_LxBxKxSxD: jax.Array, new_BxTxKxD: jax.Array, layer: jax.Array | int,
                index: jax.Array | int) -> jax.Array:
    """Writes T new keys (or values) of layer `layer` into the stacked cache at slots [index, index + T).

    Carried through the layer scan (or the unrolled layers), the stacked cache is updated in place: a
    call moves T slots a layer instead of rebuilding the whole cache (scan inputs/outputs) every step.
    Only the T new slots are transposed to the heads-major layout.
    """
    new_1xBxKxTxD = new_BxTxKxD.transpose(0, 2, 1, 3)[None].astype(cache_LxBxKxSxD.dtype)
    return jax.lax.dynamic_update_slice(cache_LxBxKxSxD, new_1xBxKxTxD, (layer, 0, 0, index, 0))


def read_layer(cache_LxBxKxSxD: jax.Array, layer: jax.Array | int, kv_len: int) -> jax.Array:
    """Slots [0, kv_len) of layer `layer`, [B, K, kv_len, D]: heads-major as the attention reads them."""
    _, B, K, _, D = cache_LxBxKxSxD.shape
    return jax.lax.dynamic_slice(cache_LxBxKxSxD, (layer, 0, 0, 0, 0), (1, B, K, kv_len, D))[0]


def attend_and_write(q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array, mask_BxTxS: jax.Array,
                     layer_kv: tuple | None, inputs: AttentionInputs, implementation: str,
                     structure: dict | None = None, softcap: float | None = None):
    """One layer's attention with or without a cache, shared by the decoder families.

    Over this call's own keys ([B, T, K, D]: no cache, or a prefill) it is `dot_product_attention` with
    the mask's `structure` (its key_mask_BxS, causal, window: for the fused kernels); on a filled cache it is
    `cached_attention` over the slots [0, kv_len) in their heads-major layout. `layer_kv` is
    (k_LxBxKxSxD, v_LxBxKxSxD, layer) or None. `softcap`: attention logit soft-capping (Gemma 2), or None.
    Returns (out_BxTxHxD, (k, v) cache or None).
    """
    dtype = q_BxTxHxD.dtype

    def own_keys():
        return dot_product_attention(q_BxTxHxD, k_BxTxKxD.astype(dtype), v_BxTxKxD.astype(dtype), mask_BxTxS,
                                     implementation=implementation, softcap=softcap, **(structure or {}))

    if layer_kv is None:
        return own_keys(), None
    k_all, v_all, layer = layer_kv
    k_all = write_layer(k_all, k_BxTxKxD, layer, inputs.index)
    v_all = write_layer(v_all, v_BxTxKxD, layer, inputs.index)
    if inputs.own_keys:  # a prefill: its own keys, then the write for the decode steps
        return own_keys(), (k_all, v_all)
    k_BxKxSxD, v_BxKxSxD = (read_layer(c, layer, inputs.kv_len).astype(dtype) for c in (k_all, v_all))
    if inputs.prefix is not None:  # the group's shared prompt, then the row's own slots
        prefix, P = inputs.prefix, inputs.prefix.mask_BxP.shape[1]
        prefix_k, prefix_v = (read_layer(c, layer, P).astype(dtype) for c in (prefix.k_LxBxKxPxD, prefix.v_LxBxKxPxD))
        out = shared_prefix_attention(q_BxTxHxD, prefix_k, prefix_v, inputs.prefix_mask_BxTxP, k_BxKxSxD, v_BxKxSxD,
                                      mask_BxTxS, softcap=softcap)
    else:
        out = cached_attention(q_BxTxHxD, k_BxKxSxD, v_BxKxSxD, mask_BxTxS, implementation=implementation,
                               softcap=softcap)
    return out, (k_all, v_all)


def updated_cache(cache: KVCache, k_LxBxKxSxD: jax.Array, v_LxBxKxSxD: jax.Array, inputs: AttentionInputs,
                  num_new: int) -> KVCache:
    return KVCache(k_LxBxKxSxD=k_LxBxKxSxD, v_LxBxKxSxD=v_LxBxKxSxD, mask_BxS=inputs.cache_mask_BxS,
                   index=cache.index + num_new, prefix=cache.prefix)
