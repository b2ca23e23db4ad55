"""One jitted PPO minibatch update of actor and critic, each with its own optax optimiser.

Actor: clipped surrogate on the response tokens minus an entropy bonus. Critic: (clipped) value loss
scaled by `vf_coef`. Both are token means over the minibatch, computed from sums and counts (`ops.ppo`).
Global-norm gradient clipping sits in each optimiser chain (`training.optim.make_optimizer`).

Approximate-KL early stop (`max_approx_kl > 0`) skips the minibatch whose forward pass crossed the bound,
as Stable-Baselines3 does: neither actor nor critic is updated with it, and no later minibatch of the
iteration runs (`scan_minibatches`).
With `advantages.scope == "minibatch"` the advantages are whitened (and clipped) here, per minibatch, as
in MOSS-RLHF's PPO-Max and the old TRL `loss()`; by default the experience step does it once per rollout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxrlhf.ops.ppo import policy_loss, value_loss
from jaxrlhf.rl.experience import AdvantageConfig, normalise_advantages, response_logprobs, response_values
from jaxrlhf.training import loss_scale
from jaxrlhf.training.accumulate import guarded_update, scale_of
from jaxrlhf.training.loss_scale import scaled_value_and_grad


@dataclasses.dataclass(frozen=True, kw_only=True)
class PPOLossConfig:
    clip_eps: float = 0.2
    value_clip_eps: float = 0.2    # <= 0: no value clipping
    vf_coef: float = 1.0
    entropy_coef: float = 0.0
    temperature: float = 1.0
    chunk_size: int = 128
    max_approx_kl: float = 0.0     # > 0: a minibatch whose approx KL exceeds it is not applied
    advantages: AdvantageConfig = AdvantageConfig()


def make_update_step(actor_def, critic_def, actor_opt: optax.GradientTransformation,
                     critic_opt: optax.GradientTransformation, cfg: PPOLossConfig) -> Callable:
    """update(state, actor_frozen, critic_frozen, minibatch) -> (state, metrics).

    state holds {"actor": {"params", "opt_state"}, "critic": {"params", "opt_state"}, "step"} and may carry
    other entries through unchanged; the minibatch is an experience dict (see `rl.experience`).
    """

    def actor_loss(params, frozen, mb):
        policy = nnx.merge(actor_def, params, frozen)
        logp, entropy = response_logprobs(policy, mb["ids_BxT"], mb["mask_BxT"], mb["response_ids_BxN"],
                                          cfg.temperature, cfg.chunk_size, return_entropy=True)
        advantages = mb["advantages_BxN"]
        if cfg.advantages.scope == "minibatch":
            advantages = normalise_advantages(advantages, mb["response_mask_BxN"], cfg.advantages)
        pg_sum, n, m = policy_loss(logp, mb["old_logp_BxN"], advantages, mb["response_mask_BxN"], cfg.clip_eps)
        mask = mb["response_mask_BxN"].astype(jnp.float32)
        n = jnp.maximum(n, 1.0)
        entropy_mean = jnp.sum(entropy * mask) / n
        loss = pg_sum / n - cfg.entropy_coef * entropy_mean
        return loss, {"policy_loss": pg_sum / n, "entropy": entropy_mean, "clip_frac": m["clip_frac_sum"] / n,
                      "approx_kl": m["approx_kl_sum"] / n, "ratio": m["ratio_sum"] / n}

    def critic_loss(params, frozen, mb):
        critic = nnx.merge(critic_def, params, frozen)
        values = response_values(critic, mb["ids_BxT"], mb["mask_BxT"], mb["response_ids_BxN"].shape[1])
        clip = cfg.value_clip_eps if cfg.value_clip_eps > 0 else None
        v_sum, n, m = value_loss(values, mb["values_BxN"], mb["returns_BxN"], mb["response_mask_BxN"], clip)
        n = jnp.maximum(n, 1.0)
        return cfg.vf_coef * v_sum / n, {"value_loss": v_sum / n, "value_clip_frac": m["clip_frac_sum"] / n}

    def apply(opt, part, grads, loss, skip):
        params, opt_state, nonfinite = guarded_update(part["params"], part["opt_state"], grads, opt, loss, skip)
        return {"params": params, "opt_state": opt_state}, nonfinite

    actor_grad, critic_grad = scaled_value_and_grad(actor_loss), scaled_value_and_grad(critic_loss)

    def update(state: dict, actor_frozen: Any, critic_frozen: Any, mb: dict):
        scale = scale_of(state)  # 1.0 unless float16 compute scales the losses (training.loss_scale)
        (a_loss, a_metrics), a_grads = actor_grad(state["actor"]["params"], actor_frozen, mb, scale=scale)
        (c_loss, c_metrics), c_grads = critic_grad(state["critic"]["params"], critic_frozen, mb, scale=scale)
        a_grads, c_grads = (jax.tree_util.tree_map(lambda g: g / scale, g) for g in (a_grads, c_grads))
        skip = (a_metrics["approx_kl"] > cfg.max_approx_kl) if cfg.max_approx_kl > 0 else jnp.asarray(False)
        actor, a_bad = apply(actor_opt, state["actor"], a_grads, a_loss, skip)
        critic, c_bad = apply(critic_opt, state["critic"], c_grads, c_loss, skip)
        new_state = dict(state, actor=actor, critic=critic, step=state["step"] + 1)
        metrics = dict(a_metrics, **c_metrics, actor_grad_norm=optax.global_norm(a_grads),
                       critic_grad_norm=optax.global_norm(c_grads), nonfinite=jnp.maximum(a_bad, c_bad),
                       kl_skipped=skip.astype(jnp.float32))
        if "loss_scale" in state:  # overflowed gradients (finite losses): skipped, counted, the scale halves
            new_state["loss_scale"], scaled = loss_scale.account(
                state["loss_scale"], jnp.isfinite(a_loss) & jnp.isfinite(c_loss), metrics["nonfinite"])
            metrics.update(scaled)
        return new_state, metrics

    return update


def scan_minibatches(update_rows: Callable, stop_on_kl: bool) -> Callable:
    """updates(state, actor_frozen, critic_frozen, experience, idx_NxM) -> (state, metrics_N), in one program.

    `update_rows(state, actor_frozen, critic_frozen, experience, idx_M)` runs on each row of idx_NxM in turn
    (a `lax.scan`: no host round trip between minibatches). With `stop_on_kl`, the first minibatch whose
    `kl_skipped` is set ends the iteration: it and every later one leave the state as it was (a `lax.cond`, so
    the later ones cost nothing). metrics_N stacks each minibatch's metrics plus `counted`, 1.0 for those up to
    and including the one that crossed the bound: the ones a host loop that stops there would have seen.
    """

    def updates(state, actor_frozen, critic_frozen, exp, idx_NxM):
        def run(state, idx_M):
            return update_rows(state, actor_frozen, critic_frozen, exp, idx_M)

        def body(carry, idx_M):
            state, stopped = carry
            if not stop_on_kl:
                state, metrics = run(state, idx_M)
                return (state, stopped), dict(metrics, counted=jnp.float32(1.0))
            metric_shapes = jax.eval_shape(run, state, idx_M)[1]
            zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)
            state, metrics = jax.lax.cond(stopped, lambda s, _: (s, zeros), run, state, idx_M)
            counted = 1.0 - stopped.astype(jnp.float32)
            return (state, stopped | (metrics["kl_skipped"] > 0)), dict(metrics, counted=counted)

        (state, _), metrics_N = jax.lax.scan(body, (state, jnp.asarray(False)), idx_NxM)
        return state, metrics_N

    return updates
