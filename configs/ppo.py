"""Checkout twin of `jaxrlhf/configs/ppo.py`, the packaged config (it ships in the wheel): edit that one.

Kept so `--config=configs/ppo.py` works from the repository root.
"""

from jaxrlhf.configs.ppo import get_config  # noqa: F401
