"""Which dtype each role computes and stores in (DESIGN.md, "Precision").

- compute dtype (`model.dtype`): `auto` is bfloat16 on GPU/TPU and float32 on CPU, where XLA's bf16
  matmuls are slower than its f32 ones;
- trainable parameters (`model.param_dtype`, float32 by default): masters cast to the compute dtype at
  use, as are AdamW's moments, which take the parameters' dtype (a 1e-6-learning-rate step moves a 0.02
  weight by 5e-5, below bf16's resolution at that size: in bf16 it would be lost);
- frozen parameters (`model.frozen_dtype`: a LoRA base, a frozen backbone, the reference model, PPO's
  reward model): `auto` stores them in the compute dtype, which halves their memory in a bf16 run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import filterlib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
AUTO = "auto"


def dtype_of(name: str):
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def compute_dtype(name: str):
    """`auto`: bfloat16 off-CPU, float32 on CPU; else the named dtype."""
    if name == AUTO:
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return dtype_of(name)


def storage_dtype(name: str, compute):
    """`auto`: the compute dtype (for weights that never train); else the named dtype."""
    return compute if name == AUTO else dtype_of(name)


def cast_frozen(model: nnx.Module, trainable, dtype) -> int:
    """Casts the floating parameters of `model` that the filter `trainable` does not select to `dtype`, in
    place and one at a time (each old copy is freed before the next is made; shardings are kept). Returns
    how many it cast."""
    is_trainable = filterlib.to_predicate(trainable)
    cast = 0
    for path, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Param) or is_trainable(path, node):
            continue
        x = node.get_value()
        if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
            node.set_value(x.astype(dtype))
            cast += 1
    return cast
