"""Supervised fine-tuning: SmolLM2-135M-Instruct with LoRA on the chosen HH-RLHF harmless dialogues.

    python -m jaxrlhf.assets fetch smollm2
    python -m jaxrlhf.train_sft --config=configs/sft.py

A short run sized for a laptop CPU (30 steps of 8 sequences, a few minutes); raise
`train.max_steps` (or set it to 0 and use `train.epochs`) for a real one. The loss covers the
assistant's final turn and its EOS only. The export in `workdir/sft/export` is an HF causal LM.
"""

from jaxrlhf.configs.base import sft_defaults


def get_config():
    config = sft_defaults()
    config.workdir = "workdir/sft"
    config.model.name = "smollm2"
    config.model.train_mode = "lora"
    config.model.lora_rank = 16
    config.model.lora_alpha = 32.0
    config.model.lora_targets = "q_proj|k_proj|v_proj|o_proj"
    config.data.source = "builtin:hh_rlhf_harmless"
    config.data.format = "hh"
    config.data.eval_size = 32
    config.data.max_length = 256
    config.data.batch_size = 8
    config.data.pad_to_multiple = 64  # 4 batch shapes up to 256: fewer compiles in a short run
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 3
    config.train.max_steps = 30
    config.train.eval_every = 0
    config.train.log_every = 5
    config.train.checkpoint_every = 10
    return config
