"""The KL-vs-reward frontier of a run: each iteration's reward against its KL to the reference, read from
metrics.jsonl and drawn as `kl_reward_frontier.png` in the workdir when the run ends (PPO and the
critic-free trainers). An over-optimised run shows reward flattening (or a gold reward falling) while the
KL keeps growing; the curve makes the trade-off of a KL coefficient visible at a glance."""

from __future__ import annotations

import json
from pathlib import Path


def kl_reward_points(metrics_path: Path, prefix: str, reward_key: str) -> list[tuple[int, float, float]]:
    """(iteration, KL per sequence, reward) of each logged iteration, the last record of a step winning (a
    resumed run logs the steps after its checkpoint again)."""
    rows: dict[int, tuple[float, float]] = {}
    for line in Path(metrics_path).read_text().splitlines():
        r = json.loads(line)
        kl, reward = r.get(f"{prefix}kl_k1_per_seq"), r.get(f"{prefix}{reward_key}")
        if kl is not None and reward is not None:
            rows[int(r["step"])] = (float(kl), float(reward))
    return [(step, *rows[step]) for step in sorted(rows)]


def frontier_png(points: list[tuple[int, float, float]], path: Path, reward_label: str) -> Path | None:
    """The points as a line coloured by iteration; None (no file) when there are fewer than two."""
    if len(points) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, kls, rewards = zip(*points)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(kls, rewards, color="0.7", zorder=1)
    dots = ax.scatter(kls, rewards, c=steps, cmap="viridis", zorder=2)
    fig.colorbar(dots, ax=ax, label="iteration")
    ax.set_xlabel("KL to the reference (nats per sequence)")
    ax.set_ylabel(reward_label)
    ax.set_title("KL-reward frontier")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_frontier(workdir: Path, prefix: str, reward_key: str, reward_label: str) -> Path | None:
    metrics = Path(workdir) / "metrics.jsonl"
    if not metrics.is_file():
        return None
    return frontier_png(kl_reward_points(metrics, prefix, reward_key), Path(workdir) / "kl_reward_frontier.png",
                        reward_label)
