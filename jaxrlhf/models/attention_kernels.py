"""The fused attention kernels behind `models.attention.dot_product_attention(..., implementation=)`
(`model.attention`, IMPLEMENTATIONS):

- "default": `models.attention`'s blocked path (the only one with attention dropout);
- "xla": `jax.nn.dot_product_attention(implementation="xla")` with the boolean mask (the same maths);
- "cudnn": cuDNN flash attention through `jax.nn.dot_product_attention(implementation="cudnn")` (GPU,
  bfloat16/float16). Given the mask's structure (`key_mask_BxS`, `causal`), each row's real tokens are
  packed to the front in order (left padding and holes included: positions were applied before) and
  attended with `is_causal` + sequence lengths, then put back; without it (a KV-cache prefill, a sliding
  window) cuDNN gets the dense mask as a bias;
- "splash": the TPU Pallas Splash kernel per example (`jax.vmap`), key padding as `SegmentIds`, the causal
  or sliding-window mask as a static mask, sequences padded to 128-lane blocks; on a multi-device mesh it
  needs the mesh as context (`jax.set_mesh`) and runs under `shard_map`. `interpret=True` runs it in
  Pallas interpret mode (CPU tests);
- "auto": cuDNN on GPU (its packed path only: no dense mask, so no sliding window and no KV-cache call),
  Splash on TPU, when they can serve the call, else "xla"; "default" on CPU.

Whatever is asked, a one-token query (the decode step) and attention dropout take the default path, and
the models run a KV-cache prefill asked for "splash" on XLA (`cache_implementation`). An implementation
that cannot serve a call raises a one-line ValueError saying why (`auto` falls back): cuDNN off a GPU,
or in float32; Splash off a TPU, or where the mask has no structure it can express (layers that pick a
sliding window per layer, as some Qwen2 configs do); either with attention logit soft-capping (Gemma 2).
The kernels differ on pad query rows only (cuDNN's packed path returns zeros there, Splash attends them
to the other pads), which no caller reads; real rows and their gradients agree.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxrlhf.infra.sharding import BATCH_AXES

IMPLEMENTATIONS = ("auto", "default", "xla", "cudnn", "splash")  # model.attention
SPLASH_LANES = 128  # Splash pads sequences to a multiple of this (its block sizes)



def check_implementation(implementation: str) -> str:
    """`implementation` if it is one of IMPLEMENTATIONS (checked when a model is built), else ValueError."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention={implementation!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    return implementation


def select_implementation(implementation: str, q_BxTxHxD: jax.Array, k_BxSxKxD: jax.Array, *,
                          key_mask_BxS: jax.Array | None = None, causal: bool = False, window: int | None = None,
                          interpret: bool = False, softcap: float | None = None) -> str:
    """The implementation that serves this call: "default", "xla", "cudnn" or "splash" (module docstring).
    An explicit choice that cannot serve it raises a one-line ValueError; "auto" falls back. `softcap`
    (attention logit soft-capping) only the default and "xla" paths carry."""
    check_implementation(implementation)
    B, T = q_BxTxHxD.shape[:2]
    S = k_BxSxKxD.shape[1]
    if key_mask_BxS is not None and (T != S or tuple(key_mask_BxS.shape) != (B, S)):
        raise ValueError(f"key_mask_BxS {tuple(key_mask_BxS.shape)} describes a [B, T, T] self-attention mask; "
                         f"got T={T}, S={S}, B={B}")
    if implementation == "default" or T == 1:  # the decode step always takes today's path
        return "default"
    capped = (lambda: f"attention logit soft-capping (attn_logit_softcapping={softcap}) runs on the default and "
              f"xla paths only") if softcap is not None else (lambda: None)
    reasons = {"xla": lambda: None,
               "cudnn": lambda: capped() or _cudnn_refusal(q_BxTxHxD, S, key_mask_BxS, window),
               "splash": lambda: capped() or _splash_refusal(q_BxTxHxD, key_mask_BxS, causal, window, interpret)}
    if implementation == "auto":
        fused = {"gpu": "cudnn", "tpu": "splash"}.get(jax.default_backend())
        if fused is None:
            return "default"
        # auto takes cuDNN's packed path only: its backward with a mask tensor (bias) is reported to give NaN
        # dq when T % 128 == 64 and logsumexps are very negative (pytorch/pytorch#196678, huggingface/trl#7181)
        if fused == "cudnn" and (key_mask_BxS is None or window is not None):
            return "xla"
        return fused if reasons[fused]() is None else "xla"
    reason = reasons[implementation]()
    if reason is not None:
        raise ValueError(f"attention={implementation!r} cannot serve this call: {reason}")
    return implementation


def effective_window(window: int | None, S: int) -> int | None:
    """The sliding window, or None where it hides nothing (q - s < S <= window for every pair)."""
    return None if window is None or window >= S else int(window)


def _cudnn_refusal(q_BxTxHxD, S: int, key_mask_BxS, window) -> str | None:
    backend = jax.default_backend()
    if backend != "gpu":
        return f"cuDNN attention needs an NVIDIA GPU; this backend is {backend}"
    capability = getattr(jax.devices()[0], "compute_capability", None)
    if capability is None or _cudnn_version() is None:
        return "cuDNN was not found on this GPU"
    dtype = jnp.dtype(q_BxTxHxD.dtype)
    if dtype not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"cuDNN flash attention takes bfloat16 or float16, not {dtype} (model.dtype)"
    D = q_BxTxHxD.shape[-1]
    max_D = 256 if tuple(int(x) for x in str(capability).split(".")[:2]) >= (9, 0) else 128
    if D % 8 or D > max_D:
        return f"head_dim={D} must be a multiple of 8 and at most {max_D} on this GPU"
    T = q_BxTxHxD.shape[1]
    if (key_mask_BxS is None or window is not None) and (T % 2 or S % 2):
        return f"with a dense mask (a KV-cache call or a sliding window) cuDNN needs even lengths, got T={T}, S={S}"
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.shape.get("tensor", 1) > 1:
        return "its partitioner refuses heads sharded over the mesh's tensor axis"
    return None


def _cudnn_version() -> int | None:
    try:  # a private module; its absence or failure means no cuDNN here
        from jax._src.cudnn.fused_attention_stablehlo import check_cudnn_version
        return check_cudnn_version()
    except Exception:  # noqa: BLE001
        return None


def _splash_refusal(q_BxTxHxD, key_mask_BxS, causal: bool, window, interpret: bool) -> str | None:
    backend = jax.default_backend()
    if backend != "tpu" and not interpret:
        return f"Splash is a TPU kernel; this backend is {backend} (interpret=True runs it in Pallas interpret mode)"
    if key_mask_BxS is None:
        return ("Splash takes causal or bidirectional masking plus key padding, and this call has only a dense mask "
                "(a KV-cache call, or layers that choose a sliding window per layer)")
    if window is not None and not causal:
        return "a sliding window without causal masking"
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        if backend == "tpu" and not interpret and jax.device_count() > 1:
            return (f"on {jax.device_count()} devices the kernel runs under shard_map, which needs the mesh as "
                    f"context (jax.set_mesh(mesh))")
        return None
    split = math.prod(mesh.shape[a] for a in _mesh_batch_axes(mesh))
    if q_BxTxHxD.shape[0] % split:
        return f"batch {q_BxTxHxD.shape[0]} does not split over the mesh's batch axes ({split} ways)"
    return None


def _mesh_batch_axes(mesh) -> tuple[str, ...]:
    return tuple(a for a in BATCH_AXES if mesh.shape.get(a, 1) > 1)


def xla_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS) -> jax.Array:
    """`jax.nn.dot_product_attention(implementation="xla")` with the boolean mask: the same maths as the
    default path (float32 softmax, uniform weights on a row with no visible key)."""
    return nn_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS, "xla")


def nn_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS, implementation: str, *,
                 key_mask_BxS: jax.Array | None = None, causal: bool = False) -> jax.Array:
    """`jax.nn.dot_product_attention` with `implementation` ("xla" or "cudnn").

    Without `key_mask_BxS` the dense mask goes in as it is (cuDNN makes it a bias). With it (the mask is
    `key_mask`, and causal when `causal`), every row's real tokens are first packed to the front in order,
    so the mask becomes `is_causal` + sequence lengths (right padding, all cuDNN's flash kernel takes) for
    left padding and holes alike: a real query sees the real keys at or before its slot either way. The
    outputs go back to their slots; pad query rows come back as zeros."""
    D = q_BxTxHxD.shape[-1]
    scale = 1.0 / math.sqrt(D)
    if key_mask_BxS is None:
        return jax.nn.dot_product_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask=mask_BxTxS.astype(bool)[:, None],
                                            scale=scale, implementation=implementation)
    real_BxS = key_mask_BxS.astype(bool)
    order_BxS = jnp.argsort(~real_BxS, axis=1, stable=True)  # real slots first, each group in slot order
    inverse_BxS = jnp.argsort(order_BxS, axis=1)
    lengths_B = jnp.sum(real_BxS, axis=1, dtype=jnp.int32)
    q, k, v = (_permute(x, order_BxS, inverse_BxS) for x in (q_BxTxHxD, k_BxSxKxD, v_BxSxKxD))
    out = jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal, query_seq_lengths=lengths_B,
                                       key_value_seq_lengths=lengths_B, implementation=implementation)
    return _permute(out, inverse_BxS, order_BxS)


@jax.custom_vjp
def _permute(x_BxTx___, order_BxT, inverse_BxT):
    """x[b, order[b, t]]: a gather along T by a permutation whose backward is the gather by its inverse
    (autodiff would scatter-add, which on a GPU is atomics)."""
    return jnp.take_along_axis(x_BxTx___, order_BxT.reshape(order_BxT.shape + (1,) * (x_BxTx___.ndim - 2)), axis=1)


def _permute_fwd(x, order, inverse):
    return _permute(x, order, inverse), (order, inverse)


def _permute_bwd(residuals, d_out):
    order, inverse = residuals
    return _permute(d_out, inverse, order), None, None


_permute.defvjp(_permute_fwd, _permute_bwd)


def cache_implementation(implementation: str) -> str:
    """The implementation for a KV-cache call (sampling): Splash's static masks cannot follow the cache's
    write index, so an explicit "splash" prefill runs on XLA (the decode step takes the default path anyway)."""
    return "xla" if implementation == "splash" else implementation


def splash_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, key_mask_BxS, *, causal: bool, window: int | None = None,
                     interpret: bool = False) -> jax.Array:
    """The Pallas Splash kernel (TPU), one example at a time (`jax.vmap`): key padding as SegmentIds (real
    tokens 1, pads 0, so a pad query attends to pads only and no row is empty), the causal mask or the
    sliding window (q - window < s <= q) as its static mask. Sequences are padded to SPLASH_LANES with pads;
    q is scaled before the kernel, which does not scale. Under a mesh context (`jax.set_mesh`) it runs
    under `shard_map`, batch over the mesh's batch axes and heads over "tensor" where they divide."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    B, T, H, D = q_BxTxHxD.shape
    K = k_BxSxKxD.shape[2]
    padded = -(-T // SPLASH_LANES) * SPLASH_LANES
    block = next(b for b in (512, 256, 128) if padded % b == 0)

    def heads_major(x):  # [B, T, N, D] -> [B, N, padded, D]
        return jnp.pad(x, ((0, 0), (0, padded - T), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    q = heads_major(q_BxTxHxD * jnp.asarray(1.0 / math.sqrt(D), q_BxTxHxD.dtype))
    k, v = heads_major(k_BxSxKxD), heads_major(v_BxSxKxD)
    segment_BxP = jnp.pad(key_mask_BxS.astype(jnp.int32), ((0, 0), (0, padded - T)))

    def attend(q_bxHxPxD, k_bxKxPxD, v_bxKxPxD, segment_bxP):
        shape = (padded, padded)
        if window is not None:
            one = splash.LocalMask(shape, window_size=(window - 1, 0), offset=0)
        else:
            one = splash.CausalMask(shape) if causal else splash.FullMask(shape)
        sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                                  block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                                  block_kv_dq=block)
        kernel = splash.make_splash_mha(splash.MultiHeadMask([one] * q_bxHxPxD.shape[1]), block_sizes=sizes,
                                        head_shards=1, q_seq_shards=1, interpret=interpret)
        return jax.vmap(kernel)(q_bxHxPxD, k_bxKxPxD, v_bxKxPxD,
                                splash.SegmentIds(q=segment_bxP, kv=segment_bxP))

    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        P = jax.sharding.PartitionSpec
        batch = _mesh_batch_axes(mesh) or None
        tensor = mesh.shape.get("tensor", 1)
        heads = "tensor" if tensor > 1 and H % tensor == 0 and K % tensor == 0 else None
        spec = P(batch, heads, None, None)
        attend = jax.shard_map(attend, in_specs=(spec, spec, spec, P(batch, None)), out_specs=spec,
                               check_vma=False)
    out = attend(q, k, v, segment_BxP)
    return out.transpose(0, 2, 1, 3)[:, :T].astype(v_BxSxKxD.dtype)
