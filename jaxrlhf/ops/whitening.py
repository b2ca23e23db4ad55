"""Masked statistics, advantage whitening, and running moments for reward normalisation.

Masked positions never enter a statistic; they may hold any finite or non-finite value.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def _prep(x, mask):
    x = jnp.asarray(x, jnp.float32)
    m = jnp.ones(x.shape, bool) if mask is None else jnp.broadcast_to(jnp.asarray(mask), x.shape)
    m = m.astype(bool)
    return jnp.where(m, x, 0.0), m.astype(jnp.float32)


def masked_mean(x, mask=None, axis=None) -> jax.Array:
    """Mean over the positions where `mask` is nonzero (nan if there are none)."""
    x, m = _prep(x, mask)
    return jnp.sum(x, axis=axis) / jnp.sum(m, axis=axis)


def masked_var(x, mask=None, axis=None, *, unbiased: bool = True) -> jax.Array:
    """Variance over masked-in positions; `unbiased` applies Bessel's n / (n - 1)."""
    x, m = _prep(x, mask)
    n = jnp.sum(m, axis=axis)
    mean = jnp.sum(x, axis=axis, keepdims=True) / jnp.sum(m, axis=axis, keepdims=True)
    var = jnp.sum(m * jnp.square(x - mean), axis=axis) / n
    if unbiased:
        var = var * n / (n - 1.0)
    return var


def masked_whiten(x, mask=None, shift_mean: bool = True, *, eps: float = 1e-8) -> jax.Array:
    """Scale to unit variance over the masked-in positions (and zero mean if `shift_mean`).

    Whitening advantages per batch keeps the policy step size independent of the reward scale.
    Without `shift_mean` the mean is added back after scaling (TRL's convention, `(x - mean) / std +
    mean`), which does not preserve signs. With fewer than two masked-in positions the unbiased
    variance is undefined (0/0): the values are then only shifted (and come out as zero with
    `shift_mean`), never NaN. Masked positions come out as zero.
    """
    xf, m = _prep(x, mask)
    n = jnp.sum(m)
    mean = masked_mean(xf, m)
    var = jnp.where(n > 1, masked_var(xf, m, unbiased=True), 1.0)  # the 0/0 of n = 1 never reaches rsqrt
    scale = jnp.where(n > 1, jax.lax.rsqrt(var + eps), 1.0)
    out = (xf - mean) * scale
    if not shift_mean:
        out = out + mean
    return jnp.where(m > 0, out, 0.0)


def clip_advantages(advantages, clip: float | None) -> jax.Array:
    """Clip (whitened) advantages to [-clip, clip] to bound a single step (PPO-Max); None = off."""
    a = jnp.asarray(advantages, jnp.float32)
    return a if clip is None else jnp.clip(a, -clip, clip)


class RunningMoments(NamedTuple):
    """Mean, population variance and count of everything seen so far (float32 scalars)."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def init(cls) -> RunningMoments:
        return cls(jnp.float32(0.0), jnp.float32(1.0), jnp.float32(0.0))

    @property
    def std(self) -> jax.Array:
        return jnp.sqrt(self.var)


def update(state: RunningMoments, x, mask=None) -> RunningMoments:
    """Merge the moments of a batch into `state` (Chan et al.'s parallel variance formula).

    Exact for any split of the data into batches, unlike an exponential moving average. A batch
    with nothing masked in leaves the state unchanged.
    """
    xf, m = _prep(x, mask)
    n_b = jnp.sum(m)
    safe_n_b = jnp.maximum(n_b, 1.0)
    mean_b = jnp.sum(xf) / safe_n_b
    m2_b = jnp.sum(m * jnp.square(xf - mean_b))
    total = state.count + n_b
    safe_total = jnp.maximum(total, 1.0)
    delta = mean_b - state.mean
    mean = state.mean + delta * n_b / safe_total
    m2 = state.var * state.count + m2_b + jnp.square(delta) * state.count * n_b / safe_total
    var = jnp.where(total > 0, m2 / safe_total, state.var)
    return RunningMoments(mean, var, total)


def normalise_and_clip(
    x, state: RunningMoments, clip: float | None = None, *, shift_mean: bool = True, eps: float = 1e-8
) -> jax.Array:
    """`clip((x - mean) / std, -clip, clip)` with running moments: PPO-Max reward normalisation.

    Keeps the scale of rewards fed to GAE steady as the reward model's output drifts.
    """
    x = jnp.asarray(x, jnp.float32)
    centred = x - state.mean if shift_mean else x
    return clip_advantages(centred * jax.lax.rsqrt(state.var + eps), clip)
