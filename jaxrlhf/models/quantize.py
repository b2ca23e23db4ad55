"""Frozen Linear kernels stored as int8 (QLoRA-style: a quantised base under float adapters).

Weight-only, symmetric, one scale per output column (absmax over the input dim, per stacked layer):
`kernel ~= q * scale` with q in [-127, 127]. A quarter of float32's memory, half of bf16's; the layer
dequantises to the compute dtype at use (`layers.Linear`), so the matmuls are those of the unquantised
model and only the weights' rounding differs. Written here rather than taken from a quantisation
library (qwix, which the issue names, rewrites dot_generals at trace time over a model's own modules):
the ~20 lines below act on jaxrlhf's own `Linear`, under its LoRA and its stacked layers.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from flax.nnx import filterlib

from jaxrlhf.models.layers import Linear

INT8_MAX = 127.0


def quantize_kernel(kernel_xIxO: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(q int8, scale float32 [..., 1, O]) with kernel ~= q * scale."""
    w = kernel_xIxO.astype(jnp.float32)
    scale = jnp.max(jnp.abs(w), axis=-2, keepdims=True) / INT8_MAX
    scale = jnp.where(scale > 0, scale, 1.0)  # an all-zero column stays zero
    return jnp.clip(jnp.round(w / scale), -INT8_MAX, INT8_MAX).astype(jnp.int8), scale


def quantize_frozen_linears(model: nnx.Module, trainable) -> int:
    """Stores the kernel of every `Linear` of `model` that the filter `trainable` leaves frozen as int8 with
    its scale (in place); returns how many. Scalar heads stay as they are (one column: nothing to save)."""
    is_trainable = filterlib.to_predicate(trainable)
    frozen = [node for path, node in nnx.iter_graph(model)  # collected first: the loop below changes the graph
              if isinstance(node, Linear) and node.out_features > 1 and node.kernel_scale is None
              and not is_trainable((*path, "kernel"), node.kernel)]
    for linear in frozen:
        q, scale = quantize_kernel(linear.kernel.get_value())
        linear.kernel = nnx.Param(q)
        linear.kernel_scale = nnx.Param(scale)
    return len(frozen)
