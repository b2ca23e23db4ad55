"""One PPO iteration as the host loop's step: (state, prompt batch, key) -> (state, metrics).

Sample responses to the batch's prompts (jitted, KV cache), score them with the frozen reward model,
compute log-probs, values, shaped rewards and GAE advantages (one jitted step), then `epochs` passes of
shuffled minibatch updates of actor and critic, all in one jitted program, stopping early when a minibatch
crossed the approximate-KL bound (that minibatch is not applied, see `rl.ppo_step`); last, the adaptive KL
coefficient moves. The host waits on the device once per phase (sampling, scoring, experience, updates), to
time it; every metric of the iteration comes back in one transfer.
The held-out evaluation and the sample table live here too: they sample with the same function.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrlhf.infra.multihost import to_global, to_host
from jaxrlhf.infra.sharding import replicated
from jaxrlhf.ops import whitening
from jaxrlhf.ops.kl import KLControllerState
from jaxrlhf.rl.prompts import PromptSet
from jaxrlhf.rl.rollout import local_rows, response_texts
from jaxrlhf.rl.sampling import SamplingConfig
from jaxrlhf.rm.scoring import RewardScorer


@dataclasses.dataclass(frozen=True)
class Frozen:
    """What the updates never change: the actor's and critic's frozen leaves (LoRA base, untrained heads)
    and the reference policy's state."""
    actor: Any
    critic: Any
    reference: Any


@dataclasses.dataclass(kw_only=True)
class PPOIteration:
    actor_def: Any        # the actor's nnx graphdef, to merge its trained state back into a model
    sampling: SamplingConfig
    sample: Callable      # (actor params, ids_BxP, mask_BxP, key) -> rollout dict
    scorer: RewardScorer
    experience: Callable  # jitted rl.experience step
    update: Callable      # jitted (state, actor frozen, critic frozen, experience, idx_NxM) -> (state, metrics_N):
                          # every minibatch of the iteration in one program (rl.ppo_step.scan_minibatches)
    update_minibatch: Callable  # the one-minibatch update it scans, on rows idx_M (unjitted), for replays
    controller: Any       # ops.kl Fixed/AdaptiveKLController
    frozen: Frozen
    tokenizer: Any
    mesh: jax.sharding.Mesh
    rollout_batch_size: int  # prompts per iteration, over all processes
    epochs: int
    minibatch_size: int
    eval_prompts: PromptSet | None = None
    eval_key: jax.Array | None = None
    # The latest iteration's prompts, response texts and this process's scores, for the sample table.
    last: dict = dataclasses.field(default_factory=dict)

    def _actor(self, state):
        return state["actor"]["params"], self.frozen.actor

    def minibatch_order(self, key: jax.Array) -> np.ndarray:
        """idx_NxM: each epoch's shuffled minibatches in turn (N = epochs * B / M). Every process draws the same
        order: the seed is the iteration's key."""
        order_rng = np.random.default_rng(jax.device_get(jax.random.key_data(jax.random.fold_in(key, 1))))
        perms = [order_rng.permutation(self.rollout_batch_size) for _ in range(self.epochs)]
        return np.concatenate(perms).astype(np.int32).reshape(-1, self.minibatch_size)

    def __call__(self, state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        t0 = time.time()
        # First, while the device is idle: reading the key back then waits on nothing queued.
        idx_NxM = jax.device_put(self.minibatch_order(key), replicated(self.mesh))
        prompt_arrays = to_global({"ids": batch["ids_BxP"], "mask": batch["mask_BxP"]}, self.mesh)
        rollout = self.sample(self._actor(state), prompt_arrays["ids"], prompt_arrays["mask"],
                              jax.random.fold_in(key, 0))
        # One sync per phase, at its end: a read of its output where the host needs it anyway, or (experience) a
        # wait only to time it, which costs no more than the next dispatch's overlap with the phase's tail.
        texts = response_texts(self.tokenizer, rollout)  # reads the tokens back: sampling has finished
        t_sample = time.time()
        score = self.scorer.score_global(batch["prompts"], texts, self.mesh)
        self.last = {"prompts": batch["prompts"], "texts": texts, "scores": local_rows(score)}  # scoring's sync
        t_score = time.time()
        exp, moments, exp_metrics = self.experience(
            self._actor(state), (self.frozen.reference,), (state["critic"]["params"], self.frozen.critic), rollout,
            score, state["kl_coef"], whitening.RunningMoments(**state["moments"]))
        state["moments"] = moments._asdict()
        jax.block_until_ready((exp, exp_metrics))  # the experience phase's sync
        t_experience = time.time()

        state, update_metrics_N = self.update(state, self.frozen.actor, self.frozen.critic, exp, idx_NxM)
        state["kl_coef"] = self.controller.update(KLControllerState(state["kl_coef"]), exp_metrics["kl_k1_per_seq"],
                                                  self.rollout_batch_size).coef
        # The update phase's sync: every metric of the iteration in one transfer.
        fetched = jax.device_get({"experience": exp_metrics, "updates": update_metrics_N})
        t_update = time.time()

        metrics = {k: float(v) for k, v in fetched["experience"].items()}
        metrics.update(summarise_updates(fetched["updates"]))
        metrics.update(sample_seconds=t_sample - t0, score_seconds=t_score - t_sample,
                       experience_seconds=t_experience - t_score, update_seconds=t_update - t_experience,
                       rollout_seconds=t_experience - t0, iteration_seconds=time.time() - t0)
        return state, metrics

    def evaluate(self, state: dict) -> dict:
        """Fresh rollouts on the held-out prompts, the same keys every time: the curve to watch."""
        scores, lengths, ended = [], [], []
        for k in range(self.eval_prompts.batches_per_epoch):
            b = self.eval_prompts.batch(k, jax.process_index(), jax.process_count())
            arrays = to_global({"ids": b["ids_BxP"], "mask": b["mask_BxP"]}, self.mesh)
            roll = self.sample(self._actor(state), arrays["ids"], arrays["mask"], jax.random.fold_in(self.eval_key, k))
            scores.append(to_host(self.scorer.score_global(b["prompts"], response_texts(self.tokenizer, roll),
                                                           self.mesh)))
            lengths.append(to_host(roll["response_mask_BxN"]).sum(-1))
            ended.append(to_host(roll["ended_B"]))
        scores = np.concatenate(scores)
        return {"score_mean": float(scores.mean()), "score_std": float(scores.std()),
                "response_length": float(np.concatenate(lengths).mean()),
                "ended_frac": float(np.concatenate(ended).mean()), "n": len(scores)}


def summarise_updates(metrics_N: dict[str, np.ndarray]) -> dict:
    """The iteration's update metrics from the per-minibatch ones on the host: means (and the `nonfinite` sum) over
    the minibatches that `counted` (up to the one that crossed the KL bound, see `rl.ppo_step.scan_minibatches`)."""
    counted = metrics_N["counted"] > 0
    # float64 means of the float32 values, as a mean of Python floats gives them.
    summary = {k: float(np.mean(v[counted].astype(np.float64))) for k, v in metrics_N.items() if k != "counted"}
    summary.update(nonfinite=float(metrics_N["nonfinite"][counted].sum()), minibatch_updates=int(counted.sum()),
                   early_stop=float(metrics_N["kl_skipped"][counted].any()))
    return summary


@dataclasses.dataclass(kw_only=True)
class SampleTable:
    """A loop hook: every `every` iterations (and the run's first), a few of the latest iteration's prompts,
    responses and scores, appended to `samples.jsonl` and printed."""
    iteration: PPOIteration
    path: Path
    every: int
    shown: int
    start: int

    def __call__(self, done: int, batch: dict, metrics: dict, seconds: float) -> None:
        if not self.every or not (done % self.every == 0 or done == self.start + 1):
            return
        last = self.iteration.last
        rows = [{"prompt": p.messages[-1][1][-200:], "response": t, "score": round(float(s), 4)}
                for p, t, s in list(zip(last["prompts"], last["texts"], last["scores"]))[:self.shown]]
        if jax.process_index() != 0:
            return
        with open(self.path, "a") as f:
            for row in rows:
                f.write(json.dumps(dict(row, iteration=done)) + "\n")
        from tqdm.auto import tqdm

        tqdm.write(f"iteration {done} samples:\n" + "\n".join(
            f"  [{r['score']:+.3f}] {r['prompt'][-60:]!r} -> {r['response'][:100]!r}" for r in rows))
