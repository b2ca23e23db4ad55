"""The host step loop of the supervised trainers (reward model, SFT).

Runs jitted steps from a resumable batch stream; logs every `log_every` steps (and the first step),
evaluates every `eval_every` steps, stops on a non-finite step or a preemption agreed by all hosts,
checkpoints, and keeps compiling steps, evaluation and saving out of the throughput.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Callable, Iterator

import jax
import numpy as np

from jaxrlhf.infra import preemption
from jaxrlhf.infra.checkpoint import Checkpointer
from jaxrlhf.infra.metrics import MetricsWriter
from jaxrlhf.infra.runtime import progress
from jaxrlhf.infra.multihost import to_global
from jaxrlhf.training.nonfinite import NonFiniteGuard


def host_scalar(x) -> float:
    """A replicated (jit output) scalar on the host, also when other hosts hold copies."""
    return float(np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x)


@dataclasses.dataclass
class LoopResult:
    state: dict
    done: int               # steps finished (== total_steps unless stopped early)
    seconds: float          # wall time of the loop
    units_per_s: float | None  # throughput after the first (compiling) step, in the trainer's unit
    skipped: int            # non-finite steps skipped (train.on_nonfinite=skip)


def run_steps(train_step: Callable, state: dict, frozen, batches: Iterator[dict], *, mesh, train_cfg,
              start: int, total_steps: int, steps_per_epoch: int, seed: int, ckpt: Checkpointer,
              writer: MetricsWriter, summarise: Callable[[list[dict]], tuple[dict, float]], unit: str,
              postfix: Callable[[dict], dict], evaluate: Callable[[dict], dict] | None, desc: str) -> LoopResult:
    """summarise(window of step metrics) -> (logged metrics, units done: pairs or tokens);
    evaluate(state) -> held-out metrics, or None for no evaluation during training."""
    base_key = jax.random.key(seed)
    eval_every = train_cfg.eval_every or steps_per_epoch
    preemption.install_sigterm_handler()
    guard = NonFiniteGuard(train_cfg.on_nonfinite)
    window, t0, t_window = [], time.time(), time.time()
    steady_units = steady_seconds = 0.0
    bar = progress(total=total_steps, initial=start, desc=desc)
    done = start
    for step in range(start, total_steps):
        state, metrics = train_step(state, frozen, to_global(next(batches), mesh), jax.random.fold_in(base_key, step))
        window.append(metrics)
        guard.add(metrics["nonfinite"])
        done = step + 1
        if step == start or done % train_cfg.log_every == 0 or done == total_steps:
            guard.check(done, ckpt.latest_step())
            logged, units = summarise(window)
            seconds = time.time() - t_window
            if step > start:  # the first step compiles: keep it out of the throughput
                steady_units, steady_seconds = steady_units + units, steady_seconds + seconds
                logged[f"{unit}_per_s"] = units / seconds
            writer.write(done, logged, prefix="train/")
            bar.set_postfix(**postfix(logged))
            window, t_window = [], time.time()
        paused = time.time()  # evaluation and saving stay out of the throughput
        if evaluate is not None and done % eval_every == 0 and done != total_steps:
            summary = evaluate(state)
            writer.write(done, summary, prefix="eval/")
            bar.write(f"step {done}: held-out {json.dumps(summary)}")
        stopping = preemption.should_stop_everywhere(done, train_cfg.log_every) or done == train_cfg.stop_after
        if ckpt.should_save(done) or done == total_steps or stopping:
            guard.check(done, ckpt.latest_step())
            ckpt.save(done, state, {"step": done, "epoch": step // steps_per_epoch})
        t_window += time.time() - paused
        bar.update(1)
        if stopping:
            break
    bar.close()
    ckpt.close()
    return LoopResult(state, done, time.time() - t0, steady_units / steady_seconds if steady_seconds else None,
                      guard.skipped)
