"""Optimiser and learning-rate schedule from an `optim` config block.

AdamW behind global-norm clipping; weight decay skips vectors (biases, norm scales), the usual
choice for transformers.
"""

from __future__ import annotations

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec

SCHEDULES = ("cosine", "linear", "constant")


def make_schedule(lr: float, total_steps: int, warmup_steps: int, kind: str) -> optax.Schedule:
    if kind not in SCHEDULES:
        raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {kind!r}")
    warmup_steps = min(max(warmup_steps, 0), max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup_steps, 1)
    if kind == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps)
    elif kind == "linear":
        decay = optax.linear_schedule(lr, 0.0, decay_steps)
    else:
        decay = optax.constant_schedule(lr)
    if warmup_steps == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), decay], [warmup_steps])


def make_optimizer(optim_cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    warmup = optim_cfg.warmup_steps if optim_cfg.warmup_steps >= 0 else int(optim_cfg.warmup_ratio * total_steps)
    schedule = make_schedule(optim_cfg.learning_rate, total_steps, warmup, optim_cfg.schedule)
    decay_mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim > 1, params)
    parts = []
    if optim_cfg.max_grad_norm and optim_cfg.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(optim_cfg.max_grad_norm))
    parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                             weight_decay=optim_cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts), schedule


def init_opt_state(optimizer: optax.GradientTransformation, params):
    """`optimizer.init(params)` with each moment sharded like its parameter. A bare jit would leave the
    zeros, which depend on no input's values, whole on one device."""
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves or not all(isinstance(getattr(x, "sharding", None), NamedSharding) for x in leaves):
        return jax.jit(optimizer.init)(params)
    scalar = NamedSharding(leaves[0].sharding.mesh, PartitionSpec())
    shardings = optax.tree_map_params(optimizer, lambda _, s: s, jax.eval_shape(optimizer.init, params),
                                      jax.tree_util.tree_map(lambda x: x.sharding, params),
                                      transform_non_params=lambda _: scalar)
    return jax.jit(optimizer.init, out_shardings=shardings)(params)
