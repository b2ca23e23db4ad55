"""Dynamic loss scaling for float16 compute (GPUs without fast bf16: T4, V100).

float16 gradients underflow below 6e-8: the loss is multiplied by a scale S before differentiation and
the gradients divided by S after, in float32. A step whose gradients overflowed (inf or nan while the
loss itself is finite) is skipped, not applied, and S halves; after `GROWTH_INTERVAL` good steps in a
row S doubles. Skipped steps are counted (`loss_scale_skipped`), never fatal: the non-finite guard of
`training.nonfinite` only fires on a non-finite loss. The ~20 lines are written here rather than taken
from jmp, whose last release is from 2023, so the scale lives in the train state and checkpoints with it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

MODES = ("auto", "dynamic", "none")
INITIAL_SCALE = 2.0**15
GROWTH_INTERVAL = 2000
MIN_SCALE = 1.0


def wanted(mode: str, compute_dtype) -> bool:
    """`optim.loss_scale`: auto scales float16 compute only (bf16 has float32's range); dynamic always."""
    if mode not in MODES:
        raise ValueError(f"optim.loss_scale must be one of {MODES}, got {mode!r}")
    return mode == "dynamic" or (mode == "auto" and compute_dtype == jnp.float16)


def init_state(scale: float = INITIAL_SCALE) -> dict:
    return {"scale": jnp.asarray(scale, jnp.float32), "good_steps": jnp.zeros((), jnp.int32)}


def scaled_value_and_grad(loss_fn: Callable) -> Callable:
    """`grad_fn(params, *rest, scale=S) -> ((loss, aux), gradients of S * loss)`, the loss and aux unscaled:
    `jax.value_and_grad(loss_fn, has_aux=True)` with the scale applied before the backward pass."""
    def scaled(*args, scale):
        loss, aux = loss_fn(*args)
        return loss * scale, (loss, aux)

    value_and_grad = jax.value_and_grad(scaled, has_aux=True)

    def grad_fn(*args, scale):
        (_, (loss, aux)), grads = value_and_grad(*args, scale=scale)
        return (loss, aux), grads

    return grad_fn


def adjust(state: dict, overflowed: jax.Array) -> dict:
    """The next scale: halved after an overflow (not below MIN_SCALE), doubled after GROWTH_INTERVAL good
    steps in a row."""
    good = jnp.where(overflowed, 0, state["good_steps"] + 1)
    grow = good >= GROWTH_INTERVAL
    scale = jnp.where(overflowed, jnp.maximum(state["scale"] / 2, MIN_SCALE),
                      jnp.where(grow, state["scale"] * 2, state["scale"]))
    return {"scale": scale, "good_steps": jnp.where(grow, 0, good).astype(jnp.int32)}


def account(state: dict, losses_finite: jax.Array, nonfinite: jax.Array) -> tuple[dict, dict]:
    """(the next scale state, the step's metrics) once a guarded update has run: `nonfinite` is its flag (a
    non-finite loss or gradient), `losses_finite` whether the loss(es) were finite. Overflowed gradients under
    finite losses are a skipped step (`loss_scale_skipped`) that halves the scale; only a non-finite loss
    stays `nonfinite`, for the trainer's guard."""
    overflowed = losses_finite & (nonfinite > 0)
    return adjust(state, overflowed), {"nonfinite": 1.0 - losses_finite.astype(jnp.float32),
                                       "loss_scale_skipped": overflowed.astype(jnp.float32),
                                       "loss_scale": state["scale"]}

