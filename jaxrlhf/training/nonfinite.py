"""What a trainer does about a non-finite loss or gradient: stop with a clear message, or skip the step.

The jitted steps never apply such an update (`accumulate.guarded_update`) and report a `nonfinite` flag.
The host collects the flags without waiting on each step and looks at them before logging or saving, so
a checkpoint is only written after every step since the last one was seen to be finite.
"""

from __future__ import annotations

import jax

POLICIES = ("stop", "skip")


class NonFiniteError(ValueError):
    """Raised in "stop" mode; the entry points print it as one line and exit 2."""


class NonFiniteGuard:
    def __init__(self, policy: str):
        if policy not in POLICIES:
            raise ValueError(f"train.on_nonfinite must be one of {POLICIES}, got {policy!r}")
        self.policy = policy
        self.skipped = 0
        self._pending: list = []

    def add(self, flag) -> None:
        self._pending.append(flag)

    def check(self, step: int, last_good: int | None) -> int:
        """Non-finite steps since the last check (counted as skipped); raises in "stop" mode."""
        n = int(sum(float(x) for x in jax.device_get(self._pending)))
        self._pending = []
        if n and self.policy == "stop":
            where = f"the last checkpoint is step {last_good}" if last_good is not None else "no checkpoint was saved"
            raise NonFiniteError(f"step {step}: the loss or a gradient is not finite ({n} step(s) since the last "
                                 f"check); stopped without saving, {where} (train.on_nonfinite=skip skips such "
                                 f"steps instead; a lower learning rate often cures it)")
        self.skipped += n
        return n
