"""One reward-model train step on MiniLM-L6: seconds and page faults, by malloc setting and layer layout.

    python scripts/bench_rm_step.py                       # prints a table
    python scripts/bench_rm_step.py --out docs/benchmarks.md
    python scripts/bench_rm_step.py --quick               # the same step, 3 timed per variant
    python scripts/bench_rm_step.py --steps 1 --length 32 --out ''   # smoke test

The step of `configs/rm.py` (16 pairs = 32 sequences of --length tokens, AdamW, float32) timed after one
compiling step, each variant in its own process: glibc's default malloc, `GLIBC_TUNABLES=
glibc.malloc.hugetlb=1` (what jaxrlhf's entry points set, `jaxrlhf/infra/host_memory.py`), scanned or
unrolled layers; and the same step in PyTorch (`BertForSequenceClassification`, torch.optim.AdamW,
2 threads) for scale. Minor page faults are counted per step with getrusage.

The variants' processes start at once and take turns step by step (`benchlib.run_in_turns`: each blocks
before its next step until it holds the baton, the parent passes it round the variants in order), so only
one computes at any moment and every variant's steps are spread over the same minutes: a drift of the
machine's speed hits all alike. A step is timed from its call to its result on the host; the waits
between turns are outside it. `--quick` times fewer of the same steps.
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
QUICK = {"steps": 3}  # the same step, fewer of them
TUNABLE = "glibc.malloc.hugetlb=1"
VARIANTS = [  # (label, backend, GLIBC_TUNABLES, scan_layers)
    ("jaxrlhf, glibc default malloc, scanned layers", "jax", "", True),
    ("jaxrlhf, hugetlb=1, scanned layers", "jax", TUNABLE, True),
    ("jaxrlhf, hugetlb=1, unrolled layers (configs/rm.py)", "jax", TUNABLE, False),
    ("PyTorch, glibc default malloc", "torch", "", None),
    ("PyTorch, hugetlb=1", "torch", TUNABLE, None),
]
HEADLINE = ("jaxrlhf, hugetlb=1, unrolled layers (configs/rm.py)", "PyTorch, glibc default malloc")  # as users run


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--length", type=int, default=224, help="padded tokens per sequence")
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--steps", type=int, default=6, help="timed steps after the compiling one")
    p.add_argument("--out", default="", help="markdown file whose bench_rm_step section is (re)written")
    benchlib.add_json_arg(p)
    benchlib.apply_quick(p, argv, QUICK)
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
    """The compiling step and `n` more, each one turn of the baton (the wait is outside its time)."""
    seconds, faults = [], []
    baton = benchlib.baton()
    for _ in range(n + 1):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        baton.pass_on()
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


def variant_side(argv, label, backend, tunables, scan) -> benchlib.Side:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["JAXRLHF_MALLOC_TUNING"] = "0"  # the worker gets exactly the variant's setting
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    return benchlib.Side(label, backend if scan is None else f"jax:{int(scan)}", argv, env=env)


def row(label: str, result: dict) -> dict:
    steady_s, steady_f = result["seconds"][1:], result["faults"][1:]
    return {"label": label, "median_s": statistics.median(steady_s), "min_s": min(steady_s),
            "faults": int(statistics.median(steady_f)), "first_s": result["seconds"][0], "seconds": steady_s}


def headline(rows) -> dict:
    """The configs/rm.py step against PyTorch's as its users run it."""
    by = {r["label"]: r for r in rows}
    jx, th = by[HEADLINE[0]], by[HEADLINE[1]]
    return {"name": "reward-model train step vs PyTorch", "best": th["min_s"] / jx["min_s"],
            "median": th["median_s"] / jx["median_s"],
            "detail": f"jaxrlhf (configs/rm.py) {jx['median_s']:.2f} s vs PyTorch {th['median_s']:.2f} s per step "
                      f"(median)"}


def render(rows, args, mach: dict, results: dict) -> str:
    base = rows[0]["median_s"]
    lines = [MARK_START, "## Reward-model step: malloc and layer layout", "", *benchlib.quick_note(args, QUICK),
             f"One train step of `configs/rm.py` (MiniLM-L6, {args.pairs} pairs = {2 * args.pairs} sequences of "
             f"{args.length} tokens, AdamW, float32) on this CPU, each row in its own process, the processes "
             f"taking turns step by step (only one computes at any moment); median and best of "
             f"{args.steps} steps after the compiling one; minor page faults per step (median).", ""]
    lines += benchlib.table(
        ["variant", "median s", "best s", "vs first row", "page faults / step", "first step s"],
        [[r["label"], f"{r['median_s']:.2f}", f"{r['min_s']:.2f}", f"{base / r['median_s']:.2f}x", f"{r['faults']:,}",
          f"{r['first_s']:.1f}"] for r in rows])
    lines += ["", "XLA's CPU runtime mallocs each step's temporaries afresh; glibc serves such large blocks by "
              "mmap and unmaps them on free, so every step faults its pages back in, zero-filled, 4 KiB at a time. "
              "With `glibc.malloc.hugetlb=1` those mappings get transparent huge pages. PyTorch, shown for scale, "
              "does not gain from the tunable.", "",
              f"    {command(args)}", "",
              f"{benchlib.machine_line(mach)} Turns: {len(results)} processes, "
              f"{'/'.join(sorted({str(r['turns']) for r in results.values()}))} turns each, over "
              f"{max(r['last_turn'] for r in results.values()) / 60:.1f} min. Run {mach['date']}.",
              MARK_END]
    return "\n".join(lines) + "\n"


def command(args) -> str:
    flags = ["--quick"] if args.quick else []
    return " ".join(["python scripts/bench_rm_step.py", *flags, f"--length {args.length} --pairs {args.pairs} "
                     f"--steps {args.steps}"])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args._worker:
        benchlib.baton()  # first: nothing of this variant runs outside its turns
        result = torch_worker(args) if args._worker == "torch" else jax_worker(args, args._worker.endswith(":1"))
        benchlib.worker_result(args, result)
        return 0
    start = benchlib.machine_snapshot()
    results = benchlib.run_in_turns(__file__, [variant_side(argv, *v) for v in VARIANTS], capture=True)
    rows = [row(label, results[label]) for label, *_ in VARIANTS]
    for r in rows:
        print(f"{r['label']}: {r['median_s']:.2f} s/step, {r['faults']:,} faults/step", flush=True)
    mach = benchlib.machine_description(start)
    section = render(rows, args, mach, results)
    print("\n" + section)
    benchlib.write_section(args.out, section, MARK_START, MARK_END)
    head = headline(rows)
    benchlib.print_headline(head)
    benchlib.write_json(args.json, "rm_step", args, command(args), mach, head, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
