"""Decoder reward model: SmolLM2-135M-Instruct with LoRA on the HH-RLHF harmless comparisons.

    python -m jaxrlhf.assets fetch smollm2
    python -m jaxrlhf.train_rm --config=configs/rm_smollm2.py

The reward is read at the EOS appended to each response. LoRA adapts the attention projections; the
scalar head trains in full.
"""

from jaxrlhf.configs.base import rm_defaults


def get_config():
    config = rm_defaults()
    config.workdir = "workdir/rm_smollm2"
    config.model.name = "smollm2"
    config.model.train_mode = "lora"
    config.model.lora_rank = 16
    config.model.lora_alpha = 32.0
    config.model.lora_targets = "q_proj|k_proj|v_proj|o_proj"
    config.data.source = "builtin:hh_rlhf_harmless"
    config.data.eval_size = 512
    config.data.max_length = 256
    config.data.batch_size = 16
    config.optim.learning_rate = 2e-4
    config.train.epochs = 1
    return config
