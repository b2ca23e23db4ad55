"""PPO against a reward model: `python -m jaxrlhf.train_ppo --config=configs/ppo.py [--config.KEY=VALUE ...]`.

Each iteration: sample responses to a batch of prompts (jitted, KV cache), score them with the frozen reward
model, compute log-probs, values, shaped rewards and GAE advantages (one jitted step), then run
`ppo.epochs` passes of shuffled minibatch updates of actor and critic. The maths lives in `jaxrlhf.rl` and
`jaxrlhf.ops`; this file is the host loop.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.data.sources import load_table
from jaxrlhf.infra import preemption
from jaxrlhf.infra.metrics import MetricsWriter
from jaxrlhf.infra.multihost import to_global, to_host
from jaxrlhf.infra.sharding import batch_sharding, replicated
from jaxrlhf.infra.runtime import progress, run_trainer
from jaxrlhf.models.export import export_hf
from jaxrlhf.ops import whitening
from jaxrlhf.ops.kl import AdaptiveKLController, FixedKLController, KLControllerState
from jaxrlhf.rl.experience import AdvantageConfig, make_experience_fn
from jaxrlhf.rl.ppo_models import load_ppo_models
from jaxrlhf.rl.ppo_step import PPOLossConfig, make_update_step
from jaxrlhf.rl.prompts import build_prompt_set
from jaxrlhf.rl.rewards import RewardShaping
from jaxrlhf.rl.rollout import local_rows, make_sample_fn, response_texts
from jaxrlhf.rl.sampling import SamplingConfig
from jaxrlhf.rl.stop_tokens import stop_token_ids
from jaxrlhf.training.nonfinite import NonFiniteGuard
from jaxrlhf.training.memory_plan import check_ppo_batch, report_ppo_plan
from jaxrlhf.training.optim import init_opt_state, make_optimizer
from jaxrlhf.training.run_setup import open_checkpoints, start_run


def sampling_config(config, tokenizer, actor) -> SamplingConfig:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    s = config.sampling
    stops = stop_token_ids(tokenizer, actor.model_dir, actor.hf_config, s.stop_tokens)
    if not stops and config.rewards.missing_eos_penalty:
        raise ValueError("rewards.missing_eos_penalty needs a stop token (the policy has no EOS): every response "
                         "would be penalised; set sampling.stop_tokens or the penalty to 0")
    return SamplingConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                          eos_ids=stops, pad_id=pad)


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


def sample_rows(prompts, texts, scores, n: int) -> list[dict]:
    return [{"prompt": p.messages[-1][1][-200:], "response": t, "score": round(float(s), 4)}
            for p, t, s in list(zip(prompts, texts, scores))[:n]]


def train(config) -> dict:
    """Runs PPO as configured; returns the last iteration's metrics."""
    workdir, mesh = start_run(config)
    check_ppo_batch(config, mesh)
    models = load_ppo_models(config, mesh)
    report_ppo_plan(config, models, mesh)
    tok = models.tokenizer
    d = config.data
    table = load_table(d.source, config=d.subset or None, split=d.split, max_rows=d.limit or None)
    prompts = build_prompt_set(table, tok, batch_size=config.ppo.rollout_batch_size,
                               max_prompt_length=d.max_prompt_length, pad_to_multiple=d.pad_to_multiple,
                               seed=config.seed, on_invalid="raise" if d.on_invalid == "error" else d.on_invalid,
                               use_chat_template=d.chat_template, system=d.system or None)
    prompts, eval_prompts = prompts.hold_out(d.eval_prompts)
    p = config.ppo
    if p.rollout_batch_size % p.minibatch_size:
        raise ValueError(f"ppo.rollout_batch_size={p.rollout_batch_size} must be a multiple of "
                         f"ppo.minibatch_size={p.minibatch_size}")
    iterations = config.train.iterations
    updates_per_iter = p.epochs * (p.rollout_batch_size // p.minibatch_size)
    actor_opt, _ = make_optimizer(config.actor_optim, iterations * updates_per_iter)
    critic_opt, _ = make_optimizer(config.critic_optim, iterations * updates_per_iter)
    (actor_def, actor_params, actor_frozen), (critic_def, critic_params, critic_frozen), \
        (ref_def, ref_state) = models.split(config.policy, config.critic)
    controller = kl_controller(config.kl)
    state = {"actor": {"params": actor_params, "opt_state": init_opt_state(actor_opt, actor_params)},
             "critic": {"params": critic_params, "opt_state": init_opt_state(critic_opt, critic_params)},
             "step": jnp.zeros((), jnp.int32), "kl_coef": controller.init().coef,
             "moments": initial_moments(config, models.rm.stats)._asdict()}
    # Scalars replicated over the mesh: restored from a checkpoint they then land where the steps expect.
    for key in ("step", "kl_coef", "moments"):
        state[key] = jax.device_put(state[key], replicated(mesh))
    print(f"actor {models.actor.model_dir}, critic from {models.critic_source}, reward model "
          f"{config.reward_model.path} ({models.rm.loaded.hf_config['model_type']}); prompts: {len(prompts.prompts)} "
          f"for rollouts, {len(eval_prompts.prompts) if eval_prompts else 0} held out ({prompts.report})")

    ckpt, state, start = open_checkpoints(config, workdir, state)

    sampling = sampling_config(config, tok, models.actor)
    scorer = models.rm.scorer(max_length=config.reward_model.max_length)
    sample = make_sample_fn(actor_def, sampling)
    r = config.rewards
    shaping = RewardShaping(normalise=r.normalise, shift_mean=r.shift_mean, clip=r.clip, scale=r.scale,
                            missing_eos_penalty=r.missing_eos_penalty, kl_estimator=config.kl.estimator)
    advantages = AdvantageConfig(gamma=p.gamma, lam=p.lam, whiten=p.whiten_advantages, clip=p.advantage_clip,
                                 scope=p.whiten_scope)
    experience_fn = jax.jit(make_experience_fn(actor_def, ref_def, critic_def, temperature=sampling.temperature,
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

    update = jax.jit(update_rows, donate_argnums=(0,))

    writer = MetricsWriter(workdir)
    base_key = jax.random.key(config.seed)

    def evaluate(step: int) -> None:
        """Fresh rollouts on the held-out prompts, same keys every time: the curve to watch."""
        if eval_prompts is None:
            return
        scores, lengths, ended = [], [], []
        for k in range(eval_prompts.batches_per_epoch):
            b = eval_prompts.batch(k, jax.process_index(), jax.process_count())
            arrays = to_global({"ids": b["ids_BxP"], "mask": b["mask_BxP"]}, mesh)
            roll = sample((state["actor"]["params"], actor_frozen), arrays["ids"], arrays["mask"],
                          jax.random.fold_in(jax.random.fold_in(base_key, 2**31 - 1), k))  # no iteration uses it
            scores.append(to_host(scorer.score_global(b["prompts"], response_texts(tok, roll), mesh)))
            lengths.append(to_host(roll["response_mask_BxN"]).sum(-1))
            ended.append(to_host(roll["ended_B"]))
        scores = np.concatenate(scores)
        writer.write(step, {"score_mean": float(scores.mean()), "score_std": float(scores.std()),
                            "response_length": float(np.concatenate(lengths).mean()),
                            "ended_frac": float(np.concatenate(ended).mean()), "n": len(scores)}, prefix="eval/")

    if start == 0 and config.train.eval_every:
        evaluate(0)
    preemption.install_sigterm_handler()
    guard = NonFiniteGuard(config.train.on_nonfinite)
    bar = progress(total=iterations, initial=start, desc="train_ppo")
    logged: dict = {}
    done = start
    for it in range(start, iterations):
        t0 = time.time()
        key = jax.random.fold_in(base_key, it)
        batch = prompts.batch(it, jax.process_index(), jax.process_count())
        prompt_arrays = to_global({"ids": batch["ids_BxP"], "mask": batch["mask_BxP"]}, mesh)
        rollout = sample((state["actor"]["params"], actor_frozen), prompt_arrays["ids"], prompt_arrays["mask"],
                         jax.random.fold_in(key, 0))
        texts = response_texts(tok, rollout)
        score = scorer.score_global(batch["prompts"], texts, mesh)
        moments = whitening.RunningMoments(**state["moments"])
        exp, moments, exp_metrics = experience_fn((state["actor"]["params"], actor_frozen), (ref_state,),
                                                  (state["critic"]["params"], critic_frozen), rollout, score,
                                                  state["kl_coef"], moments)
        state["moments"] = moments._asdict()
        t_rollout = time.time() - t0

        update_metrics, stopped_early = [], False
        order_rng = np.random.default_rng([config.seed, it])
        B = p.rollout_batch_size
        for _ in range(p.epochs):
            perm = order_rng.permutation(B)
            for k in range(0, B, p.minibatch_size):
                idx_M = jax.device_put(perm[k:k + p.minibatch_size].astype(np.int32), replicated(mesh))
                state, m = update(state, actor_frozen, critic_frozen, exp, idx_M)
                update_metrics.append(m)
                guard.add(m["nonfinite"])
                if float(m["kl_skipped"]):  # that minibatch was not applied (see rl.ppo_step)
                    stopped_early = True
                    break
            if stopped_early:
                break
        guard.check(it + 1, ckpt.latest_step())
        kl_state = controller.update(KLControllerState(state["kl_coef"]), exp_metrics["kl_k1_per_seq"], B)
        state["kl_coef"] = kl_state.coef

        done = it + 1
        logged = {k: float(v) for k, v in jax.device_get(exp_metrics).items()}
        logged.update({k: float(np.mean([float(m[k]) for m in update_metrics])) for k in update_metrics[0]})
        logged.update(minibatch_updates=len(update_metrics), early_stop=float(stopped_early),
                      skipped_nonfinite=float(guard.skipped),
                      rollout_seconds=t_rollout, iteration_seconds=time.time() - t0)
        if done % config.train.log_every == 0 or done == iterations or it == start:
            writer.write(done, logged, prefix="ppo/")
        bar.set_postfix(score=f"{logged['score_mean']:.3f}", kl=f"{logged['kl_k1_per_seq']:.2f}",
                        len=f"{logged['response_length']:.0f}")
        if config.train.sample_every and (done % config.train.sample_every == 0 or it == start):
            rows = sample_rows(batch["prompts"], texts, local_rows(score), config.train.samples_shown)
            if jax.process_index() == 0:
                with open(workdir / "samples.jsonl", "a") as f:
                    for row in rows:
                        f.write(json.dumps(dict(row, iteration=done)) + "\n")
                bar.write(f"iteration {done} samples:\n" + "\n".join(
                    f"  [{r['score']:+.3f}] {r['prompt'][-60:]!r} -> {r['response'][:100]!r}" for r in rows))
        if config.train.eval_every and (done % config.train.eval_every == 0 or done == iterations):
            evaluate(done)
        stopping = preemption.should_stop_everywhere(done, 1) or done == config.train.stop_after
        if ckpt.should_save(done) or done == iterations or stopping:
            ckpt.save(done, state, {"iteration": done})
        bar.update(1)
        if stopping:
            break
    bar.close()
    ckpt.close()
    writer.close()
    if done < iterations:
        print(f"stopped at iteration {done} of {iterations}; checkpoint saved, rerun the same command to resume")
        return {"stopped_at": done}
    if config.train.export:
        actor = nnx.merge(actor_def, state["actor"]["params"], actor_frozen)
        # The stop tokens it was trained with travel along, so `compare` and `transformers` stop where PPO did.
        export_hf(actor, models.actor.family, models.actor.config, "causal_lm", workdir / "export", tokenizer=tok,
                  extra_json={"generation_config.json": {"eos_token_id": list(sampling.eos_ids),
                                                         "pad_token_id": sampling.pad_id}})
    print(json.dumps({k: round(v, 4) for k, v in logged.items()}))
    return logged


if __name__ == "__main__":
    run_trainer(train, str(Path(__file__).parent / "configs" / "ppo.py"))
