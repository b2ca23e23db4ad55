"""Worker processes the tests start, one named entry point each, run from the repository root:

    python -m tests.workers train_rm --model DIR --data FILE --work DIR --mesh 1,8,1 [--stop-after N]
    python -m tests.workers multihost_rm --model DIR --data FILE --work DIR --out DIR [--set train.epochs=2 ...]
    python -m tests.workers train_dpo --model DIR --data FILE --work DIR --mesh 2,2,2 [--set loss.type="ipo" ...]
    python -m tests.workers multihost_ppo --policy DIR --rm DIR --prompts FILE --work DIR
    python -m tests.workers placed_bytes --model DIR

tests/helpers/processes.py starts them with fake CPU devices (XLA_FLAGS) and, for several processes,
the JAXRLHF_* variables of a jax.distributed run. Each reports on stdout (`DEVICES n`, `RESULT {json}`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def _mesh(text: str) -> tuple[int, int, int]:
    data, fsdp, tensor = (int(x) for x in text.split(","))
    return data, fsdp, tensor


def train_rm(args) -> None:
    """The tiny RM run for one epoch on the mesh data,fsdp,tensor, logging every step (test_sharded_rm)."""
    import jax

    from jaxrlhf.train_rm import train
    from tests.helpers.runs import tiny_rm_config

    cfg = tiny_rm_config(args.model, args.data, args.work)
    cfg.train.epochs = 1
    cfg.train.log_every = 1
    cfg.train.checkpoint_every = args.checkpoint_every
    cfg.train.stop_after = args.stop_after
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = args.mesh
    print("DEVICES", len(jax.devices()))
    train(cfg)


def multihost_rm(args) -> None:
    """train_rm.train in one process of a (possibly one-process) run, recording what the host loop hands to
    the devices (row hashes of each training batch) and the parameters of the last checkpoint saved
    (test_multihost). `--set block.key=JSON` overrides the tiny RM config."""
    import numpy as np

    from jaxrlhf import train_rm
    from jaxrlhf.infra.checkpoint import Checkpointer
    from tests.helpers.runs import tiny_rm_config

    cfg = tiny_rm_config(args.model, args.data, args.work)
    for item in args.set:
        dotted, value = item.split("=", 1)
        block, key = dotted.rsplit(".", 1)
        cfg[block][key] = json.loads(value)

    rows, saved = [], {}

    def record_rows(done, batch, metrics, seconds):  # a loop hook: this process's rows of each step
        rows.append([hashlib.md5(r.tobytes()).hexdigest()[:10] for r in batch["chosen_ids_BxT"]])

    save = Checkpointer.save

    def recording_save(self, step, state, meta):
        save(self, step, state, meta)
        saved["params"] = state["params"]  # the last one saved is the final state (never donated after)

    Checkpointer.save = recording_save

    summary = train_rm.train(cfg, hooks=[record_rows])

    import jax

    local = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(saved["params"]):
        assert leaf.is_fully_replicated, (path, leaf.sharding)  # data parallel: a whole copy on each process
        local[jax.tree_util.keystr(path)] = np.asarray(leaf.addressable_data(0))
    checksum = hashlib.sha256(b"".join(local[k].tobytes() for k in sorted(local))).hexdigest()
    np.savez(args.out + f"/params_{jax.process_index()}.npz", **local)
    print("RESULT " + json.dumps(dict(process=jax.process_index(), processes=jax.process_count(),
                                      devices=jax.device_count(), checksum=checksum, rows=rows, summary=summary)))


def train_dpo(args) -> None:
    """The tiny DPO run (tests/test_train_dpo.py's config) on the mesh data,fsdp,tensor, in one process of a
    possibly multi-process run, logging every step; prints its losses by step and summary
    (test_sharded_dpo). `--set block.key=JSON` overrides the config."""
    import jax

    from jaxrlhf.train_dpo import train
    from tests.helpers.runs import tiny_dpo_config

    cfg = tiny_dpo_config(args.model, args.data, args.work)
    cfg.train.log_every = 1
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = args.mesh
    for item in args.set:
        dotted, value = item.split("=", 1)
        block, key = dotted.rsplit(".", 1)
        cfg[block][key] = json.loads(value)
    summary = train(cfg)
    records = [json.loads(line) for line in (Path(args.work) / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["train/loss"] for r in records if "train/loss" in r}
    print("RESULT " + json.dumps(dict(process=jax.process_index(), processes=jax.process_count(),
                                      devices=jax.device_count(), losses=losses, summary=summary)))


def multihost_ppo(args) -> None:
    """3 tiny PPO iterations with export, reporting a checksum of the final actor (test_multihost_ppo)."""
    from jaxrlhf.train_ppo import train
    from tests.helpers.runs import tiny_ppo_config

    cfg = tiny_ppo_config(Path(args.policy), Path(args.rm), Path(args.prompts), Path(args.work))
    cfg.train.iterations = 3
    cfg.train.checkpoint_every = 0
    cfg.train.export = True
    cfg.ppo.rollout_batch_size, cfg.ppo.minibatch_size = 8, 4
    _train_and_report_actor(train, cfg)


def multihost_grpo(args) -> None:
    """3 tiny GRPO iterations (a KL loss to the reference, two minibatches of whole groups a rollout) with
    export, reporting a checksum of the final actor (test_train_grpo's multi-host check)."""
    from jaxrlhf.train_grpo import train
    from tests.helpers.runs import tiny_grpo_config

    cfg = tiny_grpo_config(Path(args.policy), Path(args.prompts), Path(args.work))
    cfg.train.iterations = 3
    cfg.train.checkpoint_every = 0
    cfg.train.export = True
    cfg.grpo.kl_coef = 0.05
    _train_and_report_actor(train, cfg)


def _train_and_report_actor(train, cfg) -> None:
    """Runs `train(cfg)` and prints `RESULT {process, processes, devices, checksum}`: a sha256 of the actor
    the last checkpoint saved, the same on every process when they hold one model."""
    import jax
    import numpy as np

    from jaxrlhf.infra.checkpoint import Checkpointer
    from jaxrlhf.infra.multihost import to_host

    saved = {}
    save = Checkpointer.save

    def recording_save(self, step, state, meta):
        save(self, step, state, meta)
        saved["actor"] = state["actor"]["params"]

    Checkpointer.save = recording_save
    train(cfg)
    leaves = [to_host(x) for x in jax.tree_util.tree_leaves(saved["actor"])]
    checksum = hashlib.sha256(b"".join(np.ascontiguousarray(x).tobytes() for x in leaves)).hexdigest()
    print("RESULT " + json.dumps(dict(process=jax.process_index(), processes=jax.process_count(),
                                      devices=jax.device_count(), checksum=checksum)))


def sharded_ppo(args) -> None:
    """2 tiny PPO iterations on the mesh data,fsdp,tensor (test_train_ppo's sharded-equals-one-device check)."""
    import jax

    from jaxrlhf.train_ppo import train
    from tests.helpers.runs import tiny_ppo_config

    cfg = tiny_ppo_config(Path(args.policy), Path(args.rm), Path(args.prompts), Path(args.work))
    cfg.train.iterations = 2
    cfg.train.checkpoint_every = 0
    cfg.ppo.rollout_batch_size, cfg.ppo.minibatch_size = 16, 8  # minibatches divide over 8 devices
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = args.mesh
    print("DEVICES", len(jax.devices()))
    train(cfg)


def sharded_grpo(args) -> None:
    """2 tiny GRPO iterations (with a KL loss to the reference) on the mesh data,fsdp,tensor
    (test_train_grpo's sharded-equals-one-device check)."""
    import jax

    from jaxrlhf.train_grpo import train
    from tests.helpers.runs import tiny_grpo_config

    cfg = tiny_grpo_config(Path(args.policy), Path(args.prompts), Path(args.work))
    cfg.train.iterations = 2
    cfg.train.checkpoint_every = 0
    cfg.grpo.kl_coef = 0.05
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = args.mesh
    print("DEVICES", len(jax.devices()))
    train(cfg)


def placed_bytes(args) -> None:
    """For five meshes over the devices: the planner's per-device bytes and those from_pretrained places
    (test_planner). Prints `RESULT [...]`."""
    import collections

    import jax
    from flax import nnx

    from jaxrlhf.configs.base import optim_block
    from jaxrlhf.infra import planner
    from jaxrlhf.infra import sharding as shd
    from jaxrlhf.models import registry
    from jaxrlhf.models.hub import from_pretrained
    from jaxrlhf.models.layers import LoRAConfig
    from jaxrlhf.training.optim import init_opt_state, make_optimizer
    from jaxrlhf.training.trainable import split_trainable

    def placed(tree):  # bytes each device actually holds
        per_device = collections.Counter({d.id: 0 for d in jax.devices()})
        for x in jax.tree_util.tree_leaves(tree):
            for shard in x.addressable_shards:
                per_device[shard.device.id] += shard.data.nbytes
        return sorted(per_device.values())

    out = []
    for sizes, mode in [((8, 1, 1), "full"), ((1, 8, 1), "full"), ((1, 1, 8), "full"), ((2, 2, 2), "full"),
                        ((1, 4, 2), "lora")]:
        mesh = shd.make_mesh(*sizes)
        lora = LoRAConfig(rank=4, targets="q_proj|v_proj") if mode == "lora" else None
        loaded = from_pretrained(args.model, "reward", mesh=mesh, lora=lora)
        _, trainable, frozen = split_trainable(loaded.model, mode)
        optimizer, _ = make_optimizer(optim_block(), 10)
        work = planner.Workload()
        plan = planner.plan_model("rm", trainable, frozen, planner.Dims.of(loaded.config), work, mesh)
        abstract = registry.abstract_model(loaded.hf_config, "reward", lora=lora)[0]
        out.append({"mesh": sizes, "mode": mode, "planned_params": plan.params, "planned_optimiser": plan.optimiser,
                    "planned_abstract": planner.state_bytes(nnx.state(abstract), mesh),
                    "placed_params": placed(nnx.state(loaded.model)),
                    "placed_optimiser": placed(init_opt_state(optimizer, trainable))})
    print("RESULT" + json.dumps(out))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.workers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="worker", required=True)
    p = sub.add_parser("train_rm", help=train_rm.__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--mesh", type=_mesh, default=(1, 1, 1), help="data,fsdp,tensor")
    p.add_argument("--stop-after", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.set_defaults(run=train_rm)
    p = sub.add_parser("multihost_rm", help=multihost_rm.__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True, help="folder for params_<process>.npz")
    p.add_argument("--set", action="append", default=[], metavar="BLOCK.KEY=JSON")
    p.set_defaults(run=multihost_rm)
    p = sub.add_parser("train_dpo", help=train_dpo.__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--mesh", type=_mesh, default=(1, 1, 1), help="data,fsdp,tensor")
    p.add_argument("--set", action="append", default=[], metavar="BLOCK.KEY=JSON")
    p.set_defaults(run=train_dpo)
    p = sub.add_parser("multihost_ppo", help=multihost_ppo.__doc__)
    for name in ("--policy", "--rm", "--prompts", "--work"):
        p.add_argument(name, required=True)
    p.set_defaults(run=multihost_ppo)
    p = sub.add_parser("sharded_ppo", help=sharded_ppo.__doc__)
    for name in ("--policy", "--rm", "--prompts", "--work"):
        p.add_argument(name, required=True)
    p.add_argument("--mesh", type=_mesh, default=(1, 1, 1), help="data,fsdp,tensor")
    p.set_defaults(run=sharded_ppo)
    p = sub.add_parser("multihost_grpo", help=multihost_grpo.__doc__)
    for name in ("--policy", "--prompts", "--work"):
        p.add_argument(name, required=True)
    p.set_defaults(run=multihost_grpo)
    p = sub.add_parser("sharded_grpo", help=sharded_grpo.__doc__)
    for name in ("--policy", "--prompts", "--work"):
        p.add_argument(name, required=True)
    p.add_argument("--mesh", type=_mesh, default=(1, 1, 1), help="data,fsdp,tensor")
    p.set_defaults(run=sharded_grpo)
    p = sub.add_parser("placed_bytes", help=placed_bytes.__doc__)
    p.add_argument("--model", required=True)
    p.set_defaults(run=placed_bytes)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
