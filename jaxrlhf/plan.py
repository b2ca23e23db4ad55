"""Plan a model's per-device memory on any mesh from its config.json alone (no weights, no devices):

    python -m jaxrlhf.plan --model=smollm2 --mesh=1,8,1 --batch=64 --length=512

The maths lives in `jaxrlhf.infra.planner` and `jaxrlhf.infra.mesh_checks`; this file is the command line.
"""

from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

from flax import nnx

from jaxrlhf.configs.base import model_block
from jaxrlhf.infra import sharding as shd
from jaxrlhf.infra.mesh_checks import check_axes, check_batch
from jaxrlhf.infra.planner import REMAT_POLICIES, Dims, Workload, format_plan, plan_model
from jaxrlhf.infra.runtime import cli_errors
from jaxrlhf.models.hf_files import read_config, resolve_model_dir
from jaxrlhf.models.layers import LoRAConfig
from jaxrlhf.models.registry import abstract_model
from jaxrlhf.training.trainable import TRAIN_MODES, split_trainable


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF dir, hub id or asset alias")
    parser.add_argument("--task", default="causal_lm", choices=("causal_lm", "reward", "value"))
    parser.add_argument("--mesh", default="1,1,1", help="data,fsdp,tensor")
    parser.add_argument("--train_mode", default="full", choices=TRAIN_MODES)
    parser.add_argument("--batch", type=int, default=8, help="global sequences per step")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--remat", default="none", choices=REMAT_POLICIES, help="what each layer keeps for backward")
    parser.add_argument("--dtype_bytes", type=int, default=4, help="compute dtype's bytes (2: bfloat16)")
    parser.add_argument("--device_gib", type=float, default=0.0,
                        help="a device's memory: say which remat policies fit in it")
    parser.add_argument("--lora_rank", type=int, default=8, help="with --train_mode=lora")
    args = parser.parse_args(argv)
    mesh = SimpleNamespace(shape=dict(zip(shd.MESH_AXES, map(int, args.mesh.split(",")))))
    lora = LoRAConfig(rank=args.lora_rank, targets=model_block().lora_targets) if args.train_mode == "lora" else None
    with cli_errors():  # a missing or unreadable model dir: one line, exit 2
        model, cfg = abstract_model(read_config(resolve_model_dir(args.model)), args.task, lora=lora)
    try:
        check_batch(mesh, {"--batch": args.batch})
        warnings = check_axes({args.task: nnx.state(model)}, mesh)
    except shd.MeshError as e:
        sys.exit(print(f"error: {e}", file=sys.stderr) or 2)
    _, trainable, frozen = split_trainable(model, args.train_mode)
    limit = int(args.device_gib * 2**30) or None

    def plan(remat):
        work = Workload(train_batch=args.batch, train_length=args.length, remat=remat, dtype_bytes=args.dtype_bytes,
                        logits_chunk=128 if args.task == "causal_lm" else 0)
        return plan_model(args.task, trainable, frozen, Dims.of(cfg), work, mesh)

    print(format_plan([plan(args.remat)], mesh, limit))
    if limit:
        fits = [r for r in REMAT_POLICIES if plan(r).total <= limit]
        print(f"fits in {args.device_gib:g} GiB with remat: {', '.join(fits)}" if fits else
              f"no remat policy fits in {args.device_gib:g} GiB: shard more (--mesh) or use a smaller batch")
    for line in warnings:
        print(line)


if __name__ == "__main__":
    main()
