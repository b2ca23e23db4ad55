"""The one host loop every trainer runs (reward model, SFT, PPO, and those to come).

A trainer supplies `step(state, batch, key) -> (state, metrics)`: a jitted step behind a thin wrapper for
the supervised trainers, a whole rollout-and-update iteration for PPO. The loop owns the rest, so every
trainer stops, resumes and reports alike: logging every `log_every` steps (and the first), held-out
evaluation, the non-finite guard, the preemption vote agreed by all hosts, checkpoints, the progress bar,
the "rerun to resume" line, and hooks that benchmarks and tests time or record through.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np

from jaxrlhf.infra import preemption
from jaxrlhf.infra.checkpoint import Checkpointer
from jaxrlhf.infra.metrics import MetricsWriter
from jaxrlhf.infra.runtime import progress
from jaxrlhf.training.nonfinite import NonFiniteGuard
from jaxrlhf.training.observe import Profiler, StepCost, batch_tokens

StepFn = Callable[[dict, dict, jax.Array], tuple[dict, dict]]
# hook(steps done, the host batch of that step, its metrics as the step returned them, seconds of the step,
# from asking for the batch to the end of its logging: synchronised with the device when the step was logged)
StepHook = Callable[[int, dict, dict, float], None]


def host_scalar(x) -> float:
    """A replicated (jit output) scalar on the host, also when other hosts hold copies."""
    return float(np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x)


def mean_of_window(window: list[dict]) -> dict:
    """The mean of each metric over a window of steps."""
    return {k: float(np.mean([host_scalar(m[k]) for m in window])) for k in window[0]}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cadence:
    """When the loop does what, in steps (PPO: iterations)."""
    total: int                   # steps of the whole run
    log_every: int
    eval_every: int = 0          # 0: no held-out evaluation between the first and the last step
    eval_at_start: bool = False  # before the first step of a fresh run: the baseline
    eval_at_end: bool = False    # after the last step (off where the trainer's own final evaluation follows)
    vote_every: int = 1          # steps between the hosts' preemption votes (each vote is a collective)
    stop_after: int = 0          # >0: save and stop after this step, as a preemption would
    on_nonfinite: str = "stop"   # training.nonfinite.POLICIES

    @classmethod
    def of(cls, train_cfg, total: int, **kw) -> Cadence:
        """The keys every trainer's `train` block has, plus the trainer's own choices in `kw`."""
        return cls(total=total, log_every=train_cfg.log_every, stop_after=train_cfg.stop_after,
                   on_nonfinite=train_cfg.on_nonfinite, **kw)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Reporting:
    """How a trainer's step metrics become log lines."""
    desc: str                                       # progress bar label, e.g. "train_rm"
    prefix: str                                     # metrics.jsonl key prefix, e.g. "train/"
    # window of step metrics since the last log -> (metrics to log, units done in it: pairs, tokens, 0)
    summarise: Callable[[list[dict]], tuple[dict, float]]
    unit: str = ""                                  # logs `<unit>_per_s` when set
    postfix: Callable[[dict], dict] = lambda logged: {}  # the progress bar's fields
    step_name: str = "step"                         # "iteration" for PPO, in the messages


@dataclasses.dataclass
class LoopResult:
    state: dict
    done: int                  # steps finished (== total unless stopped early)
    total: int
    seconds: float             # wall time of the loop
    units_per_s: float | None  # throughput after the first (compiling) step, in the trainer's unit
    skipped: int               # non-finite steps skipped (train.on_nonfinite=skip)
    last_logged: dict          # the last window's logged metrics

    @property
    def finished(self) -> bool:
        return self.done >= self.total


@dataclasses.dataclass(kw_only=True)
class HostLoop:
    step: StepFn
    cadence: Cadence
    reporting: Reporting
    ckpt: Checkpointer
    writer: MetricsWriter
    seed: int
    evaluate: Callable[[dict], dict] | None = None  # state -> held-out metrics
    hooks: Sequence[StepHook] = ()
    cost: StepCost | None = None       # logs tokens/s, model FLOP/s, MFU and peak memory when given
    profiler: Profiler | None = None   # train.profile_steps

    def run(self, state: dict, batches: Iterator[dict], start: int) -> LoopResult:
        """Steps `start` .. `cadence.total` (or until stopped); `batches` yields step `start`'s batch first."""
        c, r = self.cadence, self.reporting
        base_key = jax.random.key(self.seed)
        preemption.install_handlers()
        guard = NonFiniteGuard(c.on_nonfinite)
        bar = progress(total=c.total, initial=start, desc=r.desc)
        if self.evaluate is not None and c.eval_at_start and start == 0:
            self._evaluate(state, 0, bar)
        window, logged, t0, t_window = [], {}, time.time(), time.time()
        steady_units = steady_seconds = 0.0
        window_tokens = 0
        done = start
        for step in range(start, c.total):
            t_step = time.time()
            batch = next(batches)
            if self.profiler:
                self.profiler.before(step + 1)
            state, metrics = self.step(state, batch, jax.random.fold_in(base_key, step))
            if self.profiler:
                self.profiler.after(step + 1, state)
            window.append(metrics)
            window_tokens += batch_tokens(batch) if self.cost else 0
            guard.add(metrics["nonfinite"])
            done = step + 1
            if step == start or done % c.log_every == 0 or done == c.total:
                guard.check(done, self.ckpt.latest_step())
                logged, units = r.summarise(window)
                if c.on_nonfinite == "skip":
                    logged["skipped_nonfinite"] = guard.skipped
                seconds = time.time() - t_window
                if r.unit and step > start:  # the first step compiles: keep it out of the throughput
                    steady_units, steady_seconds = steady_units + units, steady_seconds + seconds
                    logged[f"{r.unit}_per_s"] = units / seconds
                if self.cost and step > start:
                    logged.update(self.cost.metrics(window_tokens * jax.process_count(), seconds))
                self.writer.write(done, logged, prefix=r.prefix)
                bar.set_postfix(**r.postfix(logged))
                window, t_window, window_tokens = [], time.time(), 0
            for hook in self.hooks:
                hook(done, batch, metrics, time.time() - t_step)
            paused = time.time()  # evaluation and saving stay out of the throughput
            if self.evaluate is not None and ((c.eval_every and done % c.eval_every == 0 and done != c.total)
                                              or (c.eval_at_end and done == c.total)):
                self._evaluate(state, done, bar)
            stopping = preemption.should_stop_everywhere(done, c.vote_every) or done == c.stop_after
            if self.ckpt.should_save(done) or done == c.total or stopping:
                guard.check(done, self.ckpt.latest_step())
                self.ckpt.save(done, state, {"step": done})
            t_window += time.time() - paused
            bar.update(1)
            if stopping:
                break
        bar.close()
        if self.profiler:
            self.profiler.close()
        self.ckpt.close()
        if done < c.total:
            print(f"stopped at {r.step_name} {done} of {c.total}; checkpoint saved, rerun the same command to resume")
        return LoopResult(state, done, c.total, time.time() - t0,
                          steady_units / steady_seconds if steady_seconds else None, guard.skipped, logged)

    def _evaluate(self, state: dict, done: int, bar) -> None:
        summary = self.evaluate(state)
        self.writer.write(done, summary, prefix="eval/")
        bar.write(f"{self.reporting.step_name} {done}: held-out {json.dumps(summary)}")
