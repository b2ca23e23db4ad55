"""Checkout twin of `jaxrlhf/configs/grpo_arithmetic.py`, the packaged config (it ships in the wheel): edit that
one.

Kept so `--config=configs/grpo_arithmetic.py` works from the repository root.
"""

from jaxrlhf.configs.grpo_arithmetic import get_config  # noqa: F401
