"""Jitted preference-optimisation steps: sequence log-probs of policy and reference, a loss of
`ops.preference`, the update.

Every sequence a batch holds (chosen and rejected; a list's K responses; KTO's rated and mismatched
responses) goes through the policy in one forward pass. The reference's log-probs come from the batch
when cached (`po.reference`), else from the reference model, or from the policy with its LoRA adapters
off when it shares the policy's base; they never carry a gradient. Losses are sums with a denominator,
divided once after gradient accumulation, so the mean is exact for any split into micro-batches.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxrlhf.data import shared_prompt
from jaxrlhf.models.layers import adapters_off
from jaxrlhf.ops.preference import kto_loss, kto_reference_point, listwise_loss, pair_loss, response_mask
from jaxrlhf.training.accumulate import apply_update, scale_of, summed_gradients
from jaxrlhf.training.loss_scale import scaled_value_and_grad

REFERENCES = ("cached", "adapters_off", "model", "none")


@dataclasses.dataclass(frozen=True)
class LossSpec:
    objective: str            # pairs | listwise | kto (po.data.objective_of)
    type: str                 # loss.type
    beta: float
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    sft_weight: float = 0.0
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0
    suffix_len: int = 0       # closing specials after each response, not scored
    chunk_size: int = 128

    @classmethod
    def of(cls, loss_cfg, objective: str, suffix_len: int) -> LossSpec:
        return cls(objective, loss_cfg.type, float(loss_cfg.beta), float(loss_cfg.label_smoothing),
                   float(loss_cfg.simpo_gamma), float(loss_cfg.sft_weight), float(loss_cfg.kto_desirable_weight),
                   float(loss_cfg.kto_undesirable_weight), int(suffix_len), int(loss_cfg.chunk_size))


# (ids, mask, response length, cached reference) keys of each sequence group of a batch, per objective.
GROUPS = {
    "pairs": {"chosen": ("chosen_ids_BxT", "chosen_mask_BxT", "chosen_len_B", "ref_chosen_B"),
              "rejected": ("rejected_ids_BxT", "rejected_mask_BxT", "rejected_len_B", "ref_rejected_B")},
    "listwise": {"seqs": ("ids_BxKxT", "mask_BxKxT", "len_BxK", "ref_BxK")},
    "kto": {"seqs": ("ids_BxT", "mask_BxT", "len_B", "ref_B"), "kl": ("kl_ids_BxT", "kl_mask_BxT", "kl_len_B",
                                                                      "ref_kl_B")},
}


def shared_prompt_logprobs(model: nnx.Module, batch: dict, objective: str, spec: LossSpec,
                           dropout_rng=None) -> tuple[dict, dict]:
    """`group_logprobs` of a batch in `data.shared_prompt`'s layout: each row the prompt once, then the
    responses (chosen and rejected, or a list's K)."""
    K = 2 if objective == "pairs" else batch["len_BxK"].shape[1]
    logp_BxK, tokens_BxK = model.shared_prompt_logprobs(
        *(batch[k] for k in shared_prompt.KEYS), K, chunk_size=spec.chunk_size, dropout_rng=dropout_rng)
    if objective == "pairs":
        return ({"chosen": logp_BxK[:, 0], "rejected": logp_BxK[:, 1]},
                {"chosen": tokens_BxK[:, 0], "rejected": tokens_BxK[:, 1]})
    return {"seqs": logp_BxK}, {"seqs": tokens_BxK}


def is_shared_prompt(batch: dict) -> bool:
    return shared_prompt.KEYS[0] in batch


def sequence_tokens(batch: dict, objective: str) -> jax.Array:
    """Tokens of the batch's sequences as if each were separate (the prompt counted once per response)."""
    if is_shared_prompt(batch):
        part = batch["shared_part_BxT"]
        responses_B = (2 if objective == "pairs" else jnp.sum(batch["valid_BxK"], axis=-1)) * (part[:, 0] >= 0)
        prompt_B = jnp.sum(part == 0, axis=-1)
        return jnp.sum(responses_B * prompt_B + jnp.sum(part > 0, axis=-1)).astype(jnp.float32)
    return sum(jnp.sum(batch[k[1]]) for k in GROUPS[objective].values()).astype(jnp.float32)


def group_logprobs(model: nnx.Module, batch: dict, objective: str, spec: LossSpec,
                   dropout_rng=None) -> tuple[dict, dict]:
    """({group: summed response log-prob}, {group: response tokens}), every group in one forward pass;
    list groups come back [B, K], the others [B]."""
    if is_shared_prompt(batch):
        return shared_prompt_logprobs(model, batch, objective, spec, dropout_rng)
    groups = GROUPS[objective]
    shapes, ids, masks, scored = {}, [], [], []
    for name, (ids_key, mask_key, len_key, _) in groups.items():
        shapes[name] = batch[len_key].shape
        T = batch[ids_key].shape[-1]
        mask = batch[mask_key].reshape(-1, T)
        ids.append(batch[ids_key].reshape(-1, T))
        masks.append(mask)
        scored.append(response_mask(mask, batch[len_key].reshape(-1), spec.suffix_len))
    logp_N, tokens_N = model.sequence_logprobs(jnp.concatenate(ids), jnp.concatenate(masks),
                                               jnp.concatenate(scored), chunk_size=spec.chunk_size,
                                               dropout_rng=dropout_rng)
    logps, tokens, at = {}, {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        logps[name], tokens[name] = logp_N[at:at + n].reshape(shape), tokens_N[at:at + n].reshape(shape)
        at += n
    return logps, tokens


def reference_logprobs(reference: str, policy: nnx.Module, ref_model: nnx.Module | None, batch: dict,
                       objective: str, spec: LossSpec) -> dict | None:
    """{group: reference log-prob} (no gradient), or None when reference-free."""
    if reference == "none":
        return None
    if reference == "cached":
        return {name: batch[keys[3]] for name, keys in GROUPS[objective].items()}
    if reference == "adapters_off":
        with adapters_off():
            logps, _ = group_logprobs(policy, batch, objective, spec)
    else:
        logps, _ = group_logprobs(ref_model, batch, objective, spec)
    return jax.tree_util.tree_map(jax.lax.stop_gradient, logps)


def objective_loss(spec: LossSpec, logps: dict, tokens: dict, ref: dict | None, batch: dict):
    """(loss_sum, denom, metric sums) of the configured loss on group log-probs."""
    w = batch["weight_B"]
    if spec.objective == "pairs":
        return pair_loss(logps["chosen"], logps["rejected"], None if ref is None else ref["chosen"],
                         None if ref is None else ref["rejected"], loss_type=spec.type, beta=spec.beta,
                         label_smoothing=spec.label_smoothing, simpo_gamma=spec.simpo_gamma,
                         lengths_chosen_B=tokens["chosen"], lengths_rejected_B=tokens["rejected"],
                         sft_weight=spec.sft_weight, weight_B=w)
    if spec.objective == "listwise":
        valid = (batch["valid_BxK"] > 0) & (w[:, None] > 0)
        return listwise_loss(logps["seqs"], None if ref is None else ref["seqs"], batch["ranks_BxK"], valid,
                             beta=spec.beta)
    ref_seqs, ref_kl = (jnp.zeros_like(logps["seqs"]),) * 2 if ref is None else (ref["seqs"], ref["kl"])
    z0 = kto_reference_point(logps["kl"], ref_kl, w)
    loss_sum, denom, metrics = kto_loss(logps["seqs"], ref_seqs, batch["desirable_B"], z0, beta=spec.beta,
                                        desirable_weight=spec.kto_desirable_weight,
                                        undesirable_weight=spec.kto_undesirable_weight, weight_B=w)
    return loss_sum, denom, dict(metrics, kl_reference_sum=z0 * denom)


def _models(graphdef, ref_def, reference: str, trainable, frozen_and_ref) -> tuple[nnx.Module, nnx.Module | None]:
    """The policy, and the reference model when it is a separate one."""
    frozen, ref_state = frozen_and_ref
    return nnx.merge(graphdef, trainable, frozen), nnx.merge(ref_def, ref_state) if reference == "model" else None


def _score(graphdef, ref_def, spec: LossSpec, reference: str, trainable, frozen_and_ref, batch, dropout_rng=None):
    """(policy log-probs, response tokens, reference log-probs or None) of every group of the batch."""
    policy, ref_model = _models(graphdef, ref_def, reference, trainable, frozen_and_ref)
    logps, tokens = group_logprobs(policy, batch, spec.objective, spec, dropout_rng)
    return logps, tokens, reference_logprobs(reference, policy, ref_model, batch, spec.objective, spec)


def make_loss_fn(graphdef: nnx.GraphDef, ref_def: nnx.GraphDef | None, spec: LossSpec, reference: str) -> Callable:
    """loss_fn(trainable, (frozen, ref_state), batch, rng) -> (loss_sum, {"denom", "tokens", metric sums})."""
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")

    def loss_fn(trainable, frozen_and_ref, batch, dropout_rng):
        logps, tokens, ref = _score(graphdef, ref_def, spec, reference, trainable, frozen_and_ref, batch, dropout_rng)
        loss_sum, denom, metrics = objective_loss(spec, logps, tokens, ref, batch)
        return loss_sum, {"denom": denom, "seq_tokens": sequence_tokens(batch, spec.objective), **metrics}

    return loss_fn


def make_train_step(graphdef, ref_def, spec: LossSpec, reference: str, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, grad_accum: int = 1) -> Callable:
    """step(state, (frozen, ref_state), batch, rng) -> (state, metrics); metrics hold loss_sum, denom and
    the loss's metric sums (a host divides them by the denominator), grad_norm and learning_rate."""
    grad_fn = scaled_value_and_grad(make_loss_fn(graphdef, ref_def, spec, reference))

    def step(state: dict, frozen_and_ref, batch: dict, rng: jax.Array):
        scale = scale_of(state)
        grads, loss_sum, aux = summed_gradients(functools.partial(grad_fn, scale=scale), state["params"],
                                                frozen_and_ref, batch, rng, grad_accum)
        grads = jax.tree_util.tree_map(lambda g: g / (jnp.maximum(aux["denom"], 1.0) * scale), grads)
        new_state, update_metrics = apply_update(state, grads, optimizer, loss_sum)
        metrics = {"loss_sum": loss_sum, **aux, "grad_norm": optax.global_norm(grads),
                   "learning_rate": schedule(state["step"]), **update_metrics}
        return new_state, metrics

    return step


def make_eval_step(graphdef, ref_def, spec: LossSpec, reference: str) -> Callable:
    """eval(trainable, (frozen, ref_state), batch) -> (loss_sum, metric sums, {group: implicit reward})."""

    def eval_step(trainable, frozen_and_ref, batch):
        logps, tokens, ref = _score(graphdef, ref_def, spec, reference, trainable, frozen_and_ref, batch)
        loss_sum, denom, metrics = objective_loss(spec, logps, tokens, ref, batch)
        rewards = implicit_rewards(spec, logps, tokens, ref)
        return loss_sum, {"denom": denom, **metrics}, rewards

    return eval_step


def implicit_rewards(spec: LossSpec, logps: dict, tokens: dict, ref: dict | None) -> dict:
    """{group: the implicit reward of each sequence}: beta * (log p - log p_ref); SimPO's
    beta * log p / length."""
    if spec.type == "simpo":
        return {g: spec.beta * logps[g] / jnp.maximum(tokens[g], 1.0) for g in logps}
    return {g: spec.beta * (logps[g] - (0.0 if ref is None else ref[g])) for g in logps}


def make_reference_fn(graphdef, ref_def, spec: LossSpec, reference: str) -> Callable:
    """ref(trainable, (frozen, ref_state), batch) -> {group: reference log-prob}: what the cache holds."""
    if reference not in ("adapters_off", "model"):
        raise ValueError(f"only a reference model or the adapters-off policy can be cached, got {reference!r}")

    def ref_fn(trainable, frozen_and_ref, batch):
        policy, ref_model = _models(graphdef, ref_def, reference, trainable, frozen_and_ref)
        return reference_logprobs(reference, policy, ref_model, batch, spec.objective, spec)

    return ref_fn
