"""Per-token PPO rewards from one reward-model score per response (PPO-Max shaping).

    score_B --(missing-EOS penalty)--> (running normalisation, clip, scale) --> placed on the last real
    response token, plus `-beta * KL_t` on every response token.

Everything float32: a reward tensor built from an int array would silently truncate the scores.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxrlhf.models.heads import last_token_index
from jaxrlhf.ops import whitening
from jaxrlhf.ops.kl import kl_penalty


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardShaping:
    """Hashable: a static argument of the jitted experience step. Built by keyword only: two swapped floats
    would otherwise pass unnoticed."""

    normalise: bool = True         # running mean/std of scores (PPO-Max reward normalisation)
    shift_mean: bool = True        # subtract the running mean too, not only divide by the std
    clip: float = 5.0              # clip normalised scores to [-clip, clip]; <= 0: off
    scale: float = 1.0             # multiply the final score
    missing_eos_penalty: float = 0.0  # subtracted from the score of a response that never ended
    kl_estimator: str = "k1"


def process_scores(score_B, ended_B, moments: whitening.RunningMoments, shaping: RewardShaping):
    """(final scores_B, updated moments). Moments see the penalised raw scores of this batch first."""
    score = jnp.asarray(score_B, jnp.float32)
    score = score - shaping.missing_eos_penalty * (1.0 - jnp.asarray(ended_B, jnp.float32))
    if shaping.normalise:
        moments = whitening.update(moments, score)
        score = whitening.normalise_and_clip(score, moments, shaping.clip if shaping.clip > 0 else None,
                                             shift_mean=shaping.shift_mean)
    elif shaping.clip > 0:
        score = jnp.clip(score, -shaping.clip, shaping.clip)
    return score * shaping.scale, moments


def token_rewards(score_B, logp_BxN, ref_logp_BxN, mask_BxN, kl_coef, estimator: str = "k1"):
    """(rewards_BxN, kl_BxN): `-kl_coef * KL_t` on each response token, the score added on the last real one.

    Masked positions carry zero reward and zero KL.
    """
    mask = jnp.asarray(mask_BxN).astype(bool)
    kl = jnp.where(mask, kl_penalty(logp_BxN, ref_logp_BxN, estimator), 0.0)
    rewards = -jnp.asarray(kl_coef, jnp.float32) * kl
    N = mask.shape[-1]
    last_B = last_token_index(mask.astype(jnp.int32))
    has_token_B = jnp.any(mask, axis=-1)
    on_last = (jnp.arange(N)[None, :] == last_B[:, None]) & has_token_B[:, None]
    rewards = rewards + jnp.where(on_last, jnp.asarray(score_B, jnp.float32)[:, None], 0.0)
    return rewards, kl
