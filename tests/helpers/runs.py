"""Tiny trainer runs: RM, DPO and PPO configs over the tiny Llama, the RM command line, checkpoint folders."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.helpers import REPO_ROOT
from tests.helpers.data import write_separable_pairs
from tests.helpers.models import make_tiny_llama_dir

# The tiny RM run's settings, shared by the in-process config and the command line so that a CLI run and an
# in-process run compile the same program (scanned layers included: configs/rm.py unrolls them).
TINY_RM_SETTINGS = {
    "model.scan_layers": True,
    "data.eval_size": 16,
    "data.max_length": 32,
    "data.batch_size": 8,
    "data.eval_batch_size": 8,
    "data.pad_to_multiple": 16,
    "optim.learning_rate": 3e-3,
    "optim.warmup_steps": 2,
    "train.epochs": 4,
    "train.log_every": 5,
    "train.checkpoint_every": 5,
    "train.export": False,
    "train.histogram": False,
}


def tiny_rm_config(model_dir: Path, data_file: Path, workdir: Path):
    from jaxrlhf.configs.base import rm_defaults

    config = rm_defaults()
    config.workdir = str(workdir)
    config.model.name = str(model_dir)
    config.data.source = str(data_file)
    for key, value in TINY_RM_SETTINGS.items():
        section, name = key.split(".")
        setattr(config[section], name, value)
    return config


def tiny_dpo_config(model_dir: Path, data_file: Path, workdir: Path, loss: str = "sigmoid"):
    """DPO on the tiny Llama, fully fine-tuned against its starting weights, 3 epochs of 8 pairs."""
    from jaxrlhf.configs.base import dpo_defaults

    config = dpo_defaults()
    config.workdir = str(workdir)
    config.model.name = str(model_dir)
    config.model.train_mode = "full"
    config.data.source = str(data_file)
    config.data.eval_size = 8
    config.data.max_length = 32
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.data.pad_to_multiple = 16
    config.loss.type = loss
    config.loss.chunk_size = 8
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 1
    config.train.epochs = 3
    config.train.log_every = 3
    config.train.checkpoint_every = 5
    config.train.export = False
    return config


def rm_cli_args(model, data, workdir, overrides: dict | None = None) -> list[str]:
    """`python -m jaxrlhf.train_rm` with the tiny run's settings but 2 epochs, a checkpoint every step, keep 2
    (then `overrides`, dotted keys as in TINY_RM_SETTINGS)."""
    settings = {**TINY_RM_SETTINGS, "train.epochs": 2, "train.checkpoint_every": 1, "train.keep_checkpoints": 2,
                **(overrides or {})}
    return [sys.executable, "-m", "jaxrlhf.train_rm", f"--config={REPO_ROOT / 'jaxrlhf/configs/rm.py'}",
            f"--config.model.name={model}", f"--config.data.source={data}", f"--config.workdir={workdir}",
            *(f"--config.{key}={value}" for key, value in settings.items())]


def complete_steps(ckpt_dir: Path) -> list[int]:
    """The checkpoint steps saved completely (Orbax renames a step's folder to its number when done)."""
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) if ckpt_dir.is_dir() else []


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


def tiny_ppo_config(policy_dir: Path, rm_dir: Path, prompts: Path, workdir: Path):
    from jaxrlhf.configs.base import ppo_defaults

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


def tiny_grpo_config(policy_dir: Path, prompts: Path, workdir: Path, algorithm: str = "grpo"):
    """train_grpo on the tiny Llama: 4 prompts x G=4 per iteration, reward = share of "yes" words."""
    from jaxrlhf.configs.base import grpo_defaults

    config = grpo_defaults()
    config.workdir = str(workdir)
    config.policy.name = str(policy_dir)
    config.data.source = str(prompts)
    config.data.max_prompt_length = 24
    config.data.eval_prompts = 8
    config.data.pad_to_multiple = 8
    config.sampling.max_new_tokens = 6
    config.rewards.functions = "tests.helpers.rewards:yes_fraction"
    config.grpo.algorithm = algorithm
    config.grpo.group_size = 4
    config.grpo.rollout_batch_size = 4
    config.grpo.minibatch_size = 8
    config.grpo.epochs = 2
    config.grpo.eval_batch_size = 8
    config.actor_optim.learning_rate = 3e-3
    config.train.iterations = 4
    config.train.checkpoint_every = 2
    config.train.sample_every = 0
    config.train.eval_every = 0
    config.train.export = False
    return config
