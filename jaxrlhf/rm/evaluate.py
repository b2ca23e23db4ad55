"""Reward-model evaluation: score held-out pairs, summarise, plot.

Ties count as wrong. Length correlation is Pearson's r between reward and response length over all
scored responses: a reward model that mostly rewards length shows it here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import numpy as np

from jaxrlhf.infra.multihost import to_global, to_host
from jaxrlhf.ops.metrics import kendall_tau_groups


def global_rows(batch: dict, keys, mesh) -> dict[str, np.ndarray]:
    """`keys` of a per-process batch, as numpy rows of the global batch in the order of `to_global`."""
    if jax.process_count() == 1:
        return {k: np.asarray(batch[k]) for k in keys}
    return {k: to_host(v) for k, v in to_global({k: batch[k] for k in keys}, mesh).items()}


def score_pairs(eval_fn: Callable, batches: Iterable[dict], mesh) -> dict[str, np.ndarray]:
    """Runs `eval_fn(global_batch) -> (r_c, r_r)` over batches; returns real (weight > 0) pairs only."""
    out = {"chosen": [], "rejected": [], "chosen_len": [], "rejected_len": []}
    for batch in batches:
        g = to_global(batch, mesh)
        r_c, r_r = eval_fn(g)
        keep = to_host(g["weight_B"]) > 0
        out["chosen"].append(to_host(r_c)[keep])
        out["rejected"].append(to_host(r_r)[keep])
        out["chosen_len"].append(to_host(g["chosen_len_B"])[keep])
        out["rejected_len"].append(to_host(g["rejected_len_B"])[keep])
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}


def score_lists(reward_fn: Callable, batches: Iterable[dict], mesh) -> dict:
    """Ranked lists: mean Kendall's tau-b between rewards and ranks (rank 0 = best), and the accuracy
    over all pairs of differently ranked responses (ties in reward are wrong).

    Every process sees the global batch (its rows and the others'), so all return the same summary."""
    taus, correct, compared, lists, all_rewards = [], 0, 0, 0, []
    for batch in batches:
        B, K, T = np.shape(batch["ids_BxKxT"])
        flat = {"ids": np.reshape(batch["ids_BxKxT"], (B * K, T)), "mask": np.reshape(batch["mask_BxKxT"], (B * K, T)),
                "len": np.reshape(batch["len_BxK"], (B * K,))}
        g = to_global(flat, mesh)
        rewards_BxK = to_host(reward_fn(g["ids"], g["mask"], g["len"])).reshape(-1, K)
        labels = global_rows(batch, ("ranks_BxK", "valid_BxK", "weight_B"), mesh)
        ranks_BxK, valid_BxK = labels["ranks_BxK"], labels["valid_BxK"]
        tau_B, defined_B = kendall_tau_groups(rewards_BxK, ranks_BxK, valid_BxK)
        real_B = labels["weight_B"] > 0
        taus.extend(np.asarray(tau_B)[np.asarray(defined_B) & real_B].tolist())
        for b in np.flatnonzero(real_B):
            valid = valid_BxK[b] > 0
            r, k = rewards_BxK[b][valid], ranks_BxK[b][valid]
            all_rewards.append(r)
            better = k[:, None] < k[None, :]  # i ranked above j
            correct += int(np.sum(better & (r[:, None] > r[None, :])))
            compared += int(np.sum(better))
            lists += 1
    rewards = np.concatenate(all_rewards) if all_rewards else np.zeros(0)
    return {"kendall_tau": float(np.mean(taus)) if taus else float("nan"),
            "accuracy": correct / compared if compared else float("nan"), "n": compared, "n_lists": lists,
            "n_rewards": int(len(rewards)), **_moments(rewards)}


def score_rated(reward_fn: Callable, batches: Iterable[dict], mesh) -> dict:
    """Rated responses (regression): mean squared error and Pearson's r of prediction vs rating."""
    preds, targets = [], []
    for batch in batches:
        g = to_global({"ids": batch["ids_BxT"], "mask": batch["mask_BxT"], "len": batch["len_B"]}, mesh)
        labels = global_rows(batch, ("target_B", "weight_B"), mesh)
        keep = labels["weight_B"] > 0
        preds.append(to_host(reward_fn(g["ids"], g["mask"], g["len"]))[keep])
        targets.append(labels["target_B"][keep])
    p, t = (np.concatenate(x).astype(np.float64) if x else np.zeros(0) for x in (preds, targets))
    return {"mse": float(np.mean((p - t) ** 2)) if len(p) else float("nan"), "pearson": _pearson(p, t),
            "n": int(len(p)), "n_rewards": int(len(p)), **_moments(p)}


def _moments(rewards: np.ndarray) -> dict:
    if not len(rewards):
        return {"reward_mean": float("nan"), "reward_std": float("nan")}
    return {"reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards))}


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def summarise(scores: dict[str, np.ndarray]) -> dict:
    r_c = scores["chosen"].astype(np.float64)
    r_r = scores["rejected"].astype(np.float64)
    n = len(r_c)
    rewards = np.concatenate([r_c, r_r])
    lengths = np.concatenate([scores["chosen_len"], scores["rejected_len"]])
    return {
        "accuracy": float(np.mean(r_c > r_r)) if n else float("nan"),
        "n": int(n),
        "n_rewards": int(2 * n),
        "mean_margin": float(np.mean(r_c - r_r)) if n else float("nan"),
        **_moments(rewards),
        "length_correlation": _pearson(rewards, lengths),
    }


def histogram_png(scores: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    both = np.concatenate([scores["chosen"], scores["rejected"]])
    bins = np.linspace(both.min(), both.max(), 40) if both.size else 10
    ax.hist(scores["chosen"], bins=bins, alpha=0.6, label="chosen")
    ax.hist(scores["rejected"], bins=bins, alpha=0.6, label="rejected")
    ax.set_xlabel("reward")
    ax.set_ylabel("pairs")
    ax.set_title(title or "reward of held-out chosen vs rejected responses")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
