"""Gradient accumulation that keeps means exact, and the optimiser update of a train state.

Loss functions return an unreduced sum plus aux sums (token or pair counts among them). Micro-batches
are a `lax.scan` that adds sums and gradients; the caller divides once by the total count, so a mean
over 4 micro-batches equals the mean over one big batch even when they hold different numbers of
tokens or padding rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxrlhf.training import loss_scale


def summed_gradients(grad_fn: Callable, params: Any, frozen: Any, batch: dict, rng: jax.Array,
                     micro_steps: int = 1) -> tuple[Any, jax.Array, dict]:
    """(gradient sum, loss sum, aux sums) of `grad_fn(params, frozen, micro_batch, key)` over the batch.

    grad_fn is `jax.value_and_grad(loss_fn, has_aux=True)` for a `loss_fn -> (loss_sum, aux)`; the
    batch's leading dim is cut into `micro_steps` equal micro-batches, each with its own key.
    """
    micro = jax.tree_util.tree_map(lambda x: x.reshape((micro_steps, x.shape[0] // micro_steps) + x.shape[1:]), batch)
    keys = jax.random.split(rng, micro_steps)

    def accumulate(carry, xs):
        mb, key = xs
        (loss_sum, aux), grads = grad_fn(params, frozen, mb, key)
        g_acc, l_acc, a_acc = carry
        return (jax.tree_util.tree_map(jnp.add, g_acc, grads), l_acc + loss_sum,
                jax.tree_util.tree_map(jnp.add, a_acc, aux)), None

    first = jax.tree_util.tree_map(lambda x: x[0], micro)
    aux_shapes = jax.eval_shape(grad_fn, params, frozen, first, keys[0])[0][1]
    zeros_aux = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shapes)
    init = (jax.tree_util.tree_map(jnp.zeros_like, params), jnp.zeros((), jnp.float32), zeros_aux)
    (grads, loss_sum, aux), _ = jax.lax.scan(accumulate, init, (micro, keys))
    return grads, loss_sum, aux


def scale_of(state: dict) -> jax.Array | float:
    """The loss scale of a train state (1.0 without loss scaling)."""
    return state["loss_scale"]["scale"] if "loss_scale" in state else 1.0


def guarded_update(params: Any, opt_state: Any, grads: Any, optimizer: optax.GradientTransformation,
                   loss: jax.Array, skip: jax.Array | None = None) -> tuple[Any, Any, jax.Array]:
    """(params, opt_state, nonfinite): one optimiser step, or none when the loss or a gradient is not finite
    (or `skip` is true: a step the caller rejects, such as PPO's approximate-KL early stop).

    A nan or inf never reaches the parameters or the Adam moments, so the state stays good whatever the
    host decides (stop or skip, `training.nonfinite`); `nonfinite` is 1.0 for a non-finite step.
    """
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
    take = finite if skip is None else finite & ~skip

    def step(state):
        p, s = state
        updates, s = optimizer.update(grads, s, p)
        # Back to the dtypes the state came in: with bf16 parameters (model.param_dtype) the mean gradients
        # are float32, and so would be the moments optax computes from them.
        return jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), (optax.apply_updates(p, updates), s),
                                      state)

    if jax.default_backend() == "gpu":
        # A select: XLA:GPU reads a cond's predicate back on the host (a sync inside every step) and splits
        # CUDA-graph capture there; the select fuses into the optimiser's elementwise pass.
        new = step((params, opt_state))
        new_params, new_opt_state = jax.tree_util.tree_map(lambda n, o: jnp.where(take, n, o), new,
                                                           (params, opt_state))
    else:
        # A cond, not a `where` over the result: the skipped branch costs nothing, and the taken one no extra
        # pass over parameters and moments (docs/benchmarks.md, "Measurements behind code choices").
        new_params, new_opt_state = jax.lax.cond(take, step, lambda state: state, (params, opt_state))
    return new_params, new_opt_state, 1.0 - finite.astype(jnp.float32)


def apply_update(state: dict, grads: Any, optimizer: optax.GradientTransformation,
                 loss: jax.Array) -> tuple[dict, dict]:
    """(the next {"params", "opt_state", "step"[, "loss_scale"]}, metrics) after one guarded step on mean
    gradients. metrics["nonfinite"] is 1.0 for a step with a non-finite loss or gradient. Under loss
    scaling (a "loss_scale" entry, `training.loss_scale`; the gradients come unscaled) only a non-finite
    loss counts there: overflowed gradients skip the step, halve the scale and count in
    "loss_scale_skipped"."""
    params, opt_state, nonfinite = guarded_update(state["params"], state["opt_state"], grads, optimizer, loss)
    new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    if "loss_scale" not in state:
        return new, {"nonfinite": nonfinite}
    new["loss_scale"], metrics = loss_scale.account(state["loss_scale"], jnp.isfinite(loss), nonfinite)
    return new, metrics
