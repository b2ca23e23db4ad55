"""Per-token KL estimators and the KL-penalty coefficient controllers.

The estimators estimate KL(policy || ref) from tokens sampled from the policy, one number per
token (Schulman, "Approximating KL divergence", 2020). With `x = ref_logp - logp`:

- k1 = -x: unbiased, high variance, negative on some tokens.
- k2 = x^2 / 2: biased, low variance, always >= 0.
- k3 = exp(x) - 1 - x: unbiased, low variance, always >= 0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logp_BxT, ref_logp_BxT, estimator: str = "k1") -> jax.Array:
    """Per-token KL estimate (float32); mask it yourself."""
    log_ratio = jnp.asarray(logp_BxT, jnp.float32) - jnp.asarray(ref_logp_BxT, jnp.float32)
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * jnp.square(log_ratio)
    if estimator == "k3":
        x = -log_ratio
        return jnp.expm1(x) - x  # expm1 keeps small differences exact
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {ESTIMATORS}")


class KLControllerState(NamedTuple):
    """The current KL-penalty coefficient beta (float32 scalar)."""

    coef: jax.Array


class AdaptiveKLController(NamedTuple):
    """Steers beta so the policy's KL to the reference tracks `target` (Ziegler et al. 2019).

    `e = clip(kl / target - 1, -0.2, 0.2)`, `beta <- beta * (1 + e * n_steps / horizon)`: a
    proportional controller whose relative change per update is bounded. Hashable settings, so
    it can be a static argument of a jitted step; the state is a pytree.
    """

    init_coef: float
    target: float
    horizon: float

    def init(self) -> KLControllerState:
        return KLControllerState(jnp.float32(self.init_coef))

    def update(self, state: KLControllerState, current_kl, n_steps) -> KLControllerState:
        """`current_kl`: mean per-sequence KL of the last batch; `n_steps`: its sample count."""
        error = jnp.clip(jnp.asarray(current_kl, jnp.float32) / self.target - 1.0, -0.2, 0.2)
        mult = 1.0 + error * jnp.asarray(n_steps, jnp.float32) / self.horizon
        return KLControllerState(state.coef * mult)


class FixedKLController(NamedTuple):
    """A constant beta, with the same interface as `AdaptiveKLController`."""

    init_coef: float

    def init(self) -> KLControllerState:
        return KLControllerState(jnp.float32(self.init_coef))

    def update(self, state: KLControllerState, current_kl, n_steps) -> KLControllerState:
        del current_kl, n_steps
        return state
