"""Guardrails against over-optimisation that watch a run from the host loop.

`GoldRewardHook`: every `train.gold_every` iterations a held-out "gold" reward model (`reward_model.gold`, one
the policy never trains against) scores the latest rollouts, logged as `gold/score_mean` beside the training
reward: when the training reward keeps rising and the gold one falls, the policy is exploiting its reward.

`KLGuard`: when the KL to the reference per sequence (`kl_k1_per_seq`, the summed log-ratio of the fresh
rollout) passes `train.max_kl_per_seq`, the run warns, or saves a checkpoint and stops
(`train.on_max_kl`): the seed's "early stopping based on KL divergence", for PPO and the critic-free
trainers alike. A stopped run resumes from that checkpoint; raise the bound or the KL coefficient first.
"""

from __future__ import annotations

import dataclasses
import sys

from jaxrlhf.infra import preemption

ON_MAX_KL = ("stop", "warn")


@dataclasses.dataclass
class KLGuard:
    bound: float
    action: str = "stop"
    key: str = "kl_k1_per_seq"
    warned: bool = False

    def __post_init__(self):
        if self.action not in ON_MAX_KL:
            raise ValueError(f"train.on_max_kl must be one of {ON_MAX_KL}, got {self.action!r}")

    def __call__(self, done: int, batch: dict, metrics: dict, seconds: float) -> None:
        if self.bound <= 0 or self.key not in metrics or metrics[self.key] <= self.bound:
            return
        reason = (f"iteration {done}: KL to the reference {metrics[self.key]:.2f} nats per sequence passed "
                  f"train.max_kl_per_seq={self.bound}")
        if self.action == "stop":
            preemption.request(reason)
        elif not self.warned:  # once: every later iteration would say the same
            print(f"\nwarning: {reason} (train.on_max_kl=warn: training goes on)", file=sys.stderr, flush=True)
            self.warned = True


@dataclasses.dataclass
class GoldRewardHook:
    iteration: object       # PPOIteration or GroupIteration: its `last` holds the latest prompts and texts
    scorer: object          # a RewardScorer (or ensemble) of the gold reward model
    writer: object          # the run's MetricsWriter
    every: int
    mesh: object

    def __call__(self, done: int, batch: dict, metrics: dict, seconds: float) -> None:
        if not self.every or done % self.every:
            return
        from jaxrlhf.infra.multihost import to_host

        last = self.iteration.last
        gold = to_host(self.scorer.score_global(last["prompts"], last["texts"], self.mesh))
        self.writer.write(done, {"score_mean": float(gold.mean()), "score_std": float(gold.std())}, prefix="gold/")


def gold_hook(config, iteration, writer, mesh):
    """The gold-reward hook a config asks for (`reward_model.gold` and `train.gold_every`), or None."""
    path, every = config.reward_model.get("gold", ""), config.train.get("gold_every", 0)
    if not path:
        return None
    if every <= 0:
        raise ValueError(f"reward_model.gold={path} is scored every train.gold_every iterations: set it > 0")
    from jaxrlhf.rm.load import load_trained_rm

    rm_cfg = config.reward_model
    gold = load_trained_rm(path, mesh, dtype=rm_cfg.get("dtype", "auto"), param_dtype=rm_cfg.get("param_dtype", "auto"))
    return GoldRewardHook(iteration, gold.scorer(max_length=rm_cfg.max_length), writer, every, mesh)


def kl_guard(train_cfg) -> KLGuard:
    return KLGuard(float(train_cfg.get("max_kl_per_seq", 0.0)), train_cfg.get("on_max_kl", "stop"))
