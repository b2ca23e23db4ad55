"""PPO against a reward model: `python -m jaxrlhf.train_ppo --config=configs/ppo.py [--config.KEY=VALUE ...]`.

Config in, loop, out. One iteration (sample, score, experience, minibatch updates) is
`jaxrlhf.rl.ppo_iteration.PPOIteration`, built from the config by `jaxrlhf.rl.ppo_setup`; the maths lives in
`jaxrlhf.rl` and `jaxrlhf.ops`, the loop in `jaxrlhf.training.loop`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import jax
from flax import nnx

from jaxrlhf.data.errors import row_policy
from jaxrlhf.data.sources import load_table
from jaxrlhf.infra.metrics import MetricsWriter
from jaxrlhf.infra.runtime import run_trainer
from jaxrlhf.models.export import export_hf
from jaxrlhf.rl import ppo_setup
from jaxrlhf.rl.frontier import write_frontier
from jaxrlhf.rl.guardrails import gold_hook, kl_guard
from jaxrlhf.rl.ppo_iteration import SampleTable
from jaxrlhf.rl.ppo_models import load_ppo_models
from jaxrlhf.rl.prompts import build_prompt_set
from jaxrlhf.training.loop import Cadence, HostLoop, Reporting, StepHook
from jaxrlhf.training.memory_plan import check_ppo_batch, report_ppo_plan
from jaxrlhf.training.observe import Profiler
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

    t = config.train
    has_eval = bool(t.eval_every) and eval_prompts is not None
    cadence = Cadence.of(t, t.iterations, eval_every=t.eval_every, eval_at_start=has_eval, eval_at_end=has_eval)
    reporting = Reporting(desc="train_ppo", prefix="ppo/", summarise=lambda window: (window[-1], 0.0),
                          step_name="iteration",
                          postfix=lambda m: dict(score=f"{m['score_mean']:.3f}", kl=f"{m['kl_k1_per_seq']:.2f}",
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
        write_frontier(workdir, "ppo/", "score_mean", "RM score of the rollouts")
    if not result.finished:
        return {"stopped_at": result.done}
    if t.export:
        actor = nnx.merge(iteration.actor_def, result.state["actor"]["params"], iteration.frozen.actor)
        # The stop tokens it was trained with travel along, so `compare` and `transformers` stop where PPO did.
        export_hf(actor, models.actor.family, models.actor.config, "causal_lm", workdir / "export",
                  tokenizer=models.tokenizer,
                  extra_json={"generation_config.json": {"eos_token_id": list(iteration.sampling.eos_ids),
                                                         "pad_token_id": iteration.sampling.pad_id}})
    logged = result.last_logged
    print(json.dumps({k: round(v, 4) for k, v in logged.items()}))
    return logged


if __name__ == "__main__":
    run_trainer(train, str(Path(__file__).parent / "configs" / "ppo.py"))
