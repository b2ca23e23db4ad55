"""DPO: SmolLM2-135M-Instruct with LoRA on the HH-RLHF harmless comparisons, against its own starting
weights (the same model with the adapters off).

    python -m jaxrlhf.assets fetch smollm2
    python -m jaxrlhf.train_dpo --config=configs/dpo.py

A short run sized for a laptop CPU (40 steps of 8 pairs cut to 128 tokens, the prompt losing its start
first, each pair one row with its prompt once; about a quarter of an hour on 2 cores, a quarter of it the
evaluation on 256 held-out pairs); raise `train.max_steps` (or set it to 0 and use `train.epochs`) for a
real one. `--config.loss.type=ipo` (hinge, robust, simpo) switches the loss; ranked lists train with
`loss.type=listwise`, rated responses with `loss.type=kto`. Held-out pairs are split by prompt and scored
as an implicit reward model; the export in `workdir/dpo/export` is an HF causal LM.
"""

from jaxrlhf.configs.base import dpo_defaults


def get_config():
    config = dpo_defaults()
    config.model.train_mode = "lora"
    config.model.lora_rank = 16
    config.model.lora_alpha = 32.0
    config.model.lora_targets = "q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"
    config.data.source = "builtin:hh_rlhf_harmless"
    config.data.format = "hh"
    config.data.chat_template = True  # HH turns as ChatML messages: train on the prompts the policy chats with
    config.data.eval_size = 256  # the accuracy's standard error 0.031
    config.data.max_length = 128  # responses: median 49 tokens, 82% under 96; prompts: median 121
    config.data.batch_size = 8
    config.data.pad_to_multiple = 32  # rows (prompt + chosen + rejected) of 128-256 slots: five compiled shapes
    config.loss.beta = 0.1
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 3
    config.train.max_steps = 40
    config.train.eval_every = 0
    config.train.log_every = 5
    config.train.checkpoint_every = 20
    return config
