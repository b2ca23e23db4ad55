"""The four models of PPO, loaded onto one mesh: actor, frozen reference, frozen reward model, critic.

The critic starts from the reward model by default (PPO-Max): same backbone and scalar head, read out at
every token instead of the last. That needs a decoder reward model with the policy's vocabulary, since
the critic scores the policy's own tokens; otherwise the critic starts from the actor with a fresh head.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from flax import nnx

from jaxrlhf.infra.precision import compute_dtype
from jaxrlhf.models.hf_files import is_hf_dir
from jaxrlhf.models.hub import LoadedModel, load_tokenizer
from jaxrlhf.rl.rollout import same_vocabulary
from jaxrlhf.rm.load import TrainedRM, load_trained_rm
from jaxrlhf.training.run_setup import load_block
from jaxrlhf.training.trainable import base_is_reference, split_for

CRITIC_INITS = ("reward_model", "actor")


@dataclasses.dataclass
class PPOModels:
    actor: LoadedModel
    reference: LoadedModel | None  # None: the actor's own base, adapters off (`shares_actor_base`)
    rm: TrainedRM            # the frozen reward model with its spec and statistics
    critic: LoadedModel
    tokenizer: Any           # the policy's
    critic_source: str

    def split(self, actor_cfg, critic_cfg):
        """(graphdef, trainable, frozen) of actor and critic; (graphdef, state) of the frozen reference.
        (The reward model is split by the `RewardScorer` that runs it.)"""
        reference = (None, ()) if self.reference is None else nnx.split(self.reference.model)
        return split_for(self.actor.model, actor_cfg), split_for(self.critic.model, critic_cfg), reference


def shares_actor_base(config) -> bool:
    """Under LoRA the reference is the actor's frozen base with the adapters off (`base_is_reference`)."""
    return base_is_reference(config.policy, config.reference)


def load_ppo_models(config, mesh) -> PPOModels:
    if (compute_dtype(config.critic.dtype) == jnp.float16) != (compute_dtype(config.policy.dtype) == jnp.float16):
        raise ValueError(f"policy.dtype={config.policy.dtype}, critic.dtype={config.critic.dtype}: float16 for both "
                         f"or neither (they share one loss scale)")
    if config.critic.init not in CRITIC_INITS:
        raise ValueError(f"critic.init must be one of {CRITIC_INITS}, got {config.critic.init!r}")
    actor = load_block(config.policy, config.policy.name, "causal_lm", mesh, config.seed)
    tokenizer = load_tokenizer(actor.model_dir)
    reference = None if shares_actor_base(config) else load_block(
        config.policy, config.reference or config.policy.name, "causal_lm", mesh, config.seed, lora=False,
        trains=False)
    rm_cfg = config.reward_model
    rm = load_trained_rm(rm_cfg.path, mesh, dtype=rm_cfg.get("dtype", "auto"),
                         param_dtype=rm_cfg.get("param_dtype", "auto"))
    if config.critic.init == "reward_model":
        rm_dir = Path(config.critic.name or config.reward_model.path)
        if not rm.loaded.family.IS_DECODER or not same_vocabulary(rm.tokenizer, tokenizer):
            raise ValueError(f"critic.init=reward_model needs a decoder reward model with the policy's vocabulary "
                             f"(the critic scores policy tokens); {config.reward_model.path} is a "
                             f"{rm.loaded.hf_config['model_type']} with its own tokenizer: set critic.init=actor")
        if not is_hf_dir(rm_dir):
            raise ValueError(f"critic.init=reward_model loads the critic from an exported reward model; {rm_dir} "
                             f"has no config.json (point reward_model.path or critic.name at the export/ dir)")
        critic_source = str(rm_dir)
    else:
        critic_source = config.critic.name or config.policy.name
    critic = load_block(config.critic, critic_source, "value", mesh, config.seed + 1)
    return PPOModels(actor=actor, reference=reference, rm=rm, critic=critic, tokenizer=tokenizer,
                     critic_source=critic_source)
