"""Guardrails against over-optimisation that watch a run from the host loop.

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


def kl_guard(train_cfg) -> KLGuard:
    return KLGuard(float(train_cfg.get("max_kl_per_seq", 0.0)), train_cfg.get("on_max_kl", "stop"))
