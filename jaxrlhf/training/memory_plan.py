"""The trainers' mesh checks and memory table: what RM and PPO training compute, in planner terms.

`check_*_batch` runs right after the mesh is built (before any model loads); `report_*_plan` right after
the models load: it refuses a mesh axis that splits no parameter and prints the per-device table.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from jaxrlhf.data.batching import backend_multiple
from jaxrlhf.infra import planner
from jaxrlhf.infra.mesh_checks import check_axes, check_batch
from jaxrlhf.infra.precision import compute_dtype
from jaxrlhf.training.trainable import split_for


def check_rm_batch(config, mesh) -> None:
    check_batch(mesh, {"data.batch_size": config.data.batch_size,
                       "data.eval_batch_size": config.data.eval_batch_size})


def check_ppo_batch(config, mesh) -> None:
    check_batch(mesh, {"ppo.rollout_batch_size": config.ppo.rollout_batch_size,
                       "ppo.minibatch_size": config.ppo.minibatch_size})


def report(entries, mesh) -> list[planner.ModelPlan]:
    """`entries`: (name, LoadedModel, model config block or None if frozen, Workload). Checks, prints, returns
    the plans."""
    warnings = check_axes({name: nnx.state(loaded.model) for name, loaded, _, _ in entries}, mesh)
    plans = []
    for name, loaded, block, work in entries:
        if block is None:
            trainable, frozen = None, nnx.state(loaded.model)
        else:
            _, trainable, frozen = split_for(loaded.model, block)
        plans.append(planner.plan_model(name, trainable, frozen, planner.Dims.of(loaded.config), work, mesh))
    print(planner.format_plan(plans, mesh, planner.device_memory_limit()))
    for line in warnings:
        print(line)
    return plans


def _bytes(dtype_name: str) -> int:
    return np.dtype(compute_dtype(dtype_name)).itemsize


def _fused(model_cfg) -> bool:
    """Whether the attention keeps no T x T scores (infra.planner): every kernel but XLA's, and the default
    path on CPU (blocked), not on an accelerator (one block there)."""
    attention = model_cfg.get("attention", "auto")
    return attention != "xla" and not (attention == "default" and jax.default_backend() != "cpu")


def report_rm_plan(config, loaded, mesh) -> list[planner.ModelPlan]:
    d, m = config.data, config.model
    work = planner.Workload(train_batch=2 * d.batch_size // max(config.optim.grad_accum, 1),  # chosen + rejected
                            train_length=d.max_length, forward_batch=2 * d.eval_batch_size,
                            forward_length=d.max_length, remat=m.remat, dtype_bytes=_bytes(m.dtype),
                            fused_attention=_fused(m))
    return report([("reward model", loaded, m, work)], mesh)


def report_ppo_plan(config, models, mesh) -> list[planner.ModelPlan]:
    p, d = config.ppo, config.data
    multiple = backend_multiple(d.pad_to_multiple)
    prompt = -(-d.max_prompt_length // multiple) * multiple
    length = prompt + config.sampling.max_new_tokens
    rm_length = config.reward_model.max_length  # the RM reads the texts re-rendered as in its training

    def work(model_cfg, *, train: bool, lm: bool, sample: bool = False, seq_len: int = length):
        return planner.Workload(train_batch=p.minibatch_size if train else 0, train_length=seq_len,
                                forward_batch=p.rollout_batch_size, forward_length=seq_len,
                                logits_chunk=p.logprob_chunk if lm else 0,
                                cache_batch=p.rollout_batch_size if sample else 0, cache_length=seq_len,
                                remat=model_cfg.remat, dtype_bytes=_bytes(model_cfg.dtype),
                                fused_attention=_fused(model_cfg))

    reference = [] if models.reference is None else [  # None: the actor's base with its adapters off
        ("reference", models.reference, None, work(config.policy, train=False, lm=True))]
    return report([
        ("actor", models.actor, config.policy, work(config.policy, train=True, lm=True, sample=True)),
        *reference,
        ("reward model", models.rm.loaded, None, work(config.policy, train=False, lm=False, seq_len=rm_length)),
        ("critic", models.critic, config.critic, work(config.critic, train=True, lm=False)),
    ], mesh)
