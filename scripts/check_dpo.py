"""Did a train_dpo run help? Its held-out implicit-reward accuracy against chance, and a reward model's
verdict on the policy's answers to the run's own held-out prompts, before (the reference) and after.

    python -m jaxrlhf.train_rm --config=configs/rm.py          # the judge, workdir/rm/export
    python -m jaxrlhf.train_dpo --config=configs/dpo.py        # workdir/dpo
    python scripts/check_dpo.py --workdir workdir/dpo --rm workdir/rm/export --prompts 64

The held-out prompts are rebuilt from the run's `run_config.json` with the split train_dpo made (same
source, format, eval_size and split_seed), so no prompt the policy trained on is judged. `compare` (greedy,
both policies on the same prompts) writes its blind A/B files into `WORKDIR/check_compare` and its win rate
and mean rewards are printed, with the accuracy's distance from 0.5 in standard errors, as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path


def held_out_prompts(run_config: dict) -> list[str]:
    """The HH prompts of the run's held-out pairs, as the data gives them (compare renders them itself)."""
    from jaxrlhf.data import load_records
    from jaxrlhf.data.usable import split_for_training
    from jaxrlhf.models.hf_files import resolve_model_dir
    from jaxrlhf.models.hub import load_tokenizer

    d = run_config["data"]
    tokenizer = load_tokenizer(resolve_model_dir(run_config["model"]["name"]))
    kw = dict(format=d["format"], split=d["split"], **({"max_rows": d["limit"]} if d["limit"] else {}))
    rendered = load_records(d["source"], tokenizer=tokenizer, chat_template=d.get("chat_template", False), **kw)
    _, held = split_for_training(rendered.records, d["eval_size"], d["split_seed"], report=rendered.report)
    rows = {p.row for p in held}
    raw = load_records(d["source"], tokenizer=tokenizer, **kw).records
    return list(dict.fromkeys(p.prompt for p in raw if p.row in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="workdir/dpo")
    parser.add_argument("--rm", default="workdir/rm/export")
    parser.add_argument("--prompts", type=int, default=64, help="held-out prompts judged (0: all)")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    args = parser.parse_args()
    work = Path(args.workdir)
    run_config = json.loads((work / "run_config.json").read_text())
    summary = json.loads((work / "eval.json").read_text())
    prompts = held_out_prompts(run_config)[: args.prompts or None]
    prompts_file = work / "check_prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    reference = run_config["reference"] or run_config["model"]["name"]
    out = subprocess.run([sys.executable, "-m", "jaxrlhf.compare", f"--a={reference}", f"--b={work / 'export'}",
                          f"--prompts={prompts_file}", f"--rm={args.rm}", f"--out={work / 'check_compare'}",
                          f"--max_new_tokens={args.max_new_tokens}"], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"compare failed:\n{out.stderr[-3000:]}")
    verdict = json.loads(out.stdout.strip().splitlines()[-1])
    acc, n = summary["accuracy"], summary["n"]
    se = math.sqrt(0.25 / n)  # of an accuracy under chance (p = 0.5)
    print(json.dumps({"eval": summary, "compare": verdict}))
    print("\n| held-out pairs | implicit-reward accuracy | (accuracy - 0.5) / SE | prompts judged | RM win rate of "
          "DPO over start | mean RM reward start -> DPO |")
    print("|---|---|---|---|---|---|")
    win, before, after = (verdict.get(k, float("nan")) for k in ("rm_win_rate_b", "mean_reward_a", "mean_reward_b"))
    print(f"| {n} | {acc:.3f} | {(acc - 0.5) / se:.1f} | {len(prompts)} | {win:.3f} | {before:.3f} -> {after:.3f} |")


if __name__ == "__main__":
    main()
