"""Checkout twin of `jaxrlhf/configs/sft.py`, the packaged config (it ships in the wheel): edit that one.

Kept so `--config=configs/sft.py` works from the repository root.
"""

from jaxrlhf.configs.sft import get_config  # noqa: F401
