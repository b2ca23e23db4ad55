"""What the supervised trainers (reward model, SFT) share around their step: from a loaded model and a
batcher to a trained state in the one host loop, and the final summary (`eval.json`, `eval/` metrics)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import optax

from jaxrlhf.infra.checkpoint import Checkpointer
from jaxrlhf.infra.metrics import MetricsWriter
from jaxrlhf.infra.multihost import to_global
from jaxrlhf.infra.precision import compute_dtype
from jaxrlhf.training import loss_scale
from jaxrlhf.training.loop import Cadence, HostLoop, LoopResult, Reporting, StepHook
from jaxrlhf.training.observe import Profiler, StepCost
from jaxrlhf.training.optim import make_optimizer
from jaxrlhf.training.run_setup import init_train_state, open_checkpoints
from jaxrlhf.training.trainable import count_params, split_for


@dataclasses.dataclass
class SupervisedRun:
    """A model split into what trains and what stays frozen, its optimiser over the run's steps, and the
    state to start from (restored when resuming)."""
    graphdef: Any
    frozen: Any
    optimizer: optax.GradientTransformation
    schedule: Callable
    state: dict
    start: int
    steps_per_epoch: int
    total_steps: int
    ckpt: Checkpointer
    cost: StepCost


def prepare(config, workdir: Path, loaded, batcher, describe_data: str) -> SupervisedRun:
    accum = config.optim.grad_accum
    if accum < 1 or config.data.batch_size % accum:
        raise ValueError(f"optim.grad_accum={accum} must be a positive divisor of data.batch_size="
                         f"{config.data.batch_size} (each step splits its batch into grad_accum microbatches)")
    if config.optim.learning_rate <= 0:
        raise ValueError(f"optim.learning_rate={config.optim.learning_rate} must be positive")
    steps_per_epoch = len(batcher)
    total_steps = config.train.max_steps or config.train.epochs * steps_per_epoch
    optimizer, schedule = make_optimizer(config.optim, total_steps)
    graphdef, trainable, frozen = split_for(loaded.model, config.model)
    print(f"model {loaded.model_dir} ({loaded.hf_config['model_type']}): {count_params(trainable):,} trainable, "
          f"{count_params(frozen):,} frozen parameters; fresh: {', '.join(loaded.initialised) or 'none'}")
    print(f"data: {describe_data}; {steps_per_epoch} steps/epoch, {total_steps} steps")
    scaling = loss_scale.wanted(config.optim.get("loss_scale", "auto"), compute_dtype(config.model.dtype))
    ckpt, state, start = open_checkpoints(config, workdir, init_train_state(trainable, optimizer, scaling))
    cost = StepCost.of(count_params(trainable), count_params(frozen))
    return SupervisedRun(graphdef, frozen, optimizer, schedule, state, start, steps_per_epoch, total_steps, ckpt,
                         cost)


def train(run: SupervisedRun, train_step: Callable, batcher, *, config, mesh, writer: MetricsWriter,
          reporting: Reporting, evaluate: Callable[[dict], dict] | None, eval_at_start: bool = False,
          hooks: Sequence[StepHook] = ()) -> LoopResult:
    """`train_step(state, frozen, global batch, key)` over the batcher from the run's start (mid-epoch on
    resume), evaluating every `train.eval_every` steps (0: each epoch)."""
    def step(state, batch, key):
        return train_step(state, run.frozen, to_global(batch, mesh), key)

    cadence = Cadence.of(config.train, run.total_steps, eval_every=config.train.eval_every or run.steps_per_epoch,
                         eval_at_start=eval_at_start, vote_every=config.train.log_every)
    loop = HostLoop(step=step, cadence=cadence, reporting=reporting, ckpt=run.ckpt, writer=writer, seed=config.seed,
                    evaluate=evaluate, hooks=hooks, cost=run.cost,
                    profiler=Profiler(config.train.get("profile_steps", ""), Path(config.workdir).expanduser()))
    return loop.run(run.state, batcher.from_step(run.start), run.start)


def finish(result: LoopResult, summary: dict, workdir: Path, writer: MetricsWriter, unit: str, digits: int) -> dict:
    """The final held-out `summary` with the run's time, skipped steps and throughput, logged and written
    to `eval.json`."""
    summary["train_seconds"] = round(result.seconds, 1)
    if result.skipped:
        summary["skipped_nonfinite_steps"] = result.skipped
    if result.units_per_s is not None:
        summary[f"{unit}_per_s"] = round(result.units_per_s, digits)
    writer.write(result.total, summary, prefix="eval/")
    writer.close()
    if jax.process_index() == 0:
        (workdir / "eval.json").write_text(json.dumps(summary, indent=2))
    return summary
