"""The allowed values of every config key that takes one of a few strings, checked in one place.

`check_choices(config)` raises a one-line `ValueError` naming the key, its value and the choices, before
anything loads. The lists copy the library's (configs sit below every other layer, so they cannot import
them); `tests/test_configs.py` checks each against the library constant it copies. One difference is on
purpose: configs say `on_invalid="error"` where the library (`data.errors.RowGuard`) says "raise".
"""

from __future__ import annotations

ON_INVALID = ("error", "skip")                          # data.errors.ON_INVALID, with "error" for "raise"
DTYPES = ("float32", "bfloat16", "float16")             # infra.precision.DTYPES
AUTO_DTYPES = ("auto", *DTYPES)                         # infra.precision.compute_dtype / storage_dtype
FROZEN_DTYPES = (*AUTO_DTYPES, "int8")                  # int8: training.run_setup.load_block, models.quantize
TRAIN_MODES = ("full", "lora", "frozen_backbone")       # training.trainable.TRAIN_MODES
SCHEDULES = ("cosine", "linear", "constant")            # training.optim.SCHEDULES
ON_NONFINITE = ("stop", "skip")                         # training.nonfinite.POLICIES
PADDING_SIDES = ("right", "left")                       # data.batching.PADDING_SIDES
RM_FORMATS = ("auto", "pairs", "hh", "chat", "ranked", "ratings")  # data.formats.FORMATS
SFT_FORMATS = ("auto", "prompt_response", "hh", "chat")  # sft.data.SFT_FORMATS
RANKED_MODES = ("pairs", "plackett_luce")               # rm.data.objective_of
RATINGS_MODES = ("pairs", "regression")                 # rm.data.objective_of
CRITIC_INITS = ("reward_model", "actor")                # rl.ppo_models.CRITIC_INITS
KL_ESTIMATORS = ("k1", "k2", "k3")                      # ops.kl.ESTIMATORS
WHITEN_SCOPES = ("rollout", "minibatch")                # rl.experience.WHITEN_SCOPES
LOSS_SCALE = ("auto", "dynamic", "none")                 # training.loss_scale.MODES
REMAT = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")  # models.layers.REMAT_POLICIES
ATTENTION = ("auto", "default", "xla", "cudnn", "splash")  # models.attention.IMPLEMENTATIONS
PO_LOSSES = ("sigmoid", "robust", "hinge", "ipo", "simpo", "listwise", "kto")  # po.data.LOSSES
REFERENCE_LOGPS = ("auto", "cached", "online")          # po.reference.MODES
GRPO_ALGORITHMS = ("grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")  # rl.group_step.ALGORITHMS
LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")  # ops.ppo.AGGREGATIONS
ON_MAX_KL = ("stop", "warn")                            # rl.guardrails.ON_MAX_KL


def _model(block: str) -> dict[str, tuple[str, ...]]:
    return {f"{block}.dtype": AUTO_DTYPES, f"{block}.param_dtype": DTYPES, f"{block}.frozen_dtype": FROZEN_DTYPES,
            f"{block}.train_mode": TRAIN_MODES, f"{block}.remat": REMAT, f"{block}.attention": ATTENTION}


_SUPERVISED = {
    **_model("model"),
    "optim.schedule": SCHEDULES,
    "optim.loss_scale": LOSS_SCALE,
    "data.on_invalid": ON_INVALID,
    "data.padding_side": PADDING_SIDES,
    "train.on_nonfinite": ON_NONFINITE,
}

CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "rm": {
        **_SUPERVISED,
        "data.format": RM_FORMATS,
        "data.ranked_mode": RANKED_MODES,
        "data.ratings_mode": RATINGS_MODES,
    },
    "sft": {
        **_SUPERVISED,
        "data.format": SFT_FORMATS,
    },
    "dpo": {
        **_SUPERVISED,
        "data.format": RM_FORMATS,
        "loss.type": PO_LOSSES,
        "loss.reference_logps": REFERENCE_LOGPS,
    },
    "ppo": {
        **_model("policy"),
        **_model("critic"),
        "critic.init": CRITIC_INITS,
        "reward_model.dtype": AUTO_DTYPES,
        "reward_model.param_dtype": AUTO_DTYPES,
        "actor_optim.schedule": SCHEDULES,
        "critic_optim.schedule": SCHEDULES,
        "actor_optim.loss_scale": LOSS_SCALE,
        "critic_optim.loss_scale": LOSS_SCALE,
        "data.on_invalid": ON_INVALID,
        "kl.estimator": KL_ESTIMATORS,
        "ppo.whiten_scope": WHITEN_SCOPES,
        "train.on_nonfinite": ON_NONFINITE,
        "train.on_max_kl": ON_MAX_KL,
    },
    "grpo": {
        **_model("policy"),
        "reward_model.dtype": AUTO_DTYPES,
        "reward_model.param_dtype": AUTO_DTYPES,
        "actor_optim.schedule": SCHEDULES,
        "data.on_invalid": ON_INVALID,
        "grpo.algorithm": GRPO_ALGORITHMS,
        "grpo.kl_estimator": KL_ESTIMATORS,
        "grpo.loss_aggregation": LOSS_AGGREGATIONS,
        "train.on_nonfinite": ON_NONFINITE,
        "train.on_max_kl": ON_MAX_KL,
    },
}


def trainer_of(config) -> str:
    """"ppo", "grpo", "dpo", "sft" or "rm", from the blocks only that trainer's defaults have (a ConfigDict or a
    dict)."""
    if "ppo" in config:
        return "ppo"
    if "grpo" in config:
        return "grpo"
    loss = config.get("loss") or {}
    if "beta" in loss:
        return "dpo"
    if "chunk_size" in loss:
        return "sft"
    if "use_margin" in loss:
        return "rm"
    raise ValueError("cannot tell which trainer this config is for (no ppo or grpo block, no loss.beta, "
                     "loss.chunk_size or loss.use_margin); pass trainer='rm', 'sft', 'dpo', 'ppo' or 'grpo'")


_MISSING = object()


def _lookup(config, key: str):
    node = config
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return _MISSING
    return node


def check_choices(config, trainer: str | None = None) -> None:
    """Raises `ValueError` for the first key (in `CHOICES` order) whose value is not one of its choices.

    trainer: "rm", "sft", "dpo", "ppo" or "grpo"; None: told from the config's blocks (`trainer_of`). A key the config
    lacks (a run_config.json written before the key existed) is not checked.
    """
    trainer = trainer_of(config) if trainer is None else trainer
    if trainer not in CHOICES:
        raise ValueError(f"trainer={trainer!r} is not one of {', '.join(CHOICES)}")
    for key, choices in CHOICES[trainer].items():
        value = _lookup(config, key)
        if value is not _MISSING and value not in choices:
            hint = " (the library's 'raise' is 'error' in a config)" if key.endswith("on_invalid") else ""
            raise ValueError(f"{key}={value!r} is not one of {', '.join(choices)}{hint}")
