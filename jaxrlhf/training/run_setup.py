"""From a config to a run, the part every trainer shares: workdir and mesh, model, train state, resume."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrlhf.configs.validate import check_choices
from jaxrlhf.infra import preemption
from jaxrlhf.infra import sharding as shd
from jaxrlhf.infra.checkpoint import Checkpointer
from jaxrlhf.infra.runtime import dtype_of, setup_runtime
from jaxrlhf.models.hub import LoadedModel, from_pretrained
from jaxrlhf.models.layers import LoRAConfig
from jaxrlhf.training.optim import init_opt_state


def start_run(config, trainer: str) -> tuple[Path, jax.sharding.Mesh]:
    """The config's choices checked (`trainer`: "rm", "sft" or "ppo"), multi-host setup, the workdir (with
    run_config.json, so tools can rebuild the model) and the mesh."""
    check_choices(config, trainer)
    setup_runtime(config)
    preemption.install_sigterm_handler()  # from the start: a SIGTERM while loading stops after the first step
    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (workdir / "run_config.json").write_text(config.to_json_best_effort(indent=2))
    return workdir, shd.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)


def lora_from_config(model_cfg) -> LoRAConfig | None:
    if model_cfg.train_mode != "lora":
        return None
    return LoRAConfig(rank=model_cfg.lora_rank, alpha=model_cfg.lora_alpha, dropout=model_cfg.lora_dropout,
                      targets=model_cfg.lora_targets)


def load_block(model_cfg, name: str, task: str, mesh, seed: int, lora: bool = True) -> LoadedModel:
    """`name` loaded as a `task` model onto `mesh` with the dtypes and layer options of a model block;
    LoRA adapters added when the block's train_mode is lora and `lora` is on."""
    return from_pretrained(name, task, mesh=mesh, dtype=dtype_of(model_cfg.dtype),
                           param_dtype=dtype_of(model_cfg.param_dtype), scan_layers=model_cfg.scan_layers,
                           remat=model_cfg.remat, lora=lora_from_config(model_cfg) if lora else None, seed=seed,
                           # .get: a run_config.json written before these keys existed lacks them
                           dropout=model_cfg.get("dropout", 0.0),
                           attention_dropout=model_cfg.get("attention_dropout", 0.0))


def load_model(config, mesh, task: str) -> LoadedModel:
    """`config.model` loaded as a `task` model onto `mesh` (LoRA adapters added when train_mode is lora)."""
    return load_block(config.model, config.model.name, task, mesh, config.seed)


def init_train_state(trainable, optimizer: optax.GradientTransformation) -> dict:
    return {"params": trainable, "opt_state": init_opt_state(optimizer, trainable), "step": _zero_step(trainable)}


def _zero_step(params) -> jax.Array:
    """Step 0 replicated on the parameters' mesh. A bare `jnp.zeros` sits on one device: a checkpoint then
    restores it there, and the next step refuses to mix it with arrays on the whole mesh."""
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves or not isinstance(getattr(leaves[0], "sharding", None), jax.sharding.NamedSharding):
        return jnp.zeros((), jnp.int32)
    return jax.make_array_from_callback((), shd.replicated(leaves[0].sharding.mesh),
                                        lambda _: np.zeros((), np.int32))


def open_checkpoints(config, workdir: Path, state: dict) -> tuple[Checkpointer, dict, int]:
    """(checkpointer, state, first step): the newest complete checkpoint's state when resuming, else `state`."""
    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=config.train.keep_checkpoints,
                        save_every=config.train.checkpoint_every)
    if not (config.train.resume and ckpt.latest_step() is not None):
        return ckpt, state, 0
    state, _, start = ckpt.restore(state)
    print(f"resumed from step {start} ({workdir / 'checkpoints'})")
    return ckpt, state, start
