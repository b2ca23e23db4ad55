"""PPO against a reward model: `python -m jaxrlhf.train_ppo --config=configs/ppo.py [--config.KEY=VALUE ...]`.

Config in, loop, out. One iteration (sample, score, experience, minibatch updates) is
`jaxrlhf.rl.ppo_iteration.PPOIteration`, built from the config by `jaxrlhf.rl.ppo_setup`; the maths lives in
`jaxrlhf.rl` and `jaxrlhf.ops`, the loop in `jaxrlhf.training.loop`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from flax import nnx

from jaxrlhf.data.errors import row_policy
from jaxrlhf.data.sources import load_table
from jaxrlhf.infra.runtime import run_trainer
from jaxrlhf.rl import ppo_setup
from jaxrlhf.rl.ppo_models import load_ppo_models
from jaxrlhf.rl.prompts import build_prompt_set
from jaxrlhf.rl.rollout_loop import export_policy, run_rollout_loop
from jaxrlhf.training.loop import Reporting, StepHook
from jaxrlhf.training.memory_plan import check_ppo_batch, report_ppo_plan
from jaxrlhf.training.run_setup import open_checkpoints, releases_workdir, start_run


@releases_workdir
def train(config, hooks: Sequence[StepHook] = ()) -> dict:
    """Runs PPO as configured; returns the last iteration's metrics (`{"stopped_at": iteration}` when stopped)."""
    workdir, mesh = start_run(config, "ppo")
    check_ppo_batch(config, mesh)
    models = load_ppo_models(config, mesh)
    report_ppo_plan(config, models, mesh)
    d = config.data
    table = load_table(d.source, config=d.subset or None, split=d.split, max_rows=d.limit or None)
    prompts = build_prompt_set(table, models.tokenizer, batch_size=config.ppo.rollout_batch_size,
                               max_prompt_length=d.max_prompt_length, pad_to_multiple=d.pad_to_multiple,
                               seed=config.seed, on_invalid=row_policy(d.on_invalid),
                               use_chat_template=d.chat_template, system=d.system or None)
    prompts, eval_prompts = prompts.hold_out(d.eval_prompts)
    state, iteration = ppo_setup.build(config, models, mesh, eval_prompts)
    print(f"actor {models.actor.model_dir}, critic from {models.critic_source}, reward model "
          f"{config.reward_model.path} ({models.rm.loaded.hf_config['model_type']}); prompts: {len(prompts.prompts)} "
          f"for rollouts, {len(eval_prompts.prompts) if eval_prompts else 0} held out ({prompts.report})")
    ckpt, state, start = open_checkpoints(config, workdir, state)

    reporting = Reporting(desc="train_ppo", prefix="ppo/", summarise=lambda window: (window[-1], 0.0),
                          step_name="iteration",
                          postfix=lambda m: dict(score=f"{m['score_mean']:.3f}", kl=f"{m['kl_k1_per_seq']:.2f}",
                                                 len=f"{m['response_length']:.0f}"))
    result = run_rollout_loop(config, workdir, mesh, iteration, prompts, eval_prompts, reporting, ckpt, state, start,
                              hooks, "score_mean", "RM score of the rollouts")
    if not result.finished:
        return {"stopped_at": result.done}
    if config.train.export:
        actor = nnx.merge(iteration.actor_def, result.state["actor"]["params"], iteration.frozen.actor)
        export_policy(actor, models.actor, models.tokenizer, iteration.sampling, workdir)
    logged = result.last_logged
    print(json.dumps({k: round(v, 4) for k, v in logged.items()}))
    return logged


if __name__ == "__main__":
    run_trainer(train, str(Path(__file__).parent / "configs" / "ppo.py"))
