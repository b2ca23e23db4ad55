"""One PPO iteration as the host loop's step: (state, prompt batch, key) -> (state, metrics).

Sample responses to the batch's prompts (jitted, KV cache), score them with the frozen reward model,
compute log-probs, values, shaped rewards and GAE advantages (one jitted step), then `epochs` passes of
shuffled minibatch updates of actor and critic, stopping early when a minibatch crossed the approximate-KL
bound (that minibatch is not applied, see `rl.ppo_step`); last, the adaptive KL coefficient moves.
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
    update: Callable      # jitted (state, actor frozen, critic frozen, experience, idx_M) -> (state, metrics)
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

    def __call__(self, state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        t0 = time.time()
        prompt_arrays = to_global({"ids": batch["ids_BxP"], "mask": batch["mask_BxP"]}, self.mesh)
        rollout = self.sample(self._actor(state), prompt_arrays["ids"], prompt_arrays["mask"],
                              jax.random.fold_in(key, 0))
        texts = response_texts(self.tokenizer, rollout)  # reads the tokens back: sampling has finished
        t_sample = time.time() - t0
        score = self.scorer.score_global(batch["prompts"], texts, self.mesh)
        exp, moments, exp_metrics = self.experience(
            self._actor(state), (self.frozen.reference,), (state["critic"]["params"], self.frozen.critic), rollout,
            score, state["kl_coef"], whitening.RunningMoments(**state["moments"]))
        state["moments"] = moments._asdict()
        t_rollout = time.time() - t0

        update_metrics, stopped_early = [], False
        B = self.rollout_batch_size
        # Every process draws the same order: the seed is the iteration's key.
        order_rng = np.random.default_rng(np.asarray(jax.random.key_data(jax.random.fold_in(key, 1))))
        for _ in range(self.epochs):
            perm = order_rng.permutation(B)
            for k in range(0, B, self.minibatch_size):
                idx_M = jax.device_put(perm[k:k + self.minibatch_size].astype(np.int32), replicated(self.mesh))
                state, m = self.update(state, self.frozen.actor, self.frozen.critic, exp, idx_M)
                update_metrics.append(m)
                if float(m["kl_skipped"]):  # that minibatch was not applied (see rl.ppo_step)
                    stopped_early = True
                    break
            if stopped_early:
                break
        state["kl_coef"] = self.controller.update(KLControllerState(state["kl_coef"]), exp_metrics["kl_k1_per_seq"],
                                                  B).coef

        self.last = {"prompts": batch["prompts"], "texts": texts, "scores": local_rows(score)}
        metrics = {k: float(v) for k, v in jax.device_get(exp_metrics).items()}
        metrics.update({k: float(np.mean([float(m[k]) for m in update_metrics])) for k in update_metrics[0]})
        metrics.update(nonfinite=float(sum(float(m["nonfinite"]) for m in update_metrics)),
                       minibatch_updates=len(update_metrics), early_stop=float(stopped_early),
                       sample_seconds=t_sample, rollout_seconds=t_rollout, iteration_seconds=time.time() - t0)
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
