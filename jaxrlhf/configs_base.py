"""Default config blocks; the files in configs/ start from these and change what they need.

Every key a trainer reads is defined here, so a typo in `--config.KEY=VALUE` fails loudly
(ml_collections refuses unknown keys) instead of being ignored.
"""

from __future__ import annotations

import ml_collections


def model_block() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "name": "minilm",          # HF dir, hub id, or an asset alias ("minilm", "smollm2")
        "dtype": "float32",        # compute dtype; bfloat16 pays off on TPU/GPU, not on this CPU
        "param_dtype": "float32",
        "scan_layers": True,
        "remat": False,
        "train_mode": "full",      # full | lora | frozen_backbone
        "lora_rank": 8,
        "lora_alpha": 16.0,
        "lora_dropout": 0.0,
        "lora_targets": "q_proj|k_proj|v_proj|o_proj|query|key|value",
    })


def optim_block() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "learning_rate": 3e-5,
        "schedule": "cosine",      # cosine | linear | constant, after warmup
        "warmup_steps": -1,        # -1: use warmup_ratio
        "warmup_ratio": 0.05,
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-8,
        "grad_accum": 1,
    })


def mesh_block() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})


def rm_defaults() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.workdir = "workdir/rm"
    config.seed = 0
    config.model = model_block()
    config.data = ml_collections.ConfigDict({
        "source": "builtin:hh_rlhf_harmless",  # local json/jsonl/csv/parquet (gz ok) or a hub dataset
        "subset": "",               # hub dataset config name
        "split": "train",
        "eval_source": "",          # separate held-out file; empty: hold out eval_size from source
        "eval_size": 512,           # pairs held out (split by prompt) when eval_source is empty
        "format": "auto",           # auto | explicit | hh | chat | ranked | ratings
        "ranked_mode": "pairs",     # ranked lists: pairs | plackett_luce
        "ratings_mode": "pairs",    # scalar ratings: pairs | regression
        "max_length": 256,
        "batch_size": 16,           # pairs per step (global, over all hosts)
        "eval_batch_size": 32,
        "pad_to_multiple": 32,
        "padding_side": "right",
        "append_eos": True,         # decoders: end each sequence with EOS, where the reward is read
        "on_invalid": "error",      # error | skip
        "min_agreement": 0.0,
        "limit": 0,                 # use only the first N rows (0: all)
    })
    config.loss = ml_collections.ConfigDict({
        "use_margin": False,        # subtract the per-pair `margin` field inside the sigmoid
        "temperature": 1.0,
        "center_coef": 0.0,         # reward centering: coef * (r_c + r_r)^2
        "length_normalise": False,
    })
    config.optim = optim_block()
    config.train = ml_collections.ConfigDict({
        "epochs": 2,
        "max_steps": 0,             # >0: stop after this many steps
        "eval_every": 0,            # steps; 0: at the end of each epoch
        "log_every": 10,
        "checkpoint_every": 100,
        "keep_checkpoints": 2,
        "resume": True,
        "stop_after": 0,            # >0: save and stop after this step, as a preemption would
        "export": True,
        "stats_pairs": 512,         # training pairs scored for the exported reward mean/std (0: all)
        "histogram": True,
    })
    config.mesh = mesh_block()
    return config
