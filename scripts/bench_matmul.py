"""XLA's CPU matmuls against PyTorch's on the GEMM shapes of the reward-model step, in one process.

    python scripts/bench_matmul.py                         # 2 threads, XLA's default kernels
    python scripts/bench_matmul.py --xla_flags=--xla_cpu_use_onednn=true \
        --xla_flags=--xla_cpu_experimental_ynn_fusion_type=-individual_dot    # and with these flags

The ratio of the two libraries' kernels decides how jaxrlhf's CPU speed compares with PyTorch's on a given
processor (docs/benchmarks.md, "Why the CPU ratios move"). Both sides run in the same process and their calls
alternate, so a drift of the machine's speed hits both alike; each --xla_flags value runs in its own process
(XLA reads its flags once). Shapes: MiniLM's MLP at 32 sequences x 224 tokens: X.W, dY.W^T, X^T.dY.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import benchlib  # first: puts this checkout on sys.path

CASES = {  # name: (lhs shape, rhs shape, form)
    "X.W 7168x384 . 384x1536": ((7168, 384), (384, 1536), "nn"),
    "X.W 7168x1536 . 1536x384": ((7168, 1536), (1536, 384), "nn"),
    "dY.W^T 7168x1536 . (384x1536)^T": ((7168, 1536), (384, 1536), "nt"),
    "X^T.dY (7168x384)^T . 7168x1536": ((7168, 384), (7168, 1536), "tn"),
}
FORMS = {"nn": lambda a, b: a @ b, "nt": lambda a, b: a @ b.T, "tn": lambda a, b: a.T @ b}


def flops(lhs, rhs, form) -> float:
    m, k = (lhs[1], lhs[0]) if form == "tn" else lhs
    n = rhs[0] if form == "nt" else rhs[1]
    return 2.0 * m * k * n


def measure(repeats: int, threads: int) -> list[list[str]]:
    import jax
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    rows = []
    for name, (lhs, rhs, form) in CASES.items():
        a, b = (np.random.default_rng(0).random(s, np.float32) for s in (lhs, rhs))
        ja, jb, ta, tb = jax.numpy.asarray(a), jax.numpy.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
        xla, pt = jax.jit(FORMS[form]), FORMS[form]
        xla(ja, jb).block_until_ready(), pt(ta, tb)  # compile / warm up
        tx, tt = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            xla(ja, jb).block_until_ready()
            tx.append(time.perf_counter() - t)
            t = time.perf_counter()
            pt(ta, tb)
            tt.append(time.perf_counter() - t)
        f = flops(lhs, rhs, form) / 1e9
        gx, gt = f / float(np.median(tx)), f / float(np.median(tt))
        rows.append([name, f"{f / min(tx):.0f}", f"{gx:.0f}", f"{f / min(tt):.0f}", f"{gt:.0f}", f"{gt / gx:.2f}x"])
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--xla_flags", action="append", help="an XLA_FLAGS value (repeatable: one process each); the "
                   "default kernels always run first")
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="torch threads (XLA uses every CPU)")
    p.add_argument("--_one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._one:
        for row in measure(args.repeats, args.threads):
            print("\t".join(row))
        return 0
    start = benchlib.machine_snapshot()
    header = ["shape", "XLA best GFLOP/s", "XLA median", "PyTorch best", "PyTorch median", "PyTorch / XLA (median)"]
    for flags in ["", *(args.xla_flags or [])]:
        env = dict(os.environ, XLA_FLAGS=flags)
        out = subprocess.run([sys.executable, __file__, "--_one", "--repeats", str(args.repeats), "--threads",
                              str(args.threads)], env=env, capture_output=True, text=True, check=True).stdout
        print(f"\nXLA_FLAGS={flags!r}")
        print("\n".join(benchlib.table(header, [line.split("\t") for line in out.strip().splitlines()])))
    print("\n" + benchlib.machine_line(benchlib.machine_description(start)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
