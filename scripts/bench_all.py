"""Every headline speed ratio of the README in one command: reruns the benchmarks, rewrites their sections of
docs/benchmarks.md, and writes a "Headline ratios" table to docs/benchmarks.md and to the README.

    python -m jaxrlhf.assets fetch minilm smollm2
    pip install --no-deps --target /tmp/trl116 trl==1.16.0 accelerate   # bench_rm, bench_dpo, bench_grpo
    pip install --no-deps --target /tmp/trl112 trl==1.12.0 accelerate   # PPOTrainer (bench_ppo)
    python scripts/bench_all.py              # the full runs
    python scripts/bench_all.py --quick      # each script's --quick: the same steps, fewer of them
    python scripts/bench_all.py --only ppo,rollout   # a subset; the other rows keep their last results

The ratios, each jaxrlhf's speed-up over the other side measured with the two sides interleaved (taking
turns call by call, iteration by iteration or every few steps, so that a drift of the machine's speed hits
both alike), and the floors the README claims:

- rm: reward-model training pairs/s vs TRL 1.16 RewardTrainer (scripts/bench_rm.py), floor 1.5x;
- ppo: one PPO iteration vs TRL 1.12 PPOTrainer (scripts/bench_ppo.py), floor 1.5x;
- rollout: rollout tokens/s vs transformers generate, the slowest mode (scripts/bench_rollout.py), floor 2x;
- rollout_group: G=8 samples per prompt, jaxrlhf's shared prefill vs transformers num_return_sequences
  (scripts/bench_rollout.py --group 8), floor 3x;
- grpo: one GRPO iteration vs TRL 1.16 GRPOTrainer (scripts/bench_grpo.py), floor 2x;
- rm_step: the configs/rm.py train step vs PyTorch (scripts/bench_rm_step.py), no floor (a diagnostic);
- dpo: DPO training steps/s vs TRL 1.16 DPOTrainer with PEFT LoRA (scripts/bench_dpo.py), floor 1.5x.

Each script writes its own section of docs/benchmarks.md and its result as JSON (`--json`) into
`--results`; the table is made from those files, so a row not rerun (`--only`) shows its last run and says
so. "met": the median speed-up reaches the floor ("best only": only the best does). The table goes
between the `<!-- bench_all:start ... -->` and `<!-- bench_all:end -->` marks: appended to
docs/benchmarks.md when it has none, left out of a README that has none (a person places them there).
Nothing is written when a benchmark failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import benchlib  # first: puts this checkout on sys.path
from benchlib import REPO

MARK_START = "<!-- bench_all:start (written by scripts/bench_all.py; rerun it rather than editing) -->"
MARK_END = "<!-- bench_all:end -->"
TITLE = "## Headline ratios"


@dataclasses.dataclass(frozen=True)
class Bench:
    name: str
    script: str
    floor: float | None    # the speed-up the README claims (None: no claim)
    trl: str = ""          # the TRL pin its other side needs, in its own folder
    assets: tuple[str, ...] = ()
    args: tuple[str, ...] = ()  # the script's own flags for this row (one script, several rows)


BENCHES = (
    Bench("rm", "scripts/bench_rm.py", 1.5, benchlib.TRL_REWARD_VERSION, ("minilm",)),
    Bench("ppo", "scripts/bench_ppo.py", 1.5, benchlib.TRL_PPO_VERSION, ("smollm2",)),
    Bench("rollout", "scripts/bench_rollout.py", 2.0, assets=("smollm2",)),
    Bench("rollout_group", "scripts/bench_rollout.py", 3.0, assets=("smollm2",), args=("--group", "8")),
    Bench("rm_step", "scripts/bench_rm_step.py", None, assets=("minilm",)),
    Bench("dpo", "scripts/bench_dpo.py", 1.5, benchlib.TRL_REWARD_VERSION, ("smollm2",)),
    Bench("grpo", "scripts/bench_grpo.py", 2.0, benchlib.TRL_REWARD_VERSION, ("smollm2",)),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to every script: a few minutes each")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(b.name for b in BENCHES)}")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"), help="the benchmarks document")
    p.add_argument("--readme", default=str(REPO / "README.md"), help="also gets the table, between its marks "
                   "('' : no README)")
    p.add_argument("--results", default=str(Path.home() / ".cache" / "jaxrlhf" / "bench_all"),
                   help="folder of the scripts' JSON results, one file per benchmark")
    p.add_argument("--trl_reward_path", default=benchlib.trl_folder(benchlib.TRL_REWARD_VERSION))
    p.add_argument("--trl_ppo_path", default=benchlib.trl_folder(benchlib.TRL_PPO_VERSION))
    p.add_argument("--dry_run", action="store_true", help="only rebuild the table from the stored results")
    return p.parse_args(argv)


def selected(only: str) -> list[Bench]:
    names = [n for n in only.split(",") if n]
    unknown = set(names) - {b.name for b in BENCHES}
    if unknown:
        sys.exit(f"error: unknown benchmark(s) {sorted(unknown)}; choose from {[b.name for b in BENCHES]}")
    return [b for b in BENCHES if not names or b.name in names]


def trl_path(args, bench: Bench) -> str:
    return args.trl_reward_path if bench.trl == benchlib.TRL_REWARD_VERSION else args.trl_ppo_path


def missing(args, benches: list[Bench]) -> list[str]:
    """What the selected benchmarks need and this machine lacks, each as the command that installs it."""
    from jaxrlhf.assets import AssetNotFetchedError, resolve_model_path  # light: no JAX

    out = []
    for name in sorted({a for b in benches for a in b.assets}):
        try:
            resolve_model_path(name)
        except AssetNotFetchedError:
            out.append(f"python -m jaxrlhf.assets fetch {name}")
    for b in benches:
        if b.trl and benchlib.trl_in_folder(trl_path(args, b)) != b.trl:
            out.append(benchlib.trl_install_command(b.trl, trl_path(args, b)))
    return out


def command(args, bench: Bench) -> list[str]:
    cmd = [sys.executable, str(REPO / bench.script), *bench.args, "--out", args.out, "--json", result_path(args, bench)]
    if bench.trl:
        cmd += ["--trl_path", trl_path(args, bench)]
    return cmd + (["--quick"] if args.quick else [])


def result_path(args, bench: Bench) -> str:
    return str(Path(args.results) / f"{bench.name}.json")


def met(head: dict, floor: float | None) -> str:
    if floor is None:
        return "n/a (no floor)"
    if head["median"] >= floor:  # False for NaN: a ratio not measured is not met
        return "yes"
    return "best only" if head["best"] >= floor else "**no**"


def render(args, rows: list[tuple[Bench, dict | None, bool]], mach: dict) -> str:
    """rows: (benchmark, its stored result or None, whether this run made it)."""
    run = "python scripts/bench_all.py" + (" --quick" if args.quick else "")
    lines = [MARK_START, TITLE, "",
             f"What `{run}` measured, {mach['date']}: each ratio is jaxrlhf's speed-up from one run of its script "
             "with the two sides interleaved (taking turns call by call, iteration by iteration or every few "
             "steps, so that both sides ran on the same machine in the same minutes); best and median as each "
             "section of docs/benchmarks.md defines them. Met: the median reaches the floor.", ""]
    table, notes = [], []
    for bench, r, fresh in rows:
        floor = "-" if bench.floor is None else f">= {bench.floor:g}x"
        if r is None:
            table.append([f"`{bench.name}`", floor, "-", "-", "not run", "-", "-"])
            continue
        h = r["headline"]
        when = f"{'quick' if r['quick'] else 'full'} run, {r['date']}" + ("" if fresh else " (an earlier run)")
        table.append([h["name"], floor, benchlib.ratio_text(h["best"]), benchlib.ratio_text(h["median"]),
                      met(h, bench.floor),
                      h.get("detail", ""), when])
        if not fresh:
            notes.append(f"- `{bench.name}` ({r['date']}): {benchlib.machine_line(r['machine'])}")
    lines += benchlib.table(["ratio", "floor", "best", "median", "met", "measured", "run"], table)
    lines += ["", benchlib.machine_line(mach).replace("Machine:", "Machine (the whole bench_all run):", 1)]
    if notes:
        lines += ["", "Rows from earlier runs, on their machine:", "", *notes]
    lines += [MARK_END]
    return "\n".join(lines) + "\n"


def load(args, bench: Bench) -> dict | None:
    path = Path(result_path(args, bench))
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv=None) -> int:
    args = parse_args(argv)
    benches = selected(args.only)
    if not args.dry_run:
        lacking = missing(args, benches)
        if lacking:
            sys.exit("error: these benchmarks need what this machine lacks; install it with:\n  " +
                     "\n  ".join(lacking) + "\n(or leave those benchmarks out with --only)")
    start = benchlib.machine_snapshot()
    failed = []
    for bench in [] if args.dry_run else benches:
        cmd = command(args, bench)
        print(f"== bench_all: {' '.join(cmd)}", flush=True)
        rc = subprocess.run(cmd, cwd=REPO).returncode
        if rc:
            failed.append(f"{bench.name} (exit {rc})")
    whole = Path(args.results) / "bench_all.json"  # the last real run: its machine and what it ran
    if args.dry_run:
        last = json.loads(whole.read_text()) if whole.is_file() else {"machine": benchlib.machine_description(start),
                                                                       "ran": [], "quick": args.quick}
        args.quick = last["quick"]
    else:
        last = {"machine": benchlib.machine_description(start), "ran": [b.name for b in benches],
                "quick": args.quick}
    rows = [(b, load(args, b), b.name in last["ran"]) for b in BENCHES]
    section = render(args, rows, last["machine"])
    print("\n" + section)
    if failed:
        print(f"not writing the headline table: {', '.join(failed)} failed")
        return 1
    if not args.dry_run:
        whole.write_text(json.dumps(last, indent=1))
    benchlib.write_section(args.out, section, MARK_START, MARK_END)
    benchlib.write_section(args.readme, section, MARK_START, MARK_END, append=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
