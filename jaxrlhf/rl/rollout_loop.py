"""The host loop of the online trainers (train_ppo, train_grpo) around their iteration step: the prompt
batches, the sample table, the guardrails, held-out evaluation, the KL-reward frontier at the end, and the
export of the policy with the stop tokens it sampled with."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax

from jaxrlhf.infra.metrics import MetricsWriter
from jaxrlhf.models.export import export_hf
from jaxrlhf.rl.frontier import write_frontier
from jaxrlhf.rl.guardrails import gold_hook, kl_guard
from jaxrlhf.rl.ppo_iteration import SampleTable
from jaxrlhf.training.loop import Cadence, HostLoop, LoopResult, Reporting, StepHook
from jaxrlhf.training.observe import Profiler


def run_rollout_loop(config, workdir: Path, mesh, iteration, prompts, eval_prompts, reporting: Reporting, ckpt,
                     state: dict, start: int, hooks: Sequence[StepHook], reward_key: str,
                     reward_label: str) -> LoopResult:
    """Iterations `start` .. `train.iterations` of `iteration` (a PPOIteration or GroupIteration)."""
    t = config.train
    has_eval = bool(t.eval_every) and eval_prompts is not None
    cadence = Cadence.of(t, t.iterations, eval_every=t.eval_every, eval_at_start=has_eval, eval_at_end=has_eval)
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
        write_frontier(workdir, reporting.prefix, reward_key, reward_label)
    return result


def export_policy(actor, loaded, tokenizer, sampling, workdir: Path) -> None:
    """The trained actor as an HF causal LM in `workdir/export`; the stop tokens it was trained with travel
    along (generation_config.json), so `compare` and `transformers` stop where the trainer did."""
    export_hf(actor, loaded.family, loaded.config, "causal_lm", workdir / "export", tokenizer=tokenizer,
              extra_json={"generation_config.json": {"eos_token_id": list(sampling.eos_ids),
                                                     "pad_token_id": sampling.pad_id}})
