"""Critic-free online RL steps (GRPO, Dr.GRPO, DAPO, RLOO, REINFORCE++): experience and one update, jitted.

Rows come in groups: a rollout of B prompts holds B*G responses, prompt b's G samples in rows b*G ..
b*G + G - 1 (`rl.rollout.make_sample_fn(group_size=G)`). `score_R` (R = B*G) is each response's reward.

- grpo / rloo / reinforce_pp_baseline: the group gives the baseline (`ops.group_advantages`); one advantage
  per response, on each of its tokens. REINFORCE++ (`reinforce_pp`) needs no group: per-token KL-shaped
  returns whitened over the batch; its baseline variant subtracts the group mean of the scores first.
- KL to the reference: a loss term (`kl_in_reward` off, GRPO: k3 per token, weighted by beta, aggregated as
  the policy loss) or in the reward (on: REINFORCE++ always; for the group estimators the sequence's summed
  per-token estimate is subtracted from its reward before the group baseline).
- Dynamic sampling (DAPO): groups whose rewards are all equal carry zero advantage; `drop_degenerate`
  also takes their tokens out of the loss's denominator (shapes stay static: they are masked, not removed).
- Every forward pass (old, reference and updated log-probs) runs each prompt once for its group
  (`shared_prompt`, exact), so the minibatches of the update hold whole groups, G rows in a row.
- The clipped ratio with DAPO's clip-higher (`clip_eps_high`) and one of three loss aggregations
  (`ops.ppo.aggregate`). With one update per rollout the old log-probs are the current ones with their
  gradient stopped (ratio exactly 1), so the experience step skips that forward pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxrlhf.models.layers import adapters_off
from jaxrlhf.ops.group_advantages import degenerate_groups, group_advantages, reinforce_pp_advantages
from jaxrlhf.ops.kl import kl_penalty
from jaxrlhf.ops.ppo import aggregate, surrogate_tokens
from jaxrlhf.rl.experience import group_response_logprobs, response_logprobs
from jaxrlhf.rl.rewards import token_rewards
from jaxrlhf.training.accumulate import guarded_update

ALGORITHMS = ("grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
_GROUP_ESTIMATOR = {"grpo": "grpo", "rloo": "rloo", "reinforce_pp_baseline": "group_mean"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class GroupRLConfig:
    """Hashable: a static argument of the jitted steps."""

    algorithm: str = "grpo"
    group_size: int = 8
    scale_by_std: bool = True           # GRPO's std division; False: Dr.GRPO
    kl_coef: float = 0.0                # beta
    kl_in_reward: bool = False          # KL in the reward (REINFORCE++ always) instead of a loss term
    kl_estimator: str = "k3"            # per-token estimator of the KL loss term / reward
    clip_eps: float = 0.2
    clip_eps_high: float = 0.2          # DAPO clip-higher: 0.28
    aggregation: str = "seq_mean_token_mean"
    drop_degenerate: bool = True        # DAPO dynamic sampling: all-equal groups leave the loss
    temperature: float = 1.0
    max_new_tokens: int = 64            # the constant of seq_mean_token_sum_norm
    chunk_size: int = 128
    max_approx_kl: float = 0.0
    single_update: bool = False         # one update per rollout: old log-probs = current, stopped
    shared_prompt: bool = True          # a group's prompt runs once in every forward (minibatches hold whole groups)

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"grpo.algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.algorithm != "reinforce_pp" and self.group_size < 2:
            raise ValueError(f"grpo.group_size={self.group_size}: {self.algorithm} needs at least 2 samples per "
                             f"prompt for its baseline (reinforce_pp runs with 1)")
        if self.algorithm == "reinforce_pp":  # its KL is a per-token reward by definition
            object.__setattr__(self, "kl_in_reward", True)

    def logprobs(self, policy, ids_RxT, mask_RxT, response_ids_RxN):
        """Response log-probs of rows laid out in whole groups: each prompt's forward once per group when
        `shared_prompt` (exact: `rl.experience.group_response_logprobs`), else once per row."""
        if self.shared_prompt and self.group_size > 1:
            return group_response_logprobs(policy, ids_RxT, mask_RxT, response_ids_RxN, self.group_size,
                                           self.temperature, self.chunk_size)
        return response_logprobs(policy, ids_RxT, mask_RxT, response_ids_RxN, self.temperature, self.chunk_size)

    @property
    def kl_as_loss(self) -> bool:
        return self.kl_coef > 0 and not self.kl_in_reward

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef > 0


def _reference_logprobs(actor_def, actor, ref_def, ref, ids, mask, resp, cfg):
    if ref_def is None:  # the actor's LoRA base
        with adapters_off():
            return cfg.logprobs(nnx.merge(actor_def, *actor), ids, mask, resp)
    return cfg.logprobs(nnx.merge(ref_def, *ref), ids, mask, resp)


def make_group_experience_fn(actor_def, ref_def, cfg: GroupRLConfig) -> Callable:
    """experience(actor, ref, rollout, score_R) -> (experience, metrics). `actor`, `ref`: (trainable, frozen)
    pairs; `ref_def` None: the actor with its adapters off. The experience adds advantages_RxN, loss_mask_RxN,
    old_logp_RxN (unless single_update) and ref_logp_RxN (when the KL is used)."""
    G = cfg.group_size

    def experience(actor, ref, batch, score_R):
        ids, mask = batch["ids_BxT"], batch["mask_BxT"]
        resp, resp_mask = batch["response_ids_BxN"], batch["response_mask_BxN"]
        m = resp_mask.astype(jnp.float32)
        score = jnp.asarray(score_R, jnp.float32)
        R = score.shape[0]
        exp = dict(batch)
        logp = ref_logp = None
        if not cfg.single_update or cfg.needs_reference:
            logp = jax.lax.stop_gradient(cfg.logprobs(nnx.merge(actor_def, *actor), ids, mask, resp)) * m
        if not cfg.single_update:
            exp["old_logp_BxN"] = logp
        kl_R = jnp.zeros((R,), jnp.float32)
        if cfg.needs_reference:
            ref_logp = jax.lax.stop_gradient(_reference_logprobs(actor_def, actor, ref_def, ref, ids, mask, resp,
                                                                 cfg)) * m
            exp["ref_logp_BxN"] = ref_logp
            kl_R = jnp.sum(jnp.where(resp_mask > 0, kl_penalty(logp, ref_logp, cfg.kl_estimator), 0.0), -1)

        groups = score.reshape(-1, G) if G > 1 else score[:, None]
        degenerate_B = degenerate_groups(groups) if G > 1 else jnp.zeros((R,), bool)
        keep_R = jnp.repeat(~degenerate_B, G) if (G > 1 and cfg.drop_degenerate) else jnp.ones((R,), bool)
        if cfg.algorithm == "reinforce_pp" or cfg.algorithm == "reinforce_pp_baseline":
            seq = score if cfg.algorithm == "reinforce_pp" else group_advantages(groups, "group_mean").reshape(-1)
            beta = cfg.kl_coef if (cfg.needs_reference and cfg.kl_in_reward) else 0.0  # else a loss term
            zeros = jnp.zeros_like(m)
            rewards, _ = token_rewards(seq, logp if logp is not None else zeros,
                                       ref_logp if ref_logp is not None else zeros, resp_mask, beta,
                                       cfg.kl_estimator)
            adv = reinforce_pp_advantages(rewards, resp_mask * keep_R[:, None])
        else:
            seq = score - cfg.kl_coef * kl_R if (cfg.kl_in_reward and cfg.needs_reference) else score
            adv_R = group_advantages(seq.reshape(-1, G), _GROUP_ESTIMATOR[cfg.algorithm], cfg.scale_by_std).reshape(-1)
            adv = adv_R[:, None] * m
        exp["advantages_BxN"] = adv
        exp["loss_mask_BxN"] = resp_mask * keep_R[:, None].astype(resp_mask.dtype)
        lengths = jnp.sum(m, -1)
        n_tokens = jnp.maximum(jnp.sum(m), 1.0)
        metrics = {
            "reward_mean": jnp.mean(score), "reward_std": jnp.std(score),
            "group_reward_std": jnp.mean(jnp.std(groups, axis=-1)),
            "groups_dropped_frac": jnp.mean(degenerate_B.astype(jnp.float32)) if G > 1 else jnp.float32(0.0),
            "response_length": jnp.mean(lengths), "response_length_min": jnp.min(lengths),
            "response_length_max": jnp.max(lengths),
            "ended_frac": jnp.mean(batch["ended_B"].astype(jnp.float32)),
            "kl_per_seq": jnp.mean(kl_R),
        }
        if logp is not None:
            mismatch = jnp.abs(batch["sample_logp_BxN"].astype(jnp.float32) - logp) * m
            metrics["logprob_mismatch_max"] = jnp.max(mismatch)
            metrics["kl_k1_per_seq"] = (jnp.mean(jnp.sum(logp - ref_logp, -1)) if ref_logp is not None
                                        else jnp.float32(0.0))
        metrics["tokens"] = n_tokens
        return exp, metrics

    return experience


def make_group_update_step(actor_def, actor_opt: optax.GradientTransformation, cfg: GroupRLConfig):
    """update(state, actor_frozen, minibatch) -> (state, metrics): the clipped surrogate (and the KL term, on
    the reference log-probs the experience holds) on the minibatch's rows, aggregated as `cfg.aggregation`.
    With `cfg.shared_prompt` the minibatch's rows are whole groups, each group's G rows in a row."""

    def loss_fn(params, frozen, mb):
        actor = (params, frozen)
        logp = cfg.logprobs(nnx.merge(actor_def, *actor), mb["ids_BxT"], mb["mask_BxT"], mb["response_ids_BxN"])
        old = jax.lax.stop_gradient(logp) if cfg.single_update else mb["old_logp_BxN"]
        lmask = mb["loss_mask_BxN"]
        m, pg_tokens, pm = surrogate_tokens(logp, old, mb["advantages_BxN"], lmask, cfg.clip_eps, cfg.clip_eps_high)
        pg_sum, denom = aggregate(pg_tokens, m, cfg.aggregation, cfg.max_new_tokens)
        denom = jnp.maximum(denom, 1.0)
        loss = pg_sum / denom
        n = jnp.maximum(jnp.sum(m), 1.0)
        metrics = {"policy_loss": pg_sum / denom, "clip_frac": jnp.sum(pm["clip_frac_sum"]) / n,
                   "approx_kl": jnp.sum(pm["approx_kl_sum"]) / n, "ratio": jnp.sum(pm["ratio_sum"]) / n}
        if cfg.kl_as_loss:
            kl_tokens = jnp.where(m > 0, kl_penalty(logp, mb["ref_logp_BxN"], cfg.kl_estimator), 0.0)
            kl_sum, kl_denom = aggregate(kl_tokens, m, cfg.aggregation, cfg.max_new_tokens)
            kl_loss = kl_sum / jnp.maximum(kl_denom, 1.0)
            loss = loss + cfg.kl_coef * kl_loss
            metrics["kl_loss"] = kl_loss
        return loss, metrics

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def update(state: dict, actor_frozen, mb: dict):
        (loss, metrics), grads = grad_fn(state["actor"]["params"], actor_frozen, mb)
        skip = (metrics["approx_kl"] > cfg.max_approx_kl) if cfg.max_approx_kl > 0 else jnp.asarray(False)
        params, opt_state, nonfinite = guarded_update(state["actor"]["params"], state["actor"]["opt_state"], grads,
                                                      actor_opt, loss, skip)
        new_state = dict(state, actor={"params": params, "opt_state": opt_state}, step=state["step"] + 1)
        return new_state, dict(metrics, loss=loss, actor_grad_norm=optax.global_norm(grads), nonfinite=nonfinite,
                               kl_skipped=skip.astype(jnp.float32))

    return update
