"""Tiny PPO setups: a random Llama policy and a reward model trained to prefer "good" over "bad"."""

from __future__ import annotations

import json
from pathlib import Path

from tests.rm_helpers import make_tiny_llama_dir, tiny_rm_config, write_separable_pairs


def make_tiny_rm_export(root: Path) -> Path:
    """Trains the tiny Llama RM on separable pairs (held-out accuracy 1.0) and returns its export dir."""
    from jaxrlhf.train_rm import train

    model = make_tiny_llama_dir(root / "rm_base", seed=1)
    data = write_separable_pairs(root / "pairs.jsonl", 96)
    config = tiny_rm_config(model, data, root / "rm_work")
    config.train.export = True
    config.train.epochs = 3
    train(config)
    return root / "rm_work" / "export"


def write_prompts(path: Path, n: int = 48) -> Path:
    import random

    rng = random.Random(0)
    words = "one two three four five red green blue hello world what why yes no".split()
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"prompt": " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))}) + "\n")
    return path


def tiny_ppo_config(policy_dir: Path, rm_dir: Path, prompts: Path, workdir: Path):
    from jaxrlhf.configs_base import ppo_defaults

    config = ppo_defaults()
    config.workdir = str(workdir)
    config.policy.name = str(policy_dir)
    config.reward_model.path = str(rm_dir)
    config.reward_model.max_length = 64
    config.critic.init = "reward_model"
    config.data.source = str(prompts)
    config.data.max_prompt_length = 24
    config.data.eval_prompts = 8
    config.data.pad_to_multiple = 8
    config.sampling.max_new_tokens = 8
    config.ppo.rollout_batch_size = 8
    config.ppo.minibatch_size = 4
    config.ppo.epochs = 2
    config.actor_optim.learning_rate = 3e-3
    config.critic_optim.learning_rate = 3e-3
    config.train.iterations = 4
    config.train.checkpoint_every = 2
    config.train.sample_every = 0
    config.train.eval_every = 0
    config.train.export = False
    return config
