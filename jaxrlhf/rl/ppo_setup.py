"""From a PPO config and the loaded models to the loop's pieces: the train state and the iteration step."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrlhf.infra.precision import compute_dtype
from jaxrlhf.infra.sharding import batch_sharding, replicated
from jaxrlhf.ops import whitening
from jaxrlhf.ops.kl import AdaptiveKLController, FixedKLController
from jaxrlhf.rl.experience import AdvantageConfig, make_experience_fn
from jaxrlhf.rl.ppo_iteration import Frozen, PPOIteration
from jaxrlhf.rl.ppo_models import PPOModels
from jaxrlhf.rl.ppo_step import PPOLossConfig, make_update_step, scan_minibatches
from jaxrlhf.rl.prompts import PromptSet
from jaxrlhf.rl.rewards import RewardShaping
from jaxrlhf.rl.rollout import make_sample_fn
from jaxrlhf.rl.sampling import SamplingConfig
from jaxrlhf.rl.stop_tokens import stop_token_ids
from jaxrlhf.rm.ensemble import reward_scorer
from jaxrlhf.training import loss_scale
from jaxrlhf.training.optim import init_opt_state, make_optimizer


def sampling_config(config, tokenizer, actor) -> SamplingConfig:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    s = config.sampling
    if s.get("ignore_eos", False):  # exactly max_new_tokens per row (benchmarks that time a fixed length)
        stops = ()
    else:
        stops = stop_token_ids(tokenizer, actor.model_dir, actor.hf_config, s.stop_tokens)
    if not stops and config.rewards.get("missing_eos_penalty", 0.0):
        raise ValueError("rewards.missing_eos_penalty needs a stop token (the policy has no EOS, or "
                         "sampling.ignore_eos is set): every response would be penalised; set sampling.stop_tokens "
                         "or the penalty to 0")
    return SamplingConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                          eos_ids=stops, pad_id=pad, compact_rows=bool(s.get("compact_rows", True)))


def kl_controller(kl_cfg):
    if kl_cfg.adaptive:
        return AdaptiveKLController(kl_cfg.coef, kl_cfg.target, kl_cfg.horizon)
    return FixedKLController(kl_cfg.coef)


def initial_moments(config, rm_stats: dict) -> whitening.RunningMoments:
    """Running reward moments, seeded with the RM's training statistics when it was exported with them.

    The seed counts as `rewards.rm_stats_weight` samples, at most the number of rewards the statistics
    came from (`n_rewards`; older exports: two per training pair)."""
    if not (config.rewards.init_from_rm_stats and rm_stats.get("reward_std")):
        return whitening.RunningMoments.init()
    n_rewards = rm_stats.get("n_rewards") or 2 * rm_stats.get("n_pairs", 1)
    weight = config.rewards.rm_stats_weight
    count = n_rewards if weight < 0 else min(weight, n_rewards)
    return whitening.RunningMoments(jnp.float32(rm_stats["reward_mean"]), jnp.float32(rm_stats["reward_std"] ** 2),
                                    jnp.float32(count))


def build(config, models: PPOModels, mesh, eval_prompts: PromptSet | None) -> tuple[dict, PPOIteration]:
    """(the fresh train state, the iteration step) as `config` sets them up."""
    p, r = config.ppo, config.rewards
    if p.rollout_batch_size % p.minibatch_size:
        raise ValueError(f"ppo.rollout_batch_size={p.rollout_batch_size} must be a multiple of "
                         f"ppo.minibatch_size={p.minibatch_size}")
    updates = config.train.iterations * p.epochs * (p.rollout_batch_size // p.minibatch_size)
    actor_opt, _ = make_optimizer(config.actor_optim, updates)
    critic_opt, _ = make_optimizer(config.critic_optim, updates)
    (actor_def, actor_params, actor_frozen), (critic_def, critic_params, critic_frozen), \
        (ref_def, ref_state) = models.split(config.policy, config.critic)
    controller = kl_controller(config.kl)
    state = {"actor": {"params": actor_params, "opt_state": init_opt_state(actor_opt, actor_params)},
             "critic": {"params": critic_params, "opt_state": init_opt_state(critic_opt, critic_params)},
             "step": jnp.zeros((), jnp.int32), "kl_coef": controller.init().coef,
             "moments": initial_moments(config, models.rm.stats)._asdict()}
    if any(loss_scale.wanted(config[o].get("loss_scale", "auto"), compute_dtype(config[m].dtype))
           for o, m in (("actor_optim", "policy"), ("critic_optim", "critic"))):
        state["loss_scale"] = loss_scale.init_state()  # one scale for actor and critic (float16 compute)
    # Scalars replicated over the mesh: restored from a checkpoint they then land where the steps expect.
    for key in ("step", "kl_coef", "moments", *(("loss_scale",) if "loss_scale" in state else ())):
        state[key] = jax.device_put(state[key], replicated(mesh))

    sampling = sampling_config(config, models.tokenizer, models.actor)
    shaping = RewardShaping(normalise=r.normalise, shift_mean=r.shift_mean, clip=r.clip, scale=r.scale,
                            missing_eos_penalty=r.missing_eos_penalty, kl_estimator=config.kl.estimator)
    advantages = AdvantageConfig(gamma=p.gamma, lam=p.lam, whiten=p.whiten_advantages, clip=p.advantage_clip,
                                 scope=p.whiten_scope)
    experience = jax.jit(make_experience_fn(actor_def, ref_def, critic_def, temperature=sampling.temperature,
                                            shaping=shaping, advantages=advantages, chunk_size=p.logprob_chunk))
    loss_cfg = PPOLossConfig(clip_eps=p.clip_eps, value_clip_eps=p.value_clip_eps, vf_coef=p.vf_coef,
                             entropy_coef=p.entropy_coef, temperature=sampling.temperature,
                             chunk_size=p.logprob_chunk, max_approx_kl=p.max_approx_kl, advantages=advantages)
    update_step = make_update_step(actor_def, critic_def, actor_opt, critic_opt, loss_cfg)

    def update_rows(state, actor_frozen, critic_frozen, exp, idx_M):
        """One update on the rows idx_M of the experience, gathered inside the jitted program: eager gathers
        of sharded arrays, several in flight at once, deadlocked two CPU processes in their collectives."""
        mb = jax.tree_util.tree_map(
            lambda x: jax.lax.with_sharding_constraint(x[idx_M], batch_sharding(mesh, x.ndim)), exp)
        return update_step(state, actor_frozen, critic_frozen, mb)

    return state, PPOIteration(
        actor_def=actor_def, sampling=sampling, sample=make_sample_fn(actor_def, sampling),
        scorer=reward_scorer(config.reward_model, models.rm, mesh, config.reward_model.max_length),
        experience=experience, update_minibatch=update_rows, controller=controller,
        # Every minibatch of the iteration (all epochs) in one program, the KL early stop decided inside it.
        update=jax.jit(scan_minibatches(update_rows, stop_on_kl=p.max_approx_kl > 0), donate_argnums=(0,)),
        frozen=Frozen(actor_frozen, critic_frozen, ref_state), tokenizer=models.tokenizer, mesh=mesh,
        rollout_batch_size=p.rollout_batch_size, epochs=p.epochs, minibatch_size=p.minibatch_size,
        eval_prompts=eval_prompts, eval_key=jax.random.fold_in(jax.random.key(config.seed), 2**31 - 1))
