"""Generalised advantage estimation (Schulman et al. 2016) over masked token sequences."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gae(
    rewards_BxT,
    values_BxT,
    mask_BxT,
    gamma,
    lam,
    last_value_B=None,
) -> tuple[jax.Array, jax.Array]:
    """Advantages and returns (`advantages + values`) by a reverse `lax.scan` over time.

    `delta_t = r_t + gamma * V_{t+1} - V_t`, `A_t = delta_t + gamma * lam * A_{t+1}`, where the
    carry `(A_{t+1}, V_{t+1})` is reset to zero by every masked step: a masked position yields
    zero advantage and return, and the real step just before it is terminal. So right padding
    after EOS ends the episode there, left padding (prompt, leading zeros) is simply skipped,
    and whatever rewards or values sit at padded positions never leak into real ones.

    `last_value_B` bootstraps a response still running at the last position (mask 1 at T-1, cut
    by the length limit rather than ended by EOS); without it such a response is terminal too.
    """
    r = jnp.asarray(rewards_BxT, jnp.float32)
    v = jnp.asarray(values_BxT, jnp.float32)
    m = jnp.asarray(mask_BxT).astype(bool)
    r, v = jnp.where(m, r, 0.0), jnp.where(m, v, 0.0)  # padding may hold garbage
    gamma = jnp.asarray(gamma, jnp.float32)
    lam = jnp.asarray(lam, jnp.float32)
    B = r.shape[0]
    next_v = jnp.zeros((B,), jnp.float32)
    if last_value_B is not None:
        next_v = jnp.asarray(last_value_B, jnp.float32) + next_v

    def step(carry, x):
        next_adv, next_value = carry
        r_t, v_t, m_t = x
        delta = r_t + gamma * next_value - v_t
        adv = jnp.where(m_t, delta + gamma * lam * next_adv, 0.0)
        return (adv, v_t), (adv, adv + v_t)

    init = (jnp.zeros((B,), jnp.float32), next_v)
    _, (adv_TxB, ret_TxB) = jax.lax.scan(step, init, (r.T, v.T, m.T), reverse=True)
    return adv_TxB.T, ret_TxB.T
