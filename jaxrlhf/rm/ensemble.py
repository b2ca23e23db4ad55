"""Several reward models scored as one, penalised by their disagreement: `mean - k * std` of their scores
per response (the uncertainty-weighted ensemble of Coste et al. 2023, "Reward Model Ensembles Help
Mitigate Overoptimization"). Where the models disagree the policy is paid less, which blunts the exploits
that one reward model's errors invite. The same `score_texts` / `score_global` as `RewardScorer`, so PPO and
the critic-free trainers take either.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from jaxrlhf.rm.load import TrainedRM, load_trained_rm
from jaxrlhf.rm.scoring import RewardScorer


class EnsembleScorer:
    def __init__(self, scorers: Sequence[RewardScorer], k: float):
        if len(scorers) < 2:
            raise ValueError(f"an ensemble needs at least 2 reward models, got {len(scorers)}")
        if k < 0:
            raise ValueError(f"reward_model.uncertainty_k={k} must be >= 0 (0: the plain mean)")
        self.scorers, self.k = list(scorers), float(k)

    def score_texts(self, prompts, responses) -> np.ndarray:
        scores_MxN = np.stack([s.score_texts(prompts, responses) for s in self.scorers]).astype(np.float64)
        return (scores_MxN.mean(0) - self.k * scores_MxN.std(0)).astype(np.float32)

    def score_global(self, prompts, responses, mesh):
        scores_MxN = jnp.stack([s.score_global(prompts, responses, mesh) for s in self.scorers])
        return jnp.mean(scores_MxN, 0) - self.k * jnp.std(scores_MxN, 0)


def reward_scorer(rm_cfg, rm: TrainedRM, mesh, max_length: int):
    """The scorer a trainer's `reward_model` block asks for: `rm` alone, or with `reward_model.ensemble`
    (comma-separated exports or workdirs) the uncertainty-penalised ensemble of `rm` and those."""
    main = rm.scorer(max_length=max_length)
    extra = [p.strip() for p in rm_cfg.get("ensemble", "").split(",") if p.strip()]
    if not extra:
        return main
    others = [load_trained_rm(p, mesh, dtype=rm_cfg.get("dtype", "auto"), param_dtype=rm_cfg.get("param_dtype", "auto"))
              for p in extra]
    return EnsembleScorer([main, *(o.scorer(max_length=max_length) for o in others)],
                          rm_cfg.get("uncertainty_k", 1.0))
