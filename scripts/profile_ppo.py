"""Where one PPO iteration's time goes on this machine: bench_ppo's jaxrlhf job, one iteration traced with
`jax.profiler`, the XLA operations of each compiled program summed by kind.

    python scripts/profile_ppo.py                # the bench_ppo job (SmolLM2, 8 prompts, 64 + 32 tokens)
    python scripts/profile_ppo.py --trace DIR    # only summarise a trace already written (an .xplane.pb inside)

Prints the iteration's phase seconds (from metrics.jsonl), then per program (jit_sample, jit_experience,
jit_updates, ...) its summed operation time and the operation kinds that make it up: `ynn_fusion` are
matrix products (XLA's YNNPACK kernels), `dot` those left to Eigen, `copy_*`/`transpose_*` layout changes,
`dynamic-slice_*`/`*dynamic-update-slice*` the scanned layers' per-layer reads and writes, the rest
elementwise loops. Times are summed over XLA's worker threads, so a program's total can exceed its wall time.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
from pathlib import Path

import benchlib  # first: puts this checkout on sys.path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trace", default="", help="a profile folder to summarise instead of running the job")
    p.add_argument("--top", type=int, default=8, help="operation kinds shown per program")
    return p.parse_args(argv)


def op_kind(name: str) -> str:
    """`copy_bitcast_fusion.14` -> `copy_bitcast_fusion`: one row per kind of operation."""
    return re.sub(r"\.\d+$", "", name)


def summarise(xplane: Path) -> dict[str, collections.Counter]:
    """{program: Counter(operation kind -> seconds)} over the XLA CPU worker threads of a trace."""
    from jax.profiler import ProfileData

    per_module: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for plane in ProfileData.from_file(str(xplane)).planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):
                continue
            for ev in line.events:
                module = dict(ev.stats).get("hlo_module")
                if module and not ev.name.startswith("end:"):
                    per_module[module][op_kind(ev.name)] += ev.duration_ns / 1e9
    return per_module


def print_summary(per_module: dict[str, collections.Counter], top: int) -> None:
    for module, kinds in sorted(per_module.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(kinds.values())
        print(f"\n{module}: {total:.2f} s of operations")
        for kind, s in kinds.most_common(top):
            print(f"  {s:7.2f} s  {100 * s / total:5.1f}%  {kind}")


def run_job() -> Path:
    """bench_ppo's jaxrlhf job for one warm-up and one traced iteration; returns the trace folder."""
    import bench_ppo

    import jaxrlhf.train_ppo as tp

    args = bench_ppo.parse_args(["--iters", "1"])
    if not Path(args.rm_dir).is_dir():
        bench_ppo.make_rm_dir(args)
    workdir = Path(tempfile.mkdtemp(prefix="profile_ppo_"))
    config = bench_ppo.jax_config(args, str(workdir))
    config.train.profile_steps = "2:2"
    tp.train(config)
    for line in open(workdir / "metrics.jsonl"):
        row = json.loads(line)
        if "ppo/iteration_seconds" in row:
            print({k.split("/")[-1]: round(v, 2) for k, v in row.items() if k.endswith("_seconds")})
    return workdir / "profile"


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.trace:
        from jaxrlhf.infra import host_memory

        host_memory.reexec_with_tuned_malloc()  # as the entry points and bench_ppo's jaxrlhf side run
    folder = Path(args.trace) if args.trace else run_job()
    traces = sorted(folder.glob("**/*.xplane.pb"))
    if not traces:
        sys.exit(f"no .xplane.pb under {folder}")
    print(f"trace: {traces[-1]}")
    print(benchlib.machine_line(benchlib.machine_description()))
    print_summary(summarise(traces[-1]), args.top)


if __name__ == "__main__":
    main()
