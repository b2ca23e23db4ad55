"""Did a train_grpo arithmetic run help? Held-out exact-match accuracy of the starting policy and of the
export, each greedy-decoded through `jaxrlhf.sample`'s path (the export loaded fresh from disk, so this
also checks what the run wrote), with the difference in standard errors.

    python -m jaxrlhf.train_grpo --config=configs/grpo_arithmetic.py     # workdir/grpo_arithmetic
    python scripts/check_grpo.py --workdir workdir/grpo_arithmetic

The problems are rebuilt from the run's `run_config.json` (task.eval_seed, task.n_eval and the operand
settings): the held-out set the run evaluated, none of which it trained on. Writes `problems.jsonl` and
`check_grpo.json` into the workdir and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def accuracy(policy: str, rows: list[dict], max_new_tokens: int) -> tuple[float, list[str]]:
    from jaxrlhf.data.prompts import prompt_of_text
    from jaxrlhf.rl.policy_compare import GenerationSettings, generate_groups
    from jaxrlhf.rl.verifiable import exact_match

    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=32)
    texts, _ = generate_groups(policy, [prompt_of_text(r["prompt"]) for r in rows], settings, k=1)
    answers = [group[0] for group in texts]
    return sum(exact_match("", a, r) for a, r in zip(answers, rows)) / len(rows), answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="workdir/grpo_arithmetic")
    args = parser.parse_args()
    from jaxrlhf.rl import arithmetic

    work = Path(args.workdir)
    config = json.loads((work / "run_config.json").read_text())
    t = config["task"]
    rows = arithmetic.problems(t["n_eval"], t["eval_seed"], min_value=t["min_value"], max_value=t["max_value"],
                               ops=t["ops"], styles=t["styles"])
    (work / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    new = config["sampling"]["max_new_tokens"]
    before, _ = accuracy(config["policy"]["name"], rows, new)
    after, answers = accuracy(str(work / "export"), rows, new)
    n = len(rows)
    se = math.sqrt((before * (1 - before) + after * (1 - after)) / n) or float("nan")
    out = {"n": n, "accuracy_before": before, "accuracy_after": after, "difference_in_se": (after - before) / se,
           "examples": [{"prompt": r["prompt"], "answer": r["answer"], "response": a}
                        for r, a in list(zip(rows, answers))[:5]]}
    (work / "check_grpo.json").write_text(json.dumps(out, indent=2))
    print(f"| held-out problems | accuracy before | accuracy after | difference |\n|---|---|---|---|\n"
          f"| {n} | {before:.3f} | {after:.3f} | {out['difference_in_se']:.1f} SE |")


if __name__ == "__main__":
    main()
