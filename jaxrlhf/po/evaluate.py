"""Held-out evaluation of a preference-optimised policy: its loss, and the policy read as an implicit
reward model (beta * log-ratio to the reference), summarised as `rm.evaluate` summarises a reward model,
so a DPO policy and a reward model are compared on the same pairs with the same numbers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

import numpy as np

from jaxrlhf.infra.multihost import to_global, to_host
from jaxrlhf.ops.metrics import kendall_tau_groups
from jaxrlhf.rm.evaluate import summarise

# Metric sums divided by the number of pairs (lists, responses) in the summary, with their names there.
_MEANS = {"pairs": {"logp_chosen_sum": "logp_chosen", "logp_rejected_sum": "logp_rejected",
                    "reward_chosen_sum": "reward_chosen", "reward_rejected_sum": "reward_rejected",
                    "sft_nll_sum": "sft_nll"},
          "listwise": {},
          "kto": {"kl_reference_sum": "kl_reference", "correct_sum": "accuracy"}}


def held_out(eval_fn: Callable, batches: Iterable[dict], mesh, objective: str) -> dict:
    """`eval_fn(global batch) -> (loss_sum, metric sums, {group: implicit reward})` over `batches`."""
    sums: dict[str, float] = defaultdict(float)
    pairs = {"chosen": [], "rejected": [], "chosen_len": [], "rejected_len": []}
    taus, kto = [], {"reward": [], "desirable": []}
    for batch in batches:
        g = to_global(batch, mesh)
        loss_sum, metrics, rewards = eval_fn(g)
        sums["loss_sum"] += float(to_host(loss_sum))
        for k, v in metrics.items():
            sums[k] += float(to_host(v))
        keep = to_host(g["weight_B"]) > 0
        if objective == "pairs":
            for side in ("chosen", "rejected"):
                pairs[side].append(to_host(rewards[side])[keep])
                pairs[f"{side}_len"].append(to_host(g[f"{side}_len_B"])[keep])
        elif objective == "listwise":
            valid = to_host(g["valid_BxK"]) > 0
            tau, defined = kendall_tau_groups(to_host(rewards["seqs"]), to_host(g["ranks_BxK"]), valid)
            taus.extend(np.asarray(tau)[np.asarray(defined) & keep].tolist())
        else:
            kto["reward"].append(to_host(rewards["seqs"])[keep])
            kto["desirable"].append(to_host(g["desirable_B"])[keep] > 0)
    denom = max(sums.pop("denom", 0.0), 1.0)
    out = {"loss": sums.pop("loss_sum") / denom}
    if objective == "pairs":
        out.update(summarise({k: np.concatenate(v) if v else np.zeros(0) for k, v in pairs.items()}))
    elif objective == "listwise":
        out.update(kendall_tau=float(np.mean(taus)) if taus else float("nan"),
                   accuracy=sums["pair_correct_sum"] / max(sums["pair_count"], 1.0), n_lists=len(taus))
    else:
        r, good = (np.concatenate(kto[k]) if kto[k] else np.zeros(0) for k in ("reward", "desirable"))
        out.update(n=int(len(r)), reward_desirable=float(np.mean(r[good])) if good.any() else float("nan"),
                   reward_undesirable=float(np.mean(r[~good])) if (~good).any() else float("nan"))
    for key, name in _MEANS[objective].items():
        if key in sums:
            out[name] = sums[key] / denom
    return out
