"""From a config to a run, the part every trainer shares: workdir and mesh, model, train state, resume."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrlhf.configs.validate import check_choices
from jaxrlhf.infra import preemption, workdir_lock
from jaxrlhf.infra import sharding as shd
from jaxrlhf.infra.checkpoint import Checkpointer
from jaxrlhf.infra.precision import cast_frozen, compute_dtype, dtype_of, storage_dtype
from jaxrlhf.infra.runtime import setup_runtime
from jaxrlhf.models.hub import LoadedModel, from_pretrained
from jaxrlhf.models.layers import LoRAConfig
from jaxrlhf.models.quantize import quantize_frozen_linears
from jaxrlhf.training import loss_scale
from jaxrlhf.training.optim import init_opt_state
from jaxrlhf.training.resume_guard import check_resume
from jaxrlhf.training.trainable import trainable_filter


def start_run(config, trainer: str) -> tuple[Path, jax.sharding.Mesh]:
    """The config's choices checked (`trainer`: "rm", "sft" or "ppo"), multi-host setup, the workdir (locked
    for this run, with run_config.json so tools can rebuild the model; a resume only with the config of the
    run it continues) and the mesh."""
    check_choices(config, trainer)
    setup_runtime(config)
    preemption.clear()  # an earlier run's stop (a notebook) does not stop this one
    preemption.install_handlers()  # from the start: a signal while loading stops after the first step
    workdir = Path(config.workdir).expanduser()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"workdir {workdir} is a file, not a folder: set --config.workdir to a folder") from None
    except OSError as e:
        raise ValueError(f"workdir {workdir}: cannot create it ({e.strerror})") from None
    if not os.access(workdir, os.W_OK):
        raise ValueError(f"workdir {workdir} is not writable: set --config.workdir to a folder you can write")
    if jax.process_index() == 0:
        workdir_lock.acquire(workdir)
        check_resume(config, workdir)
        if not config.train.resume:
            _set_aside_checkpoints(workdir)
        (workdir / "run_config.json").write_text(config.to_json_best_effort(indent=2))
    return workdir, shd.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)


def _set_aside_checkpoints(workdir: Path) -> None:
    """train.resume=False in a workdir with checkpoints: a fresh run, so the old ones move aside (kept, and
    never mixed with the new run's steps)."""
    old = workdir / "checkpoints"
    if not (old.is_dir() and any(old.iterdir())):
        return
    if jax.process_count() > 1:
        raise ValueError(f"{old} holds checkpoints and train.resume=False: use another workdir for a fresh "
                         "multi-host run, or move them away")
    aside = workdir / time.strftime("checkpoints.before-%Y%m%d-%H%M%S")
    old.rename(aside)
    print(f"train.resume=False: the earlier checkpoints moved to {aside}")


def releases_workdir(train):
    """Decorates a trainer's `train(config, ...)`: its workdir's lock is released when it returns or raises,
    so the same process (a notebook, a test) or the next command can use the workdir again."""
    @functools.wraps(train)
    def wrapper(config, *args, **kwargs):
        try:
            return train(config, *args, **kwargs)
        finally:
            workdir_lock.release(Path(config.workdir).expanduser())
    return wrapper


def lora_from_config(model_cfg) -> LoRAConfig | None:
    if model_cfg.train_mode != "lora":
        return None
    return LoRAConfig(rank=model_cfg.lora_rank, alpha=model_cfg.lora_alpha, dropout=model_cfg.lora_dropout,
                      targets=model_cfg.lora_targets)


def load_block(model_cfg, name: str, task: str, mesh, seed: int, lora: bool = True,
               trains: bool = True) -> LoadedModel:
    """`name` loaded as a `task` model onto `mesh` with the dtypes and layer options of a model block;
    LoRA adapters added when the block's train_mode is lora and `lora` is on. Parameters load in
    `param_dtype`; those that will not train (all of them when `trains` is off: a reference model) are
    then stored in `frozen_dtype` (infra.precision)."""
    compute = compute_dtype(model_cfg.dtype)
    loaded = from_pretrained(name, task, mesh=mesh, dtype=compute, param_dtype=dtype_of(model_cfg.param_dtype),
                             scan_layers=model_cfg.scan_layers, remat=model_cfg.remat,
                             lora=lora_from_config(model_cfg) if lora else None, seed=seed,
                             # .get: a run_config.json written before these keys existed lacks them
                             dropout=model_cfg.get("dropout", 0.0),
                             attention_dropout=model_cfg.get("attention_dropout", 0.0),
                             attention=model_cfg.get("attention", "auto"))
    frozen_name = model_cfg.get("frozen_dtype", "float32")
    trainable = (trainable_filter(model_cfg.train_mode, bool(model_cfg.get("train_lm_head", False))) if trains
                 else nnx.Nothing)
    if frozen_name == "int8":  # QLoRA-style: frozen matrices int8, the rest of the frozen weights as auto
        if trains and model_cfg.train_mode == "full":
            raise ValueError("frozen_dtype=int8 quantises the weights that do not train; with train_mode=full "
                             "every weight trains (use train_mode=lora)")
        quantize_frozen_linears(loaded.model, trainable)
        frozen_name = "auto"
    cast_frozen(loaded.model, trainable, storage_dtype(frozen_name, compute))
    return loaded


def load_model(config, mesh, task: str) -> LoadedModel:
    """`config.model` loaded as a `task` model onto `mesh` (LoRA adapters added when train_mode is lora)."""
    return load_block(config.model, config.model.name, task, mesh, config.seed)


def init_train_state(trainable, optimizer: optax.GradientTransformation, loss_scaling: bool = False) -> dict:
    """params, opt_state and step; with `loss_scaling`, the dynamic loss scale too (`training.loss_scale`)."""
    state = {"params": trainable, "opt_state": init_opt_state(optimizer, trainable), "step": _zero_step(trainable)}
    if loss_scaling:
        step = state["step"]
        state["loss_scale"] = jax.tree_util.tree_map(lambda x: jax.device_put(x, step.sharding),
                                                     loss_scale.init_state())
    return state


def _zero_step(params) -> jax.Array:
    """Step 0 replicated on the parameters' mesh. A bare `jnp.zeros` sits on one device: a checkpoint then
    restores it there, and the next step refuses to mix it with arrays on the whole mesh."""
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves or not isinstance(getattr(leaves[0], "sharding", None), jax.sharding.NamedSharding):
        return jnp.zeros((), jnp.int32)
    return jax.make_array_from_callback((), shd.replicated(leaves[0].sharding.mesh),
                                        lambda _: np.zeros((), np.int32))


def open_checkpoints(config, workdir: Path, state: dict) -> tuple[Checkpointer, dict, int]:
    """(checkpointer, state, first step): the newest intact checkpoint's state when resuming, else `state`.

    Damaged newer checkpoints (a partial copy, a truncated file) are named in one line and moved to
    `checkpoints.damaged/`, so this run can save those steps again; none intact is a one-line error.
    """
    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=config.train.keep_checkpoints,
                        save_every=config.train.checkpoint_every)
    if not (config.train.resume and ckpt.latest_step() is not None):
        return ckpt, state, 0
    state, _, start = ckpt.restore(state, set_aside_damaged=True)
    print(f"resumed from step {start} ({workdir / 'checkpoints'})")
    return ckpt, state, start


def restore_trained_params(model, model_cfg, ckpt_dir: Path):
    """`model` with the trainable parameters (as `model_cfg.train_mode` splits them) of the newest complete
    checkpoint in `ckpt_dir`, for evaluation: the optimiser state stays on disk."""
    from jaxrlhf.models.hf_files import WeightLoadError
    from jaxrlhf.training.trainable import split_for

    ckpt = Checkpointer(ckpt_dir)
    if ckpt.latest_step() is None:
        raise WeightLoadError(f"{ckpt_dir}: no complete checkpoint")
    graphdef, trainable, frozen = split_for(model, model_cfg)
    restored, _, _ = ckpt.restore_params(trainable)
    ckpt.close()
    return nnx.merge(graphdef, restored, frozen)
