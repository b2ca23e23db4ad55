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

from flax import nnx

from jaxrlhf.infra.runtime import run_trainer
from jaxrlhf.rl import group_setup
from jaxrlhf.rl.rollout_loop import export_policy, run_rollout_loop
from jaxrlhf.training.loop import Reporting, StepHook
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

    reporting = Reporting(desc=f"train_{cfg.algorithm}", prefix="grpo/", summarise=lambda window: (window[-1], 0.0),
                          step_name="iteration",
                          postfix=lambda m: dict(reward=f"{m['reward_mean']:.3f}", kl=f"{m['kl_per_seq']:.2f}",
                                                 len=f"{m['response_length']:.0f}"))
    result = run_rollout_loop(config, workdir, mesh, iteration, prompts, eval_prompts, reporting, ckpt, state, start,
                              hooks, "reward_mean", "mean reward of the rollouts")
    if not result.finished:
        return {"stopped_at": result.done}
    if config.train.export:
        actor = nnx.merge(iteration.actor_def, result.state["actor"]["params"], iteration.frozen_actor)
        export_policy(actor, models.actor, models.tokenizer, iteration.sampling, workdir)
    logged = result.last_logged
    print(json.dumps({k: round(v, 4) for k, v in logged.items()}))
    return logged


if __name__ == "__main__":
    run_trainer(train, str(Path(__file__).parent / "configs" / "grpo_arithmetic.py"))
