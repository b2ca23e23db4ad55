"""Checkout twin of `jaxrlhf/configs/rm_smollm2.py`, the packaged config (it ships in the wheel): edit that one.

Kept so `--config=configs/rm_smollm2.py` works from the repository root.
"""

from jaxrlhf.configs.rm_smollm2 import get_config  # noqa: F401
