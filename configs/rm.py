"""Checkout twin of `jaxrlhf/configs/rm.py`, the packaged config (it ships in the wheel): edit that one.

Kept so `--config=configs/rm.py` works from the repository root.
"""

from jaxrlhf.configs.rm import get_config  # noqa: F401
