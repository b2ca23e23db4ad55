"""Kept for old imports: the default config blocks moved to `jaxrlhf/configs/base.py`.

Import them from there (`from jaxrlhf.configs.base import rm_defaults`); this module only re-exports.
"""

from jaxrlhf.configs.base import (  # noqa: F401
    constant_optim_block,
    data_block,
    distributed_block,
    mesh_block,
    model_block,
    optim_block,
    ppo_defaults,
    rm_defaults,
    run_block,
    sft_defaults,
    source_block,
    train_block,
    trainer_config,
)
