"""One critic-free iteration as the host loop's step: (state, prompt batch, key) -> (state, metrics).

Sample G responses to each of the batch's prompts (one jitted program, the prompt's prefill shared by its
group), reward them on the host (reward functions in a pool, and/or the reward model's scorer), then one
jitted experience step (log-probs, reference log-probs, group advantages) and every minibatch update of the
iteration in one jitted program, as PPO's (`rl.ppo_step.scan_minibatches`). The held-out evaluation samples
greedily, one response per prompt, and reports each reward function's mean: for the arithmetic task the
exact-match accuracy.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxrlhf.infra.multihost import to_global, to_host
from jaxrlhf.infra.sharding import replicated
from jaxrlhf.rl.group_step import GroupRLConfig
from jaxrlhf.rl.ppo_iteration import summarise_updates
from jaxrlhf.rl.prompts import PromptSet
from jaxrlhf.rl.rollout import local_rows, response_texts
from jaxrlhf.rl.sampling import SamplingConfig
from jaxrlhf.rl.verifiable import RewardFunctions
from jaxrlhf.rm.scoring import RewardScorer


@dataclasses.dataclass(kw_only=True)
class Rewarder:
    """Weighted reward functions plus the reward model's score times `rm_weight` (when there is one)."""

    functions: RewardFunctions
    scorer: RewardScorer | None = None
    rm_weight: float = 1.0

    def __call__(self, prompts: list, texts: list[str], rows: list[dict], mesh) -> tuple[jax.Array, dict]:
        """(global float32 rewards of this process's rows, {name: global array of that part})."""
        parts: dict[str, np.ndarray] = {}
        total = np.zeros(len(texts), np.float32)
        if self.functions:
            total, parts = self.functions.score([p.text for p in prompts], texts, rows)
        arrays = to_global(dict(score=total, **{f"reward/{k}": v for k, v in parts.items()}), mesh)
        if self.scorer is not None:
            rm = self.scorer.score_global(prompts, texts, mesh)
            arrays["reward/rm"] = rm
            arrays["score"] = arrays["score"] + self.rm_weight * rm
        return arrays.pop("score"), arrays


@dataclasses.dataclass(kw_only=True)
class GroupIteration:
    actor_def: Any
    cfg: GroupRLConfig
    sampling: SamplingConfig  # what `sample` draws with (its stop tokens go into the export)
    sample: Callable        # (actor params, ids_BxP, mask_BxP, key) -> rollout of B*G rows
    greedy_sample: Callable  # the same, temperature 0 and one response per prompt: evaluation
    rewarder: Rewarder
    experience: Callable    # jitted rl.group_step experience
    update: Callable        # jitted (state, actor frozen, critic frozen (), experience, idx_NxM) -> (state, metrics_N)
    update_minibatch: Callable
    frozen_actor: Any
    reference: tuple        # (ref_def's state pair) or () when the reference is the actor's base
    tokenizer: Any
    mesh: jax.sharding.Mesh
    rollout_batch_size: int  # prompts per iteration, over all processes
    epochs: int
    minibatch_size: int     # responses per update
    eval_prompts: PromptSet | None = None
    eval_key: jax.Array | None = None
    last: dict = dataclasses.field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.rollout_batch_size * self.cfg.group_size

    def _actor(self, state):
        return state["actor"]["params"], self.frozen_actor

    def minibatch_order(self, key: jax.Array) -> np.ndarray:
        """[updates, minibatch_size] row indices: each epoch a permutation of the rollout's rows, or of its
        groups (each group's G rows in a row) when the forward passes share a group's prompt."""
        order_rng = np.random.default_rng(jax.device_get(jax.random.key_data(jax.random.fold_in(key, 1))))
        G = self.cfg.group_size if self.cfg.shared_prompt else 1
        perms = [(order_rng.permutation(self.rows // G)[:, None] * G + np.arange(G)).reshape(-1)
                 for _ in range(self.epochs)]
        return np.concatenate(perms).astype(np.int32).reshape(-1, self.minibatch_size)

    def __call__(self, state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        t0 = time.time()
        G = self.cfg.group_size
        idx_NxM = jax.device_put(self.minibatch_order(key), replicated(self.mesh))
        prompt_arrays = to_global({"ids": batch["ids_BxP"], "mask": batch["mask_BxP"]}, self.mesh)
        rollout = self.sample(self._actor(state), prompt_arrays["ids"], prompt_arrays["mask"],
                              jax.random.fold_in(key, 0))
        texts = response_texts(self.tokenizer, rollout)
        t_sample = time.time()
        prompts = [p for p in batch["prompts"] for _ in range(G)]
        rows = [r for r in batch.get("rows") or [{}] * len(batch["prompts"]) for _ in range(G)]
        score, parts = self.rewarder(prompts, texts, rows, self.mesh)
        self.last = {"prompts": prompts, "texts": texts, "scores": local_rows(score)}
        t_score = time.time()
        exp, exp_metrics = self.experience(self._actor(state), self.reference, rollout, score)
        jax.block_until_ready((exp, exp_metrics))
        t_experience = time.time()
        state, update_metrics_N = self.update(state, self.frozen_actor, (), exp, idx_NxM)
        fetched = jax.device_get({"experience": exp_metrics, "updates": update_metrics_N})
        t_update = time.time()
        metrics = {k: float(v) for k, v in fetched["experience"].items()}
        metrics.update({k: float(to_host(v).mean()) for k, v in parts.items()})
        metrics.update(summarise_updates(fetched["updates"]))
        metrics.update(sample_seconds=t_sample - t0, score_seconds=t_score - t_sample,
                       experience_seconds=t_experience - t_score, update_seconds=t_update - t_experience,
                       iteration_seconds=time.time() - t0)
        return state, metrics

    def evaluate(self, state: dict) -> dict:
        """Greedy responses to the held-out prompts, each reward part's mean (the same prompts every time)."""
        scores, parts, lengths = [], {}, []
        for k in range(self.eval_prompts.batches_per_epoch):
            b = self.eval_prompts.batch(k, jax.process_index(), jax.process_count())
            arrays = to_global({"ids": b["ids_BxP"], "mask": b["mask_BxP"]}, self.mesh)
            roll = self.greedy_sample(self._actor(state), arrays["ids"], arrays["mask"], self.eval_key)
            rows = b.get("rows") or [{}] * len(b["prompts"])
            score, part = self.rewarder(b["prompts"], response_texts(self.tokenizer, roll), rows, self.mesh)
            scores.append(to_host(score))
            for name, v in part.items():
                parts.setdefault(name, []).append(to_host(v))
            lengths.append(to_host(roll["response_mask_BxN"]).sum(-1))
        out = {"reward_mean": float(np.concatenate(scores).mean()),
               "response_length": float(np.concatenate(lengths).mean()), "n": int(sum(len(s) for s in scores))}
        out.update({name: float(np.concatenate(v).mean()) for name, v in parts.items()})
        return out
