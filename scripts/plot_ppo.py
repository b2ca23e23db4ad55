"""Curves of a PPO run from its metrics.jsonl: RM score of fresh rollouts, KL to the reference, length.

    python scripts/plot_ppo.py workdir/ppo --out docs/ppo_curves.png

Also prints a markdown table of the first and last iterations and the held-out scores (for docs/).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

PANELS = (("ppo/score_mean", "RM score of fresh rollouts (raw)"),
          ("ppo/kl_k1_per_seq", "KL to reference (nats / sequence)"),
          ("ppo/response_length", "response length (tokens)"), ("ppo/value_loss", "value loss"))


def load(workdir: Path, key: str = "ppo/score_mean") -> list[dict]:
    """Records holding `key` in step order (a resumed run may log a step twice: the last one wins)."""
    rows = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if key in r:
            rows[r["step"]] = r
    return [rows[k] for k in sorted(rows)]


def plot(rows: list[dict], out: Path, title: str, evals: list[dict] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2))
    for ax, (key, label) in zip(axes, PANELS):
        y = np.array([r.get(key, np.nan) for r in rows], float)
        ax.plot(steps, y, ".-", alpha=0.5, label="per iteration")
        k = min(5, len(y))
        if k > 1:
            ax.plot(steps[k - 1:], np.convolve(y, np.ones(k) / k, mode="valid"), "-", lw=2, label=f"mean of {k}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("iteration")
    if evals:
        axes[0].plot([r["step"] for r in evals], [r["eval/score_mean"] for r in evals], "s-", color="k",
                     label=f"held-out prompts (n={int(evals[0].get('eval/n', 0))})")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def table(rows: list[dict], k: int = 5) -> str:
    keys = ("ppo/score_mean", "ppo/kl_k1_per_seq", "ppo/response_length", "ppo/ended_frac", "ppo/entropy",
            "ppo/iteration_seconds")
    head = "| iterations | " + " | ".join(k.split("/")[1] for k in keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 1)]
    for name, part in ((f"first {k}", rows[:k]), (f"last {k}", rows[-k:])):
        lines.append(f"| {name} | " + " | ".join(f"{np.mean([r[c] for r in part]):.3f}" for c in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/ppo_curves.png"))
    parser.add_argument("--title", default="PPO: SmolLM2-135M-Instruct vs the MiniLM HH-RLHF reward model")
    args = parser.parse_args()
    rows = load(args.workdir)
    if not rows:
        raise SystemExit(f"{args.workdir / 'metrics.jsonl'}: no PPO iterations logged")
    evals = load(args.workdir, "eval/score_mean")
    plot(rows, args.out, args.title, evals)
    print(table(rows))
    if evals:
        print("held-out score by iteration: " + ", ".join(f"{r['step']}: {r['eval/score_mean']:.3f}" for r in evals))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
