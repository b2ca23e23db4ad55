"""Default config blocks; the per-experiment files in this folder start from these and change what they need.

Every key a trainer reads is defined here, so a typo in `--config.KEY=VALUE` fails loudly
(ml_collections refuses unknown keys) instead of being ignored.

A block that more than one trainer uses is a function below (`model_block`, `optim_block`,
`source_block`, `data_block`, `run_block`, `train_block`, `mesh_block`, `distributed_block`). Where a
default differs between trainers the block takes it as an argument, and the caller notes what it means
for that trainer. `jaxrlhf/configs/validate.py` lists the allowed values of the keys that take one of a
few strings.
"""

from __future__ import annotations

import ml_collections


def model_block() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "name": "minilm",          # HF dir, hub id, or an asset alias ("minilm", "smollm2")
        "dtype": "auto",           # compute: auto = bfloat16 on TPU/GPU, float32 on CPU (where bf16 is slower)
        "param_dtype": "float32",  # trainable parameters and AdamW moments (masters, cast to dtype at use)
        "frozen_dtype": "auto",    # weights that never train (LoRA base, frozen backbone, reference): auto = dtype;
                                   # int8: their matrices quantised (QLoRA-style, models/quantize.py)
        "scan_layers": True,
        "remat": "none",           # none | full | dots_with_no_batch_dims_saveable | dots_saveable (models.layers)
        "dropout": 0.0,            # hidden dropout while training (BERT family; 0: off, as in TRL)
        "attention_dropout": 0.0,  # attention-probability dropout (BERT family; ~40% slower steps on a CPU)
        "attention": "auto",       # auto | default | xla | cudnn | splash (auto: cuDNN on GPU, Splash on TPU)
        "train_mode": "full",      # full | lora | frozen_backbone
        "train_lm_head": False,    # lora: also train an untied LM head in full (V x D: 525M on Llama-3-8B)
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
        "loss_scale": "auto",      # auto (dynamic loss scaling when computing in float16) | dynamic | none
    })


def constant_optim_block(learning_rate: float) -> ml_collections.ConfigDict:
    """`optim_block` at a constant learning rate, no warmup and no weight decay (PPO's actor and critic)."""
    config = optim_block()
    config.learning_rate = learning_rate
    config.schedule = "constant"
    config.warmup_steps = 0
    config.weight_decay = 0.0
    return config


def mesh_block() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})


def distributed_block() -> ml_collections.ConfigDict:
    """Several processes (hosts): every one runs the same command; see jaxrlhf/infra/multihost.py."""
    return ml_collections.ConfigDict({
        "coordinator": "",         # "host:port" of process 0; "auto": JAX detects (TPU pod, Slurm);
                                   # empty: $JAXRLHF_COORDINATOR, else auto on a multi-host TPU, else one process
        "num_processes": 0,        # 0: $JAXRLHF_NUM_PROCESSES
        "process_id": -1,          # -1: $JAXRLHF_PROCESS_ID
    })


def trainer_config(workdir: str) -> ml_collections.ConfigDict:
    """The top-level keys every trainer has: workdir, seed, compilation_cache_dir, mesh and distributed."""
    import os

    config = ml_collections.ConfigDict()
    config.workdir = workdir
    config.seed = 0
    # JAX's persistent compilation cache (infra/runtime.py): a rerun or resume loads its compiled steps from
    # here. "" switches it off; the default is $JAXRLHF_COMPILATION_CACHE, else $JAX_COMPILATION_CACHE_DIR.
    config.compilation_cache_dir = os.environ.get(
        "JAXRLHF_COMPILATION_CACHE", os.environ.get("JAX_COMPILATION_CACHE_DIR", "~/.cache/jaxrlhf/xla"))
    config.mesh = mesh_block()
    config.distributed = distributed_block()
    return config


def source_block() -> ml_collections.ConfigDict:
    """Where the rows come from and what a bad row does (every trainer's `data`)."""
    return ml_collections.ConfigDict({
        "source": "builtin:hh_rlhf_harmless",  # local json/jsonl/csv/parquet (gz ok) or a hub dataset
        "subset": "",               # hub dataset config name
        "split": "train",
        "on_invalid": "error",      # error | skip
        "limit": 0,                 # use only the first N rows (0: all)
    })


def data_block(*, eval_size: int, max_length: int, batch_size: int, eval_batch_size: int) -> ml_collections.ConfigDict:
    """`source_block` plus the held-out split and the batches of the supervised trainers (RM and SFT). The
    caller adds its own keys (`format`, `append_eos`, ...) and says what a row is for it."""
    config = source_block()
    config.update({
        "eval_source": "",          # separate held-out file; empty: hold out eval_size from source
        "eval_size": eval_size,     # held out (split by prompt) when eval_source is empty
        "split_seed": 0,            # draws the held-out split; apart from `seed` (init, order), so runs
                                    # with different seeds are scored on the same held-out rows
        "max_length": max_length,
        "batch_size": batch_size,   # per step (global, over all hosts)
        "eval_batch_size": eval_batch_size,
        "pad_to_multiple": 32,
        "bucket_window": 64,        # batches whose rows are sorted by length together (0: random batches)
        "padding_side": "right",
    })
    return config


def run_block(*, log_every: int, checkpoint_every: int) -> ml_collections.ConfigDict:
    """The cadence, checkpoint, preemption and export keys of every trainer's `train` (steps for RM and
    SFT, iterations for PPO)."""
    return ml_collections.ConfigDict({
        "log_every": log_every,
        "checkpoint_every": checkpoint_every,
        "keep_checkpoints": 2,
        "resume": True,
        "allow_config_change": False,  # resume although the config changed what the run is (model, data,
                                       # batch size, objective, schedule...): training/resume_guard.py
        "stop_after": 0,            # >0: save and stop after this step, as a preemption would
        "on_nonfinite": "stop",     # stop | skip: a non-finite loss or gradient (never applied either way;
                                    # PPO skips that minibatch update)
        "export": True,
        "profile_steps": "",        # "FIRST:LAST": a jax.profiler trace of those steps into workdir/profile
    })


def train_block(*, epochs: int) -> ml_collections.ConfigDict:
    """`run_block` plus the length and eval cadence of the supervised trainers (RM and SFT)."""
    config = run_block(log_every=10, checkpoint_every=100)
    config.update({
        "epochs": epochs,
        "max_steps": 0,             # >0: stop after this many steps
        "eval_every": 0,            # steps; 0: at the end of each epoch
    })
    return config


def rm_defaults() -> ml_collections.ConfigDict:
    config = trainer_config("workdir/rm")
    config.model = model_block()
    config.data = data_block(
        eval_size=512,              # pairs held out
        max_length=256,
        batch_size=16,              # pairs per step (global, over all hosts)
        eval_batch_size=32,
    )
    config.data.update({
        "format": "auto",           # auto | pairs | hh | chat | ranked | ratings
        "ranked_mode": "pairs",     # ranked lists: pairs | plackett_luce
        "ratings_mode": "pairs",    # scalar ratings: pairs | regression
        "append_eos": True,         # decoders: end each sequence with EOS, where the reward is read
        "min_agreement": 0.0,
    })
    config.loss = ml_collections.ConfigDict({
        "use_margin": False,        # subtract the per-pair `margin` field inside the sigmoid
        "temperature": 1.0,
        "center_coef": 0.0,         # reward centering: coef * (r_c + r_r)^2
        "label_smoothing": 0.0,     # eps: each label taken as right with probability 1 - eps
        "length_normalise": False,
    })
    config.optim = optim_block()
    config.train = train_block(epochs=2)
    config.train.update({
        "stats_pairs": 512,         # training pairs scored for the exported reward mean/std (0: all)
        "histogram": True,
    })
    return config


def sft_defaults() -> ml_collections.ConfigDict:
    config = trainer_config("workdir/sft")
    config.model = model_block()
    config.model.name = "smollm2"
    config.data = data_block(
        eval_size=64,               # rows held out
        max_length=256,             # too long: the prompt is cut from the left, then the response start
        batch_size=8,               # sequences per step (global, over all hosts)
        eval_batch_size=16,
    )
    config.data.update({
        "format": "auto",           # auto | prompt_response | hh | chat
        "append_eos": True,         # the model learns to end its answer
    })
    config.loss = ml_collections.ConfigDict({
        "chunk_size": 128,          # positions per LM-head chunk: [B, chunk, V] logits at a time
    })
    config.optim = optim_block()
    config.optim.learning_rate = 1e-4
    config.train = train_block(epochs=1)
    config.train.eval_at_start = True  # held-out NLL of the starting model, the baseline to beat
    return config


def ppo_defaults() -> ml_collections.ConfigDict:
    """PPO with the PPO-Max details (Zheng et al. 2023, "Secrets of RLHF in LLMs I"), each a switch."""
    config = trainer_config("workdir/ppo")
    config.policy = model_block()            # the actor, from the SFT model (PPO-Max: policy init from SFT)
    config.policy.name = "smollm2"
    config.reference = ""                    # frozen reference policy; empty: the same weights as `policy.name`
    config.reward_model = ml_collections.ConfigDict({
        "path": "workdir/rm/export",         # exported RM dir or train_rm workdir
        "max_length": 512,                   # RM tokens when it re-tokenises text (other tokenizer)
        "dtype": "auto",                     # compute (auto: bfloat16 on TPU/GPU, float32 on CPU)
        "param_dtype": "auto",               # its (frozen) weights: auto = the compute dtype
        "ensemble": "",                      # more RMs (comma-separated): the reward is mean - k * std of all
        "uncertainty_k": 1.0,                # ... k: how much their disagreement costs (0: the plain mean)
        "gold": "",                          # a held-out RM scoring the rollouts every train.gold_every iterations
    })
    config.critic = model_block()
    config.critic.init = "reward_model"      # reward_model (PPO-Max) | actor: where the critic starts
    config.critic.name = ""                  # empty: the RM's export dir (init=reward_model) or policy.name
    # data.source holds the prompts: a `prompt` column or HH-RLHF `chosen` dialogues
    config.data = source_block()
    config.data.update({
        "max_prompt_length": 128,            # longer prompts are dropped (counted)
        "eval_prompts": 32,                  # held out: fresh rollouts scored every train.eval_every iterations
        "pad_to_multiple": 32,
        "chat_template": True,               # render prompts with the policy tokenizer's chat template
        "system": "",                        # system message for the template ("" keeps the template's own)
    })
    config.sampling = ml_collections.ConfigDict({
        "max_new_tokens": 64,
        "temperature": 1.0,                  # log-probs are recomputed at this temperature
        "top_k": 0,
        "top_p": 1.0,
        "stop_tokens": "",                   # extra stop strings, comma-separated (EOS always stops)
        "ignore_eos": False,                 # sample exactly max_new_tokens, ignoring stop tokens: for
                                             # benchmarks that time a fixed length
        "compact_rows": True,                # finished rows leave the decode batch as it halves (loops of
                                             # 64+ tokens, one device; same tokens: rl.sampling.row_levels)
    })
    config.rewards = ml_collections.ConfigDict({
        "normalise": True,                   # running mean/std of RM scores
        "shift_mean": True,
        "clip": 5.0,                         # clip normalised scores (<= 0: off)
        "scale": 1.0,
        "missing_eos_penalty": 0.0,
        "init_from_rm_stats": True,          # seed the running moments with the RM's reward_stats.json
        "rm_stats_weight": 16,               # ... counted as this many samples (at most the rewards they came
                                             # from; -1: all of them), so the policy's own scores take over
                                             # within a few iterations (MOSS-RLHF and trlx start from zero)
    })
    config.kl = ml_collections.ConfigDict({
        "estimator": "k1",                   # k1 | k2 | k3, per token
        "coef": 0.05,
        "adaptive": False,                   # adaptive controller (Ziegler et al.) instead of a fixed coef
        "target": 6.0,                       # nats per sequence
        "horizon": 128,                      # samples: beta moves by at most 0.2 * rollout_batch_size / horizon
                                             # per iteration (2.5% at 16), so it reaches the target within a run
    })
    config.ppo = ml_collections.ConfigDict({
        "rollout_batch_size": 16,            # prompts per iteration (global)
        "minibatch_size": 8,
        "epochs": 2,
        "clip_eps": 0.2,
        "value_clip_eps": 0.2,               # <= 0: off
        "vf_coef": 1.0,
        "entropy_coef": 0.0,
        "gamma": 1.0,
        "lam": 0.95,
        "whiten_advantages": True,
        "whiten_scope": "rollout",           # rollout (TRL >= 0.12, OpenRLHF) | minibatch (MOSS-RLHF PPO-Max)
        "advantage_clip": 0.0,               # <= 0: off
        "max_approx_kl": 0.0,                # > 0: the minibatch past this KL is not applied and the
                                             # iteration's remaining updates stop (Stable-Baselines3)
        "logprob_chunk": 128,
    })
    config.actor_optim = constant_optim_block(1e-6)
    config.critic_optim = constant_optim_block(5e-6)
    config.train = run_block(log_every=1, checkpoint_every=10)  # stop_after, checkpoint_every: iterations
    config.train.update({
        "iterations": 20,
        "eval_every": 5,                     # iterations between held-out evaluations (0: never)
        "sample_every": 5,                   # iterations between sample tables (0: never)
        "samples_shown": 4,
        "max_kl_per_seq": 0.0,               # > 0: past this KL to the reference (nats per sequence) ...
        "on_max_kl": "stop",                 # ... stop (checkpoint saved) or warn
        "gold_every": 5,                     # iterations between gold-RM scores (with reward_model.gold)
    })
    return config


def dpo_defaults() -> ml_collections.ConfigDict:
    """Direct preference optimisation (the DPO family, SimPO, KTO, listwise DPO) of a causal LM against a
    frozen reference, on the comparison data the reward trainer reads."""
    config = trainer_config("workdir/dpo")
    config.model = model_block()
    config.model.name = "smollm2"
    config.reference = ""           # frozen reference policy; empty: the starting weights of model.name (under
                                    # LoRA the same model with its adapters off, no second copy)
    config.data = data_block(
        eval_size=256,              # comparisons (or lists, or rated responses) held out, split by prompt
        max_length=256,             # too long: the prompt is cut from the left, then the response start
        batch_size=8,               # comparisons per step (global, over all hosts)
        eval_batch_size=16,
    )
    config.data.update({
        "format": "auto",           # auto | pairs | hh | chat | ranked | ratings (as for train_rm)
        "append_eos": True,         # end each response with EOS, scored like its other tokens
        "min_agreement": 0.0,
        "chat_template": False,     # render HH dialogues with the policy tokenizer's chat template, as the
                                    # policy is prompted when it chats (chat-format data always is)
        "shared_prompt": True,      # pairs and lists: one row per prompt, its responses after it, each seeing
                                    # the prompt and itself (exact; the prompt runs once, not once a response)
    })
    config.loss = ml_collections.ConfigDict({
        "type": "sigmoid",          # sigmoid (DPO) | robust | hinge | ipo | simpo: on pairs (ranked lists and
                                    # ratings expanded into pairs); listwise: Plackett-Luce DPO on ranked lists
                                    # kept whole; kto: ratings as desirable / undesirable responses
        "beta": 0.1,                # scale of the implicit reward beta * (log p - log p_ref)
        "label_smoothing": 0.0,     # sigmoid, simpo: conservative DPO; robust: the label-noise rate
        "simpo_gamma": 0.5,         # SimPO's target margin
        "sft_weight": 0.0,          # > 0: adds this times the chosen response's NLL per token (RPO)
        "reference_free": False,    # implicit rewards from the policy alone (SimPO always is)
        "reference_logps": "auto",  # cached: one pass over the data before training, saved in the workdir and
                                    # reused on resume; online: the reference runs in every step; auto:
                                    # cached when the run covers an epoch or more, else online
        "kto_threshold": 0.5,       # kto: a rating above this is desirable, at or below undesirable
        "kto_desirable_weight": 1.0,
        "kto_undesirable_weight": 1.0,
        "chunk_size": 128,          # positions per LM-head chunk: [B, chunk, V] logits at a time
    })
    config.optim = optim_block()
    config.optim.learning_rate = 5e-7  # full fine-tuning; LoRA wants ~100x more (configs/dpo.py)
    config.optim.weight_decay = 0.0
    config.train = train_block(epochs=1)
    config.train.eval_at_start = False  # True: held-out metrics of the starting policy too (while policy ==
                                        # reference every implicit reward is 0: loss log 2, accuracy 0)
    return config


def grpo_defaults() -> ml_collections.ConfigDict:
    """Critic-free online RL (GRPO, Dr.GRPO, DAPO's switches, RLOO, REINFORCE++) with verifiable rewards, a
    reward model, or a weighted sum of both."""
    config = trainer_config("workdir/grpo")
    config.policy = model_block()
    config.policy.name = "smollm2"
    config.reference = ""                    # empty: the starting weights of policy.name (under LoRA its base)
    config.reward_model = ml_collections.ConfigDict({
        "path": "",                          # exported RM dir or train_rm workdir; empty: reward functions only
        "max_length": 512,
        "dtype": "auto",
        "param_dtype": "auto",
        "ensemble": "",                      # more RMs (comma-separated): mean - k * std of all their scores
        "uncertainty_k": 1.0,
        "gold": "",                          # a held-out RM scoring the rollouts every train.gold_every iterations
    })
    config.task = ml_collections.ConfigDict({
        "name": "",                          # arithmetic: generated word problems (below); "": data.source
        "seed": 0,                           # training problems
        "eval_seed": 1,                      # held-out problems: another seed
        "n_train": 2048,
        "n_eval": 64,
        "min_value": 1,
        "max_value": 20,
        "ops": "+,-",                        # of + - *
        "styles": "plain,story",             # "What is 3 + 4?" and one-sentence stories
    })
    config.data = source_block()
    config.data.update({
        "max_prompt_length": 128,
        "eval_prompts": 32,                  # data.source only: held out, scored greedily every eval_every
        "pad_to_multiple": 32,
        "chat_template": True,
        "system": "",
    })
    config.sampling = ml_collections.ConfigDict({
        "max_new_tokens": 64, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "stop_tokens": "", "ignore_eos": False,
        "compact_rows": True,                # as ppo_defaults' sampling.compact_rows
    })
    config.rewards = ml_collections.ConfigDict({
        "functions": "",                     # "exact_match=1.0,format=0.1,pkg.mod:fn=0.5" (rl.verifiable)
        "rm_weight": 1.0,                    # weight of the reward model's score when reward_model.path is set
        "format_regex": "",                  # the built-in `format` reward's pattern
        "length_target": 400,                # the built-in `length_penalty`: characters before it starts
        "workers": 4,                        # threads that run the reward functions
    })
    config.grpo = ml_collections.ConfigDict({
        "algorithm": "grpo",                 # grpo | rloo | reinforce_pp | reinforce_pp_baseline
        "group_size": 8,                     # G responses per prompt, sharing the prompt's prefill
        "rollout_batch_size": 8,             # prompts per iteration (global): rollout_batch_size * G responses
        "minibatch_size": 64,                # responses per update (with shared_prompt: whole groups)
        "shared_prompt": True,               # each forward runs a group's prompt once, not G times (exact)
        "epochs": 1,                         # passes over the rollout (> 1: several clipped updates per rollout)
        "scale_by_std": True,                # GRPO's division by the group std; False: Dr.GRPO
        "kl_coef": 0.0,                      # beta (0: no reference model is loaded or run)
        "kl_in_reward": False,               # KL in the reward instead of a loss term (reinforce_pp: always)
        "kl_estimator": "k3",                # k1 | k2 | k3 per token
        "clip_eps": 0.2,
        "clip_eps_high": 0.0,                # DAPO clip-higher (0.28); <= 0: clip_eps
        "loss_aggregation": "seq_mean_token_mean",  # GRPO; token_mean (DAPO); seq_mean_token_sum_norm (Dr.GRPO)
        "dynamic_sampling": True,            # groups with all-equal rewards leave the loss (counted)
        "max_approx_kl": 0.0,                # > 0: the minibatch past this KL is not applied, the rest stop
        "logprob_chunk": 128,
        "eval_batch_size": 32,               # held-out prompts per greedy batch
    })
    config.actor_optim = constant_optim_block(1e-6)
    config.train = run_block(log_every=1, checkpoint_every=10)
    config.train.update({"iterations": 20, "eval_every": 5, "sample_every": 5, "samples_shown": 4,
                         "max_kl_per_seq": 0.0,  # > 0: past this KL to the reference (needs grpo.kl_coef > 0) ...
                         "on_max_kl": "stop",    # ... stop (checkpoint saved) or warn
                         "gold_every": 5})       # iterations between gold-RM scores (with reward_model.gold)
    return config
