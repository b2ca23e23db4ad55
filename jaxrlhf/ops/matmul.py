"""`x @ w` in the inputs' (compute) dtype with a float32 result, in both directions.

JAX's own transpose of a bf16 x bf16 -> f32 product multiplies the float32 cotangent by the upcast
operand: float32 GEMMs in the backward pass (for an LM head, a fifth of a small model's FLOPs at half
rate or worse). Here the cotangent is rounded to the compute dtype first, as mixed-precision training
does for every other layer's, and both gradient products accumulate in float32 too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def matmul_f32(x_xD: jax.Array, w_DxV: jax.Array) -> jax.Array:
    """`x @ w` over the last axis of x, float32 out; `w` is cast to x's dtype (a float32 master at use)."""
    w_DxV = w_DxV.astype(x_xD.dtype)
    if x_xD.dtype == jnp.float32:
        return jnp.einsum("...d,dv->...v", x_xD, w_DxV)
    return _low_precision_matmul(x_xD, w_DxV)


@jax.custom_vjp
def _low_precision_matmul(x, w):
    return jnp.einsum("...d,dv->...v", x, w, preferred_element_type=jnp.float32)


def _fwd(x, w):
    return _low_precision_matmul(x, w), (x, w)


def _bwd(residuals, g):
    x, w = residuals
    g = g.astype(x.dtype)
    d_x = jnp.einsum("...v,dv->...d", g, w, preferred_element_type=jnp.float32)
    x_ND = x.reshape(-1, x.shape[-1])
    d_w = jnp.einsum("nd,nv->dv", x_ND, g.reshape(-1, g.shape[-1]), preferred_element_type=jnp.float32)
    return d_x.astype(x.dtype), d_w.astype(w.dtype)


_low_precision_matmul.defvjp(_fwd, _bwd)
