"""Jitted reward-model train and eval steps.

Chosen and rejected sequences go through the model as one 2B batch (one forward pass). Gradient
accumulation (`jaxrlhf.training.accumulate`) sums loss, gradients and the pair count over micro-batches
and divides once at the end, so the mean is exact even when the last batch carries padding pairs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxrlhf.ops import losses
from jaxrlhf.ops.losses import bradley_terry_loss, plackett_luce_loss, regression_loss
from jaxrlhf.training.accumulate import apply_update, scale_of, summed_gradients
from jaxrlhf.training.loss_scale import scaled_value_and_grad


def rm_rewards(model: nnx.Module, ids_BxT, mask_BxT, response_len_B=None, *, length_normalise: bool = False,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """reward_B, float32: the head's output, divided by the response's token count when the model was
    trained with `loss.length_normalise` (the one place that switch acts, for training and every consumer)."""
    rewards_B = model(ids_BxT, mask_BxT, dropout_rng=dropout_rng).astype(jnp.float32)
    if length_normalise:
        rewards_B = losses.length_normalise(rewards_B, response_len_B)
    return rewards_B


def pair_rewards(model: nnx.Module, batch: dict, *, length_normalise: bool = False,
                 dropout_rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(rewards_chosen_B, rewards_rejected_B), float32, from one forward pass over both."""
    B = batch["chosen_ids_BxT"].shape[0]
    ids = jnp.concatenate([batch["chosen_ids_BxT"], batch["rejected_ids_BxT"]], axis=0)
    mask = jnp.concatenate([batch["chosen_mask_BxT"], batch["rejected_mask_BxT"]], axis=0)
    lengths = jnp.concatenate([batch["chosen_len_B"], batch["rejected_len_B"]])
    rewards_2B = rm_rewards(model, ids, mask, lengths, length_normalise=length_normalise, dropout_rng=dropout_rng)
    return rewards_2B[:B], rewards_2B[B:]


OBJECTIVES = ("pairs", "plackett_luce", "regression")


def _pairs_loss(model, batch, loss_cfg, dropout_rng):
    r_c, r_r = pair_rewards(model, batch, length_normalise=loss_cfg.length_normalise, dropout_rng=dropout_rng)
    weight = batch["weight_B"].astype(jnp.float32)
    margin = batch["margin_B"].astype(jnp.float32) if loss_cfg.use_margin else None
    loss_sum, denom, m = bradley_terry_loss(r_c, r_r, weight_B=weight, margin_B=margin,
                                            temperature=loss_cfg.temperature, center_coef=loss_cfg.center_coef,
                                            label_smoothing=loss_cfg.label_smoothing)
    return loss_sum, {"denom": denom, "correct": m["correct_sum"], "compared": denom,
                      "reward_sum": jnp.sum(weight * (r_c + r_r)), "reward_count": 2 * denom}


def _list_loss(model, batch, loss_cfg, dropout_rng):
    B, K, T = batch["ids_BxKxT"].shape
    rewards_BxK = model(batch["ids_BxKxT"].reshape(B * K, T), batch["mask_BxKxT"].reshape(B * K, T),
                        dropout_rng=dropout_rng).astype(jnp.float32).reshape(B, K)
    valid_BxK = (batch["valid_BxK"] > 0) & (batch["weight_B"][:, None] > 0)  # filler lists count for nothing
    loss_sum, denom, m = plackett_luce_loss(rewards_BxK / loss_cfg.temperature, batch["ranks_BxK"], valid_BxK)
    return loss_sum, {"denom": denom, "correct": m["pair_correct_sum"], "compared": m["pair_count"],
                      "reward_sum": jnp.sum(jnp.where(valid_BxK, rewards_BxK, 0.0)),
                      "reward_count": jnp.sum(valid_BxK).astype(jnp.float32)}


def _regression_loss(model, batch, loss_cfg, dropout_rng):
    del loss_cfg
    pred_B = model(batch["ids_BxT"], batch["mask_BxT"], dropout_rng=dropout_rng).astype(jnp.float32)
    weight = batch["weight_B"].astype(jnp.float32)
    loss_sum, denom = regression_loss(pred_B, batch["target_B"], weight)
    return loss_sum, {"denom": denom, "correct": jnp.zeros(()), "compared": jnp.zeros(()),
                      "reward_sum": jnp.sum(weight * pred_B), "reward_count": denom}


_LOSSES = {"pairs": _pairs_loss, "plackett_luce": _list_loss, "regression": _regression_loss}


def make_loss_fn(graphdef: nnx.GraphDef, loss_cfg, objective: str = "pairs") -> Callable:
    """loss_fn(trainable, frozen, batch, rng) -> (loss_sum, aux sums); the mean is loss_sum / aux["denom"]."""
    if objective not in _LOSSES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    if loss_cfg.length_normalise and objective != "pairs":
        raise ValueError(f"loss.length_normalise applies to the pairs objective only, not {objective!r}: "
                         f"set it to False")
    if not 0.0 <= loss_cfg.label_smoothing < 0.5:  # at 0.5 every pair's loss is flat in the reward gap
        raise ValueError(f"loss.label_smoothing must be in [0, 0.5), got {loss_cfg.label_smoothing}")

    def loss_fn(trainable, frozen, batch, dropout_rng):
        model = nnx.merge(graphdef, trainable, frozen)
        return _LOSSES[objective](model, batch, loss_cfg, dropout_rng)

    return loss_fn


def make_train_step(graphdef: nnx.GraphDef, loss_cfg, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, grad_accum: int = 1, objective: str = "pairs") -> Callable:
    """step(state, frozen, batch, rng) -> (state, metrics); state = {"params", "opt_state", "step"}."""
    grad_fn = scaled_value_and_grad(make_loss_fn(graphdef, loss_cfg, objective))

    def step(state: dict, frozen: Any, batch: dict, rng: jax.Array):
        scale = scale_of(state)
        grads, loss_sum, aux = summed_gradients(functools.partial(grad_fn, scale=scale), state["params"], frozen,
                                                batch, rng, grad_accum)
        denom = jnp.maximum(aux["denom"], 1.0)
        grads = jax.tree_util.tree_map(lambda g: g / (denom * scale), grads)
        new_state, update_metrics = apply_update(state, grads, optimizer, loss_sum)
        metrics = {**update_metrics, "loss": loss_sum / denom,
                   "accuracy": aux["correct"] / jnp.maximum(aux["compared"], 1.0),
                   "reward_mean": aux["reward_sum"] / jnp.maximum(aux["reward_count"], 1.0),
                   "grad_norm": optax.global_norm(grads),
                   "learning_rate": schedule(state["step"]), "pairs": aux["denom"]}
        return new_state, metrics

    return step


def make_eval_step(graphdef: nnx.GraphDef, length_normalise: bool = False) -> Callable:
    """eval(trainable, frozen, batch) -> (rewards_chosen_B, rewards_rejected_B)."""

    def eval_step(trainable, frozen, batch):
        model = nnx.merge(graphdef, trainable, frozen)
        return pair_rewards(model, batch, length_normalise=length_normalise)

    return eval_step


def make_reward_fn(graphdef: nnx.GraphDef, length_normalise: bool = False) -> Callable:
    """reward(trainable, frozen, ids_BxT, mask_BxT, response_len_B) -> reward_B, for lists and rated responses."""

    def reward_fn(trainable, frozen, ids_BxT, mask_BxT, response_len_B):
        return rm_rewards(nnx.merge(graphdef, trainable, frozen), ids_BxT, mask_BxT, response_len_B,
                          length_normalise=length_normalise)

    return reward_fn
