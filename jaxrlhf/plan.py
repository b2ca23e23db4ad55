"""Plan a model's per-device memory on any mesh from its config.json alone (no weights, no devices):

    python -m jaxrlhf.plan --model=smollm2 --mesh=1,8,1 --batch=64 --length=512
    python -m jaxrlhf.plan --model=DIR --ppo --train_mode=lora --batch=128 --minibatch=16 --length=1024 \
        --dtype_bytes=2 --remat=full --device_gib=80

The maths lives in `jaxrlhf.infra.planner` and `jaxrlhf.infra.mesh_checks`; this file is the command line.
"""

from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.configs.base import model_block
from jaxrlhf.infra import sharding as shd
from jaxrlhf.infra.mesh_checks import check_axes, check_batch
from jaxrlhf.infra.planner import REMAT_POLICIES, Dims, Workload, format_plan, per_device_total, plan_model
from jaxrlhf.infra.runtime import cli_errors
from jaxrlhf.models.hf_files import read_config, resolve_model_dir
from jaxrlhf.models.layers import LoRAConfig
from jaxrlhf.models.registry import abstract_model
from jaxrlhf.training.trainable import TRAIN_MODES, split_trainable


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF dir, hub id or asset alias")
    parser.add_argument("--task", default="causal_lm", choices=("causal_lm", "reward", "value"))
    parser.add_argument("--ppo", action="store_true",
                        help="plan PPO instead: actor, reference (none under LoRA: the actor's base), reward "
                             "model and critic, all of --model's shape; --batch rollouts, --minibatch updates")
    parser.add_argument("--mesh", default="1,1,1", help="data,fsdp,tensor")
    parser.add_argument("--train_mode", default="full", choices=TRAIN_MODES)
    parser.add_argument("--batch", type=int, default=8, help="global sequences per step (PPO: per rollout)")
    parser.add_argument("--minibatch", type=int, default=8, help="PPO: sequences per update")
    parser.add_argument("--length", type=int, default=512, help="tokens per sequence (PPO: prompt + response)")
    parser.add_argument("--remat", default="none", choices=REMAT_POLICIES, help="what each layer keeps for backward")
    parser.add_argument("--dtype_bytes", type=int, default=4, choices=(2, 4),
                        help="compute dtype's bytes (2: bfloat16); 2 also stores frozen weights in bf16")
    parser.add_argument("--device_gib", type=float, default=0.0,
                        help="a device's memory: say which remat policies fit in it")
    parser.add_argument("--lora_rank", type=int, default=8, help="with --train_mode=lora")
    parser.add_argument("--attention", default="fused", choices=("fused", "materialised"),
                        help="fused: no T x T scores kept (cuDNN/Splash, jaxrlhf's CPU path); materialised: "
                             "model.attention=xla, or the default path on an accelerator")
    args = parser.parse_args(argv)
    mesh = SimpleNamespace(shape=dict(zip(shd.MESH_AXES, map(int, args.mesh.split(",")))))
    lora = LoRAConfig(rank=args.lora_rank, targets=model_block().lora_targets) if args.train_mode == "lora" else None
    with cli_errors():  # a missing or unreadable model dir: one line, exit 2
        hf_config = read_config(resolve_model_dir(args.model))
        roles = [(name, task, mode, *abstract_model(hf_config, task, lora=lora if mode == "lora" else None), work)
                 for name, task, mode, work in _roles(args)]
    try:
        check_batch(mesh, {"--batch": args.batch, **({"--minibatch": args.minibatch} if args.ppo else {})})
        warnings = check_axes({name: nnx.state(model) for name, _, _, model, _, _ in roles}, mesh)
    except shd.MeshError as e:
        sys.exit(print(f"error: {e}", file=sys.stderr) or 2)
    limit = int(args.device_gib * 2**30) or None

    def plan(remat):
        plans = []
        for name, _, mode, model, cfg, work in roles:
            trainable, frozen = _split(model, mode, args.dtype_bytes)
            workload = Workload(**work, remat=remat, dtype_bytes=args.dtype_bytes,
                                fused_attention=args.attention == "fused")
            plans.append(plan_model(name, trainable, frozen, Dims.of(cfg), workload, mesh))
        return plans

    print(format_plan(plan(args.remat), mesh, limit))
    if limit:
        fits = [r for r in REMAT_POLICIES if per_device_total(plan(r)) <= limit]
        print(f"fits in {args.device_gib:g} GiB with remat: {', '.join(fits)}" if fits else
              f"no remat policy fits in {args.device_gib:g} GiB: shard more (--mesh) or use a smaller batch")
    for line in warnings:
        print(line)


def _roles(args) -> list[tuple[str, str, str | None, dict]]:
    """(name, task, train mode or None for a frozen model, Workload fields) of each model the run holds."""
    if not args.ppo:
        return [(args.task, args.task, args.train_mode,
                 dict(train_batch=args.batch, train_length=args.length,
                      logits_chunk=128 if args.task == "causal_lm" else 0))]
    B, M, T = args.batch, args.minibatch, args.length
    scored = dict(forward_batch=B, forward_length=T)
    trained = dict(scored, train_batch=M, train_length=T)
    reference = [] if args.train_mode == "lora" else [("reference", "causal_lm", None, dict(scored, logits_chunk=128))]
    return [("actor", "causal_lm", args.train_mode, dict(trained, logits_chunk=128, cache_batch=B, cache_length=T)),
            *reference,
            ("reward model", "reward", None, scored),
            ("critic", "value", args.train_mode, trained)]


def _split(model, mode: str | None, dtype_bytes: int):
    """(trainable, frozen) abstract states; frozen weights in bf16 when the compute dtype is (frozen_dtype=auto)."""
    if mode is None:
        trainable, frozen = None, nnx.state(model)
    else:
        _, trainable, frozen = split_trainable(model, mode)
    if dtype_bytes == 2:
        frozen = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.bfloat16)
                                        if jnp.issubdtype(s.dtype, jnp.floating) else s, frozen)
    return trainable, frozen


if __name__ == "__main__":
    main()
