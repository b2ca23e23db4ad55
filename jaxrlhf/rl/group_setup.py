"""From a train_grpo config to the loop's pieces: models, prompts, the train state and the iteration."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.data.errors import row_policy
from jaxrlhf.data.sources import load_table
from jaxrlhf.infra.precision import compute_dtype
from jaxrlhf.infra.sharding import batch_sharding, replicated
from jaxrlhf.models.hub import LoadedModel, load_tokenizer
from jaxrlhf.rl import arithmetic
from jaxrlhf.rl.group_iteration import GroupIteration, Rewarder
from jaxrlhf.rl.group_step import GroupRLConfig, make_group_experience_fn, make_group_update_step
from jaxrlhf.rl.ppo_setup import sampling_config
from jaxrlhf.rl.ppo_step import scan_minibatches
from jaxrlhf.rl.prompts import PromptSet, build_prompt_set
from jaxrlhf.rl.rollout import make_sample_fn
from jaxrlhf.rl.verifiable import RewardFunctions
from jaxrlhf.rm.ensemble import reward_scorer
from jaxrlhf.rm.load import TrainedRM, load_trained_rm
from jaxrlhf.training.optim import init_opt_state, make_optimizer
from jaxrlhf.training.run_setup import load_block
from jaxrlhf.training.trainable import base_is_reference, split_for


@dataclasses.dataclass
class GroupModels:
    actor: LoadedModel
    reference: LoadedModel | None  # None: not needed (beta 0) or the actor's LoRA base
    rm: TrainedRM | None
    tokenizer: Any


def group_config(config) -> GroupRLConfig:
    g = config.grpo
    if g.rollout_batch_size * g.group_size % g.minibatch_size:
        raise ValueError(f"grpo.rollout_batch_size * grpo.group_size = {g.rollout_batch_size * g.group_size} "
                         f"responses must be a multiple of grpo.minibatch_size={g.minibatch_size}")
    shared = g.shared_prompt and g.group_size > 1
    if shared and g.minibatch_size % g.group_size:
        raise ValueError(f"grpo.minibatch_size={g.minibatch_size} must be a multiple of grpo.group_size="
                         f"{g.group_size}: with grpo.shared_prompt a minibatch holds whole groups (or set "
                         f"grpo.shared_prompt=False)")
    if config.train.max_kl_per_seq > 0 and g.kl_coef <= 0:
        raise ValueError(f"train.max_kl_per_seq={config.train.max_kl_per_seq} watches the KL to the reference, "
                         f"which a run with grpo.kl_coef=0 never computes: set grpo.kl_coef > 0")
    single = g.epochs == 1 and g.minibatch_size == g.rollout_batch_size * g.group_size
    return GroupRLConfig(
        algorithm=g.algorithm, group_size=g.group_size, scale_by_std=g.scale_by_std, kl_coef=g.kl_coef,
        kl_in_reward=g.kl_in_reward, kl_estimator=g.kl_estimator,
        clip_eps=g.clip_eps, clip_eps_high=g.clip_eps_high if g.clip_eps_high > 0 else g.clip_eps,
        aggregation=g.loss_aggregation, drop_degenerate=g.dynamic_sampling, temperature=config.sampling.temperature,
        max_new_tokens=config.sampling.max_new_tokens, chunk_size=g.logprob_chunk, max_approx_kl=g.max_approx_kl,
        single_update=single, shared_prompt=shared)


def load_group_models(config, mesh, cfg: GroupRLConfig) -> GroupModels:
    if compute_dtype(config.policy.dtype) == jnp.float16:
        raise ValueError("policy.dtype=float16: train_grpo has no loss scaling; use bfloat16 or float32")
    actor = load_block(config.policy, config.policy.name, "causal_lm", mesh, config.seed)
    needs_ref = cfg.needs_reference and not base_is_reference(config.policy, config.reference)
    reference = load_block(config.policy, config.reference or config.policy.name, "causal_lm", mesh, config.seed,
                           lora=False, trains=False) if needs_ref else None
    rm_cfg = config.reward_model
    rm = load_trained_rm(rm_cfg.path, mesh, dtype=rm_cfg.dtype, param_dtype=rm_cfg.param_dtype) if rm_cfg.path \
        else None
    return GroupModels(actor, reference, rm, load_tokenizer(actor.model_dir))


def build_prompts(config, tokenizer) -> tuple[PromptSet, PromptSet | None]:
    """(training prompts, held-out prompts): the arithmetic task's two seeds, or data.source with a hold-out."""
    d, t, g = config.data, config.task, config.grpo
    kw = dict(max_prompt_length=d.max_prompt_length, pad_to_multiple=d.pad_to_multiple, seed=config.seed,
              use_chat_template=d.chat_template, system=d.system or None)
    if t.name == "arithmetic":  # the training problems exclude every held-out one
        gen = dict(min_value=t.min_value, max_value=t.max_value, ops=t.ops, styles=t.styles)
        held_rows = arithmetic.problems(t.n_eval, t.eval_seed, **gen) if t.n_eval else []
        train_rows = arithmetic.problems(t.n_train, t.seed, exclude={r["prompt"] for r in held_rows}, **gen)
        train = build_prompt_set(load_table(train_rows, name="arithmetic (train)"), tokenizer,
                                 batch_size=g.rollout_batch_size, **kw)
        if not held_rows:
            return train, None
        held = build_prompt_set(load_table(held_rows, name="arithmetic (held out)"), tokenizer,
                                batch_size=min(g.eval_batch_size, t.n_eval), **kw)
        return train, dataclasses.replace(held, shuffle=False)
    if t.name:
        raise ValueError(f"task.name={t.name!r}: the built-in tasks are 'arithmetic' (or '' to read data.source)")
    table = load_table(d.source, config=d.subset or None, split=d.split, max_rows=d.limit or None)
    prompts = build_prompt_set(table, tokenizer, batch_size=g.rollout_batch_size, on_invalid=row_policy(d.on_invalid),
                               **kw)
    return prompts.hold_out(d.eval_prompts)


def build_rewarder(config, models: GroupModels, mesh) -> Rewarder:
    r = config.rewards
    functions = RewardFunctions.parse(r.functions, format_regex=r.format_regex, length_target=r.length_target,
                                      workers=r.workers)
    if not functions and models.rm is None:
        raise ValueError("no reward: set rewards.functions (e.g. exact_match) and/or reward_model.path")
    scorer = (reward_scorer(config.reward_model, models.rm, mesh, config.reward_model.max_length)
              if models.rm is not None else None)
    return Rewarder(functions=functions, scorer=scorer, rm_weight=r.rm_weight)


def build(config, models: GroupModels, cfg: GroupRLConfig, mesh, eval_prompts) -> tuple[dict, GroupIteration]:
    g = config.grpo
    rows = g.rollout_batch_size * g.group_size
    updates = config.train.iterations * g.epochs * (rows // g.minibatch_size)
    actor_opt, _ = make_optimizer(config.actor_optim, updates)
    actor_def, actor_params, actor_frozen = split_for(models.actor.model, config.policy)
    ref_def, ref_state = nnx.split(models.reference.model) if models.reference is not None else (None, None)
    state = {"actor": {"params": actor_params, "opt_state": init_opt_state(actor_opt, actor_params)},
             "step": jax.device_put(jnp.zeros((), jnp.int32), replicated(mesh))}
    sampling = sampling_config(config, models.tokenizer, models.actor)
    greedy = dataclasses.replace(sampling, temperature=0.0, top_k=0, top_p=1.0)
    update_step = make_group_update_step(actor_def, actor_opt, cfg)

    def update_rows(state, actor_frozen, _critic, exp, idx_M):
        mb = jax.tree_util.tree_map(
            lambda x: jax.lax.with_sharding_constraint(x[idx_M], batch_sharding(mesh, x.ndim)), exp)
        return update_step(state, actor_frozen, mb)

    return state, GroupIteration(
        actor_def=actor_def, cfg=cfg, sampling=sampling, sample=make_sample_fn(actor_def, sampling, cfg.group_size),
        greedy_sample=make_sample_fn(actor_def, greedy), rewarder=build_rewarder(config, models, mesh),
        experience=jax.jit(make_group_experience_fn(actor_def, ref_def, cfg)),
        update=jax.jit(scan_minibatches(update_rows, stop_on_kl=cfg.max_approx_kl > 0), donate_argnums=(0,)),
        update_minibatch=update_rows, frozen_actor=actor_frozen,
        reference=() if ref_def is None else (ref_state,), tokenizer=models.tokenizer, mesh=mesh,
        rollout_batch_size=g.rollout_batch_size, epochs=g.epochs, minibatch_size=g.minibatch_size,
        eval_prompts=eval_prompts, eval_key=jax.random.fold_in(jax.random.key(config.seed), 2**31 - 1))
