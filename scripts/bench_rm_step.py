"""One reward-model train step on MiniLM-L6: seconds and page faults, by malloc setting and layer layout.

    python scripts/bench_rm_step.py                       # prints a table
    python scripts/bench_rm_step.py --out docs/benchmarks.md

The step of `configs/rm.py` (16 pairs = 32 sequences of --length tokens, AdamW, float32) timed after one
compiling step, each variant in its own process: glibc's default malloc, `GLIBC_TUNABLES=
glibc.malloc.hugetlb=1` (what jaxrlhf's entry points set, `jaxrlhf/infra/host_memory.py`), scanned or
unrolled layers; and the same step in PyTorch (`BertForSequenceClassification`, torch.optim.AdamW,
2 threads) for scale. Minor page faults are counted per step with getrusage.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import benchlib  # first: puts this checkout on sys.path

MARK_START = "<!-- bench_rm_step:start (written by scripts/bench_rm_step.py; rerun it rather than editing) -->"
MARK_END = "<!-- bench_rm_step:end -->"
TUNABLE = "glibc.malloc.hugetlb=1"
VARIANTS = [  # (label, backend, GLIBC_TUNABLES, scan_layers)
    ("jaxrlhf, glibc default malloc, scanned layers", "jax", "", True),
    ("jaxrlhf, hugetlb=1, scanned layers", "jax", TUNABLE, True),
    ("jaxrlhf, hugetlb=1, unrolled layers (configs/rm.py)", "jax", TUNABLE, False),
    ("PyTorch, glibc default malloc", "torch", "", None),
    ("PyTorch, hugetlb=1", "torch", TUNABLE, None),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--length", type=int, default=224, help="padded tokens per sequence")
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--steps", type=int, default=6, help="timed steps after the compiling one")
    p.add_argument("--out", default="", help="markdown file whose bench_rm_step section is (re)written")
    benchlib.add_worker_args(p, ("jax:0", "jax:1", "torch"))
    return p.parse_args(argv)


def batch_arrays(pairs: int, length: int):
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (pairs, length)).astype(np.int32)
    ids[:, 0] = 101  # [CLS]
    mask = np.ones((pairs, length), np.int32)
    mask[:, length - 20:] = 0
    return ids, mask


def timed_steps(step, n: int) -> tuple[list[float], list[int]]:
    seconds, faults = [], []
    for _ in range(n + 1):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return seconds, faults


def jax_worker(args, scan_layers: bool) -> dict:
    import jax
    import numpy as np

    from jaxrlhf.configs import rm as rm_config
    from jaxrlhf.infra.sharding import make_mesh
    from jaxrlhf.rm.step import make_train_step
    from jaxrlhf.training.optim import make_optimizer
    from jaxrlhf.training.run_setup import init_train_state, load_model
    from jaxrlhf.training.trainable import split_trainable

    config = rm_config.get_config()
    config.model.scan_layers = scan_layers
    loaded = load_model(config, make_mesh(), "reward")
    optimizer, schedule = make_optimizer(config.optim, 1000)
    graphdef, trainable, frozen = split_trainable(loaded.model, "full")
    holder = {"state": init_train_state(trainable, optimizer)}
    ids, mask = batch_arrays(args.pairs, args.length)
    batch = {"chosen_ids_BxT": ids, "rejected_ids_BxT": ids[::-1].copy(), "chosen_mask_BxT": mask,
             "rejected_mask_BxT": mask, "weight_B": np.ones(args.pairs, np.float32),
             "margin_B": np.zeros(args.pairs, np.float32), "chosen_len_B": mask.sum(1), "rejected_len_B": mask.sum(1)}
    step_fn = jax.jit(make_train_step(graphdef, config.loss, optimizer, schedule), donate_argnums=(0,))
    key = jax.random.key(0)

    def step():
        holder["state"], metrics = step_fn(holder["state"], frozen, batch, key)
        jax.block_until_ready(metrics["loss"])

    return dict(zip(("seconds", "faults"), timed_steps(step, args.steps)))


def torch_worker(args) -> dict:
    import torch
    from transformers import BertForSequenceClassification

    from jaxrlhf.models.hf_files import resolve_model_dir

    torch.set_num_threads(2)
    model = BertForSequenceClassification.from_pretrained(str(resolve_model_dir("minilm", None)), num_labels=1,
                                                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    ids, mask = batch_arrays(args.pairs, args.length)
    ids_t = torch.from_numpy(ids).long().repeat(2, 1)
    mask_t = torch.from_numpy(mask).long().repeat(2, 1)
    B = args.pairs

    def step():
        r = model(input_ids=ids_t, attention_mask=mask_t).logits[:, 0]
        loss = -torch.nn.functional.logsigmoid(r[:B] - r[B:]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return dict(zip(("seconds", "faults"), timed_steps(step, args.steps)))


def run_variant(argv, label, backend, tunables, scan) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["JAXRLHF_MALLOC_TUNING"] = "0"  # the worker gets exactly the variant's setting
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    worker = backend if scan is None else f"jax:{int(scan)}"
    result = benchlib.run_worker(__file__, argv, worker, env=env, capture=True, label=label)
    steady_s, steady_f = result["seconds"][1:], result["faults"][1:]
    return {"label": label, "median_s": statistics.median(steady_s), "min_s": min(steady_s),
            "faults": int(statistics.median(steady_f)), "first_s": result["seconds"][0]}


def render(rows, args) -> str:
    base = rows[0]["median_s"]
    lines = [MARK_START, "## Reward-model step: malloc and layer layout", "",
             f"One train step of `configs/rm.py` (MiniLM-L6, {args.pairs} pairs = {2 * args.pairs} sequences of "
             f"{args.length} tokens, AdamW, float32) on this CPU, each row in its own process; median and best of "
             f"{args.steps} steps after the compiling one; minor page faults per step (median).", ""]
    lines += benchlib.table(
        ["variant", "median s", "best s", "vs first row", "page faults / step", "first step s"],
        [[r["label"], f"{r['median_s']:.2f}", f"{r['min_s']:.2f}", f"{base / r['median_s']:.2f}x", f"{r['faults']:,}",
          f"{r['first_s']:.1f}"] for r in rows])
    lines += ["", "XLA's CPU runtime mallocs each step's temporaries afresh; glibc serves such large blocks by "
              "mmap and unmaps them on free, so every step faults its pages back in, zero-filled, 4 KiB at a time. "
              "With `glibc.malloc.hugetlb=1` those mappings get transparent huge pages. PyTorch, shown for scale, "
              "does not gain from the tunable.", "",
              f"    python scripts/bench_rm_step.py --length {args.length} --pairs {args.pairs} --steps {args.steps}",
              "", f"Run {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {benchlib.machine()['cpus']} CPUs.",
              MARK_END]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args._worker:
        result = torch_worker(args) if args._worker == "torch" else jax_worker(args, args._worker.endswith(":1"))
        benchlib.worker_result(args, result)
        return 0
    rows = []
    for label, backend, tunables, scan in VARIANTS:
        rows.append(run_variant(argv, label, backend, tunables, scan))
        print(f"{label}: {rows[-1]['median_s']:.2f} s/step, {rows[-1]['faults']:,} faults/step", flush=True)
    section = render(rows, args)
    print("\n" + section)
    benchlib.write_section(args.out, section, MARK_START, MARK_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
