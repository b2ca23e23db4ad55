"""Building blocks shared by every model family.

Parameters are stored float32 (`param_dtype`) and cast to the compute `dtype` at use, so a bf16 run
keeps float32 master weights. Linear kernels are [in, out] (PyTorch stores [out, in]; the importer
transposes). Every `Linear` can carry a LoRA adapter, so each family gets LoRA without its own code.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.ops.matmul import matmul_f32


class LoRAParam(nnx.Param):
    """A LoRA factor; a distinct type so optimisers and filters can pick out adapters."""


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Which Linear layers get adapters (regexes searched in their names, e.g. "q_proj|v_proj")."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = "q_proj|k_proj|v_proj|o_proj"

    def for_layer(self, name: str) -> LoRAConfig | None:
        return self if re.search(self.targets, name) else None


def lora_for(lora: LoRAConfig | None, name: str) -> LoRAConfig | None:
    """The adapter config for the layer called `name`, or None (no LoRA, or not a target)."""
    return None if lora is None else lora.for_layer(name)


def check_lora_targets(lora: LoRAConfig | None, names: tuple[str, ...], family: str) -> None:
    """A LoRA config that adapts nothing is a silent no-op fine-tune: refuse it."""
    if lora is not None and not any(lora.for_layer(n) for n in names):
        raise ValueError(f"LoRA targets {lora.targets!r} match no {family} layer; layer names are {names}")


def split_keys(rng: jax.Array | None, n: int) -> list:
    """n dropout keys from one (or n Nones when dropout is off)."""
    return [None] * n if rng is None else list(jax.random.split(rng, n))


def keep_mask(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """Bernoulli(1 - rate) booleans of `shape`. A threefry key is re-wrapped as an "rbg" key first: its bits
    come from one XLA RngBitGenerator op, several times faster on CPU than threefry for attention-sized
    masks, which are most of what dropout costs a step (docs/benchmarks.md, "Measurements behind code choices")."""
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):  # a raw uint32 key (jax.random.PRNGKey)
        rng = jax.random.wrap_key_data(rng)
    if str(jax.random.key_impl(rng)) == "threefry2x32":
        rng = jax.random.wrap_key_data(jnp.tile(jax.random.key_data(rng), 2), impl="rbg")
    return jax.random.bernoulli(rng, 1.0 - rate, shape)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout: zero each element with probability `rate`, scale the rest by 1 / (1 - rate), so the
    expectation is unchanged. Identity when `rate` is 0 or `rng` is None (evaluation)."""
    if rate <= 0.0 or rng is None:
        return x
    return jnp.where(keep_mask(rng, rate, x.shape), x / (1.0 - rate), 0.0).astype(x.dtype)


def check_dropout_rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    return rate


def _normal(rngs: nnx.Rngs, shape, std, dtype):
    return std * jax.random.normal(rngs.params(), shape, dtype)


class Linear(nnx.Module):
    """y = x @ kernel + bias, plus an optional low-rank update (alpha / rank) * dropout(x) @ A @ B."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True, rngs: nnx.Rngs,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, init_std: float = 0.02,
                 lora: LoRAConfig | None = None, out_dtype: Any = None):
        self.in_features, self.out_features = in_features, out_features
        self.dtype = dtype
        # None: the compute dtype. float32 for scalar heads: a reward rounded to bf16 moves by up to 2^-8
        # of itself, so the product accumulates and the bias adds in float32.
        self.out_dtype = out_dtype
        self.kernel = nnx.Param(_normal(rngs, (in_features, out_features), init_std, param_dtype))
        self.kernel_scale = nnx.data(None)  # set when the kernel is stored as int8 (models.quantize)
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None
        # Adapters are created with the layer (not patched in later) so stacked layers get stacked
        # adapters. B starts at zero: the adapted model equals the base model at step 0.
        self.lora_a = nnx.data(None if lora is None else LoRAParam(
            _normal(rngs, (in_features, lora.rank), 1.0 / math.sqrt(in_features), param_dtype)))
        self.lora_b = nnx.data(None if lora is None else LoRAParam(jnp.zeros((lora.rank, out_features), param_dtype)))
        self.lora_scale = 0.0 if lora is None else lora.alpha / lora.rank
        self.lora_dropout = 0.0 if lora is None else check_dropout_rate(lora.dropout)

    def merge_lora(self) -> None:
        """Fold the adapter into the kernel (for export; an int8 kernel is dequantised to float32 first) and
        drop it."""
        if self.kernel_scale is not None:
            self.kernel = nnx.Param(self.kernel_value(jnp.float32))
            self.kernel_scale = nnx.data(None)
        if self.lora_a is None:
            return
        self.kernel[...] = self.kernel[...] + self.lora_scale * (self.lora_a[...] @ self.lora_b[...])
        self.lora_a = self.lora_b = nnx.data(None)

    def kernel_value(self, dtype) -> jax.Array:
        """The kernel in `dtype` (dequantised when it is stored as int8)."""
        kernel = self.kernel[...]
        if self.kernel_scale is not None:  # int8 with a float scale per output column
            return kernel.astype(dtype) * self.kernel_scale[...].astype(dtype)
        return kernel.astype(dtype)

    def __call__(self, x: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
        x = x.astype(self.dtype)
        out_dtype = self.out_dtype or self.dtype
        kernel = self.kernel_value(self.dtype)
        y = matmul_f32(x, kernel) if out_dtype == jnp.float32 else x @ kernel
        if self.bias is not None:
            y = y + self.bias[...].astype(out_dtype)
        if self.lora_a is not None and not _ADAPTERS_OFF.get():
            xa = dropout(x, self.lora_dropout, dropout_rng)
            y = y + self.lora_scale * ((xa @ self.lora_a[...].astype(self.dtype)) @ self.lora_b[...].astype(self.dtype))
        return y


# Set by `adapters_off`, read while a model is traced.
_ADAPTERS_OFF: contextvars.ContextVar = contextvars.ContextVar("adapters_off", default=False)


@contextlib.contextmanager
def adapters_off():
    """Within, every `Linear` skips its LoRA adapter, so a LoRA model computes as its frozen base: PPO's
    reference without a second copy of the weights. Acts where the model is traced (inside a jitted
    function, around the forward pass)."""
    token = _ADAPTERS_OFF.set(True)
    try:
        yield
    finally:
        _ADAPTERS_OFF.reset(token)


class Embed(nnx.Module):
    def __init__(self, num_embeddings: int, features: int, *, rngs: nnx.Rngs,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, init_std: float = 0.02):
        self.dtype = dtype
        self.embedding = nnx.Param(_normal(rngs, (num_embeddings, features), init_std, param_dtype))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
        self.eps, self.dtype = eps, dtype
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)  # statistics in float32 whatever the compute dtype
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
        self.eps, self.dtype = eps, dtype
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(self.dtype)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def positions_from_mask(mask_BxT: jax.Array) -> jax.Array:
    """Position ids that start at 0 on the first real token, for left or right padding."""
    return jnp.maximum(jnp.cumsum(mask_BxT.astype(jnp.int32), axis=-1) - 1, 0)


def create_stacked(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs) -> nnx.Module:
    """Builds `num_layers` copies of a layer whose parameters carry a leading layer axis."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(r: nnx.Rngs):
        return make_layer(r)

    return make(rngs)


# What each layer keeps for the backward pass (`model.remat`); the rest is recomputed there. "full" keeps
# only each layer's input; the dots policies keep matmul outputs too: all of them, or only those without
# batch dimensions (the weight projections, not attention's q.k and p.v), "a useful heuristic for
# transformers" in JAX's docs. Memory per policy: infra.planner.
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": None,  # jax.checkpoint's default: nothing saveable
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_name(remat: bool | str) -> str:
    """A `model.remat` value as a policy name; True/False (configs from before the policies) are full/none."""
    if isinstance(remat, bool) or str(remat).lower() in ("true", "false"):
        return "full" if str(remat).lower() == "true" else "none"
    if remat not in REMAT_POLICIES:
        raise ValueError(f"model.remat must be one of {sorted(REMAT_POLICIES)}, got {remat!r}")
    return remat


def apply_stacked(layers: nnx.Module, h: Any, body: Callable, *, scan: bool = True, remat: bool | str = False,
                  xs: Any = None) -> tuple[Any, Any]:
    """Runs `body(layer, h, x) -> (h, y)` over the stacked layers, each rematerialised by the `remat`
    policy (REMAT_POLICIES).

    scan=True compiles one block and loops it (`lax.scan`); scan=False unrolls a Python loop over the
    same stacked parameters, so both modes share one parameter layout (and one importer).
    """
    graphdef, state = nnx.split(layers)
    sliced = _SLICED_ONCE.get()
    sliced = sliced[1] if sliced is not None and sliced[0] is layers else None

    def step(carry, layer_and_x):
        layer_state, x = layer_and_x
        layer = nnx.merge(graphdef, layer_state)
        return body(layer, carry, x)

    policy = remat_name(remat)
    if policy != "none":
        step = jax.checkpoint(step, prevent_cse=not scan, policy=REMAT_POLICIES[policy])
    if scan and sliced is None:
        return jax.lax.scan(step, h, (state, xs))
    return _unrolled(step, unstack(state) if sliced is None else sliced, h, xs)


def unstack(tree: Any) -> list[Any]:
    """The layers of a stacked pytree, by one `lax.split` per leaf. Its gradient is one concatenate; with
    `a[i]` per layer it was a zero-padded copy of the whole stack per layer, summed (30 of them for
    SmolLM2), which made unrolled training steps twice as slow as scanned ones."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    n = leaves[0].shape[0]
    parts = [[p.reshape(p.shape[1:]) for p in jax.lax.split(a, [1] * n)] for a in leaves]
    return [jax.tree_util.tree_unflatten(treedef, [p[i] for p in parts]) for i in range(n)]


def split_last_layer(layers: nnx.Module) -> tuple[nnx.Module | None, nnx.Module]:
    """(the stacked layers but the last, None for a one-layer stack; the last layer as a module), by one
    `lax.split` per leaf (gradient: one concatenate), for a model that runs its last layer differently."""
    graphdef, state = nnx.split(layers)
    n = jax.tree_util.tree_leaves(state)[0].shape[0]
    if n == 1:
        return None, nnx.merge(graphdef, jax.tree_util.tree_map(lambda a: a[0], state))
    parts = jax.tree_util.tree_map(lambda a: jax.lax.split(a, [n - 1, 1]), state)
    is_pair = lambda x: isinstance(x, list)
    front = jax.tree_util.tree_map(lambda p: p[0], parts, is_leaf=is_pair)
    last = jax.tree_util.tree_map(lambda p: p[1][0], parts, is_leaf=is_pair)
    return nnx.merge(graphdef, front), nnx.merge(graphdef, last)


def split_last_layer_inputs(xs: Any) -> tuple[Any, Any]:
    """Per-layer scan inputs (leading axis = layer) cut as `split_last_layer` cuts the layers."""
    return jax.tree_util.tree_map(lambda a: a[:-1], xs), jax.tree_util.tree_map(lambda a: a[-1], xs)


# Set by `layers_sliced_once`: (the stacked layers module, its per-layer states).
_SLICED_ONCE: contextvars.ContextVar = contextvars.ContextVar("layers_sliced_once", default=None)


@contextlib.contextmanager
def layers_sliced_once(layers: nnx.Module):
    """Within, `apply_stacked(layers, ...)` unrolls over per-layer parameters sliced here, once, instead of
    slicing the stacked parameters at every call. For a decode loop: XLA's CPU backend copies each layer's
    weights out of the stack at each slice, which at one token per step costs about as much as the matmuls
    (docs/benchmarks.md); slicing before the loop makes those copies once per `generate` call. It holds a
    second copy of the layer weights while it lasts."""
    graphdef, state = nnx.split(layers)
    per_layer = unstack(state)
    token = _SLICED_ONCE.set((layers, per_layer))
    try:
        yield
    finally:
        _SLICED_ONCE.reset(token)


def _unrolled(step: Callable, per_layer: list, h: Any, xs: Any) -> tuple[Any, Any]:
    xs_per_layer = unstack(xs) if jax.tree_util.tree_leaves(xs) else [xs] * len(per_layer)
    ys = []
    for layer_and_x in zip(per_layer, xs_per_layer):
        h, y = step(h, layer_and_x)
        ys.append(y)
    return h, None if ys[0] is None else jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ys)
