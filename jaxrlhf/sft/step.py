"""Jitted SFT train and eval steps: next-token NLL on response tokens only.

Log-probs come from `CausalLM.sequence_logprobs` (`ops.logprobs.token_logprobs`), which applies the LM
head in chunks over the sequence, so the [B, T, V] logits are never held whole. The loss is a sum over
response tokens with the token count beside it; the mean is taken once after gradient accumulation
(`jaxrlhf.training.accumulate`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxrlhf.training.accumulate import apply_update, scale_of, summed_gradients
from jaxrlhf.training.loss_scale import scaled_value_and_grad


def response_nll(model: nnx.Module, batch: dict, *, chunk_size: int = 128,
                 dropout_rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(summed NLL, token count), float32, over the tokens that `loss_mask_BxT` marks.

    Position t predicts token t + 1, so a marked token at t is scored from the hidden state at t - 1.
    """
    logp_B, tokens_B = model.sequence_logprobs(batch["ids_BxT"], batch["mask_BxT"], batch["loss_mask_BxT"],
                                               chunk_size=chunk_size, dropout_rng=dropout_rng)
    return -jnp.sum(logp_B), jnp.sum(tokens_B)


def make_loss_fn(graphdef: nnx.GraphDef, chunk_size: int = 128) -> Callable:
    """loss_fn(trainable, frozen, batch, rng) -> (nll_sum, {"tokens", "seq_tokens"})."""

    def loss_fn(trainable, frozen, batch, dropout_rng):
        model = nnx.merge(graphdef, trainable, frozen)
        nll_sum, tokens = response_nll(model, batch, chunk_size=chunk_size, dropout_rng=dropout_rng)
        return nll_sum, {"tokens": tokens, "seq_tokens": jnp.sum(batch["mask_BxT"]).astype(jnp.float32)}

    return loss_fn


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    grad_accum: int = 1, chunk_size: int = 128) -> Callable:
    """step(state, frozen, batch, rng) -> (state, metrics); state = {"params", "opt_state", "step"}.

    metrics: nll_sum and tokens (response tokens scored) so a host can average exactly over steps,
    seq_tokens (all real tokens, for throughput), grad_norm, learning_rate.
    """
    grad_fn = scaled_value_and_grad(make_loss_fn(graphdef, chunk_size))

    def step(state: dict, frozen: Any, batch: dict, rng: jax.Array):
        scale = scale_of(state)
        grads, nll_sum, aux = summed_gradients(functools.partial(grad_fn, scale=scale), state["params"], frozen,
                                               batch, rng, grad_accum)
        grads = jax.tree_util.tree_map(lambda g: g / (jnp.maximum(aux["tokens"], 1.0) * scale), grads)
        new_state, update_metrics = apply_update(state, grads, optimizer, nll_sum)
        metrics = {"nll_sum": nll_sum, "tokens": aux["tokens"], "seq_tokens": aux["seq_tokens"],
                   "grad_norm": optax.global_norm(grads), "learning_rate": schedule(state["step"]), **update_metrics}
        return new_state, metrics

    return step


def make_eval_step(graphdef: nnx.GraphDef, chunk_size: int = 128) -> Callable:
    """eval(trainable, frozen, batch) -> (nll_sum, tokens)."""

    def eval_step(trainable, frozen, batch):
        return response_nll(nnx.merge(graphdef, trainable, frozen), batch, chunk_size=chunk_size)

    return eval_step
