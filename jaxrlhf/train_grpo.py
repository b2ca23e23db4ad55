"""Critic-free online RL: `python -m jaxrlhf.train_grpo --config=configs/grpo_arithmetic.py [--config.KEY=VALUE]`.

`grpo.algorithm`: grpo (Dr.GRPO with grpo.scale_by_std=False and loss_aggregation=seq_mean_token_sum_norm;
DAPO's clip-higher, token_mean and dynamic sampling are switches too), rloo, reinforce_pp,
reinforce_pp_baseline. Rewards: verifiable functions (`rewards.functions`), a reward model
(`reward_model.path`), or their weighted sum. Config in, loop, out: one iteration is
`jaxrlhf.rl.group_iteration.GroupIteration`, built by `jaxrlhf.rl.group_setup`; the loop is the one every
trainer runs (`jaxrlhf.training.loop`), with its checkpoints, exact resume and SIGTERM handling.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import jax
from flax import nnx

from jaxrlhf.infra.metrics import MetricsWriter
from jaxrlhf.infra.runtime import run_trainer
from jaxrlhf.models.export import export_hf
from jaxrlhf.rl import group_setup
from jaxrlhf.rl.frontier import write_frontier
from jaxrlhf.rl.guardrails import gold_hook, kl_guard
from jaxrlhf.rl.ppo_iteration import SampleTable
from jaxrlhf.training.loop import Cadence, HostLoop, Reporting, StepHook
from jaxrlhf.training.observe import Profiler
from jaxrlhf.training.run_setup import open_checkpoints, releases_workdir, start_run


@releases_workdir
def train(config, hooks: Sequence[StepHook] = ()) -> dict:
    """Runs the configured algorithm; returns the last iteration's metrics (`{"stopped_at": n}` when stopped)."""
    workdir, mesh = start_run(config, "grpo")
    cfg = group_setup.group_config(config)
    models = group_setup.load_group_models(config, mesh, cfg)
    prompts, eval_prompts = group_setup.build_prompts(config, models.tokenizer)
    state, iteration = group_setup.build(config, models, cfg, mesh, eval_prompts)
    reference = ("none (beta 0)" if not cfg.needs_reference else "the LoRA base" if models.reference is None
                 else models.reference.model_dir)
    print(f"{cfg.algorithm}: actor {models.actor.model_dir}, G={cfg.group_size}, reference {reference}, rewards "
          f"{config.rewards.functions or '-'}"
          f"{', RM ' + config.reward_model.path if models.rm else ''}; prompts: {len(prompts.prompts)} for rollouts, "
          f"{len(eval_prompts.prompts) if eval_prompts else 0} held out")
    ckpt, state, start = open_checkpoints(config, workdir, state)

    t = config.train
    has_eval = bool(t.eval_every) and eval_prompts is not None
    cadence = Cadence.of(t, t.iterations, eval_every=t.eval_every, eval_at_start=has_eval, eval_at_end=has_eval)
    reporting = Reporting(desc=f"train_{cfg.algorithm}", prefix="grpo/", summarise=lambda window: (window[-1], 0.0),
                          step_name="iteration",
                          postfix=lambda m: dict(reward=f"{m['reward_mean']:.3f}", kl=f"{m['kl_per_seq']:.2f}",
                                                 len=f"{m['response_length']:.0f}"))
    samples = SampleTable(iteration=iteration, path=workdir / "samples.jsonl", every=t.sample_every,
                          shown=t.samples_shown, start=start)
    writer = MetricsWriter(workdir)
    guards = [kl_guard(t), *[h for h in (gold_hook(config, iteration, writer, mesh),) if h is not None]]
    batches = (prompts.batch(it, jax.process_index(), jax.process_count()) for it in range(start, t.iterations))
    loop = HostLoop(step=iteration, cadence=cadence, reporting=reporting, ckpt=ckpt, writer=writer, seed=config.seed,
                    evaluate=iteration.evaluate if has_eval else None, hooks=(samples, *guards, *hooks),
                    profiler=Profiler(t.get("profile_steps", ""), workdir))
    result = loop.run(state, batches, start)
    writer.close()
    if jax.process_index() == 0:
        write_frontier(workdir, "grpo/", "reward_mean", "mean reward of the rollouts")
    if not result.finished:
        return {"stopped_at": result.done}
    if t.export:
        actor = nnx.merge(iteration.actor_def, result.state["actor"]["params"], iteration.frozen_actor)
        stops = group_setup.sampling_config(  # the stop tokens it sampled with travel along
            config, models.tokenizer, models.actor)
        export_hf(actor, models.actor.family, models.actor.config, "causal_lm", workdir / "export",
                  tokenizer=models.tokenizer,
                  extra_json={"generation_config.json": {"eos_token_id": list(stops.eos_ids),
                                                         "pad_token_id": stops.pad_id}})
    logged = result.last_logged
    print(json.dumps({k: round(v, 4) for k, v in logged.items()}))
    return logged


if __name__ == "__main__":
    run_trainer(train, str(Path(__file__).parent / "configs" / "grpo_arithmetic.py"))
