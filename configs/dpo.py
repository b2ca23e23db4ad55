"""Checkout twin of `jaxrlhf/configs/dpo.py`, the packaged config (it ships in the wheel): edit that one.

Kept so `--config=configs/dpo.py` works from the repository root.
"""

from jaxrlhf.configs.dpo import get_config  # noqa: F401
