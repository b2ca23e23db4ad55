"""From stored labels to training data (`export`) and to the verdict of a human A/B test (`report`).

Definitions of agreement and win rate: `feedback.agreement`.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from jaxrlhf.feedback.agreement import (
    VERDICT_SCORE,
    consensus_ranks,
    item_agreement,
    krippendorff_alpha_interval,
    win_rate,
)
from jaxrlhf.feedback.store import Store

FORMATS = ("ranked", "pairs")


def ranking_rows(store: Store, include_incomplete: bool = False) -> list[dict]:
    """One ranked list per ranking item with all its labels (or any label, with `include_incomplete`):
    prompt, responses, ranks (the consensus: dense ranks of the mean rank, 0 = best), agreement ((1 + mean
    pairwise Kendall's tau) / 2; null with one annotator), kendall_tau, annotators, unsafe (how many
    annotators marked each response unsafe) and the comments."""
    rows = []
    for item in store.items_with_labels("rank"):
        labels = item["labels"]
        if not labels or (len(labels) < item["needed"] and not include_incomplete):
            continue
        rankings = [lab["ranks"] for lab in labels]
        tau, agreement = item_agreement(rankings)
        responses = item["payload"]["responses"]
        unsafe = [sum(k in lab["unsafe"] for lab in labels) for k in range(len(responses))]
        rows.append({"prompt": item["payload"]["prompt"], "responses": responses,
                     "ranks": list(consensus_ranks(rankings)), "agreement": agreement, "kendall_tau": tau,
                     "annotators": len(labels), "unsafe": unsafe,
                     "comments": [lab["comment"] for lab in labels if lab["comment"]], "item": item["id"]})
    return rows


def pair_rows(ranked: list[dict]) -> list[dict]:
    """Every (better, worse) pair of each consensus ranking, with its item's agreement; ties give no pair."""
    pairs = []
    for row in ranked:
        for i, j in itertools.combinations(range(len(row["responses"])), 2):
            if row["ranks"][i] == row["ranks"][j]:
                continue
            win, lose = (i, j) if row["ranks"][i] < row["ranks"][j] else (j, i)
            pairs.append({"prompt": row["prompt"], "chosen": row["responses"][win],
                          "rejected": row["responses"][lose], "agreement": row["agreement"], "item": row["item"]})
    return pairs


def export(store: Store, out: str | Path, format: str = "ranked", include_incomplete: bool = False) -> dict:
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {format!r}")
    ranked = ranking_rows(store, include_incomplete)
    if not ranked:
        raise ValueError("no ranking item has all its labels yet (see the admin page, or pass "
                         "--include_incomplete)")
    rows = ranked if format == "ranked" else pair_rows(ranked)
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    agreements = [r["agreement"] for r in ranked if r["agreement"] is not None]
    return {"out": str(out), "format": format, "rows": len(rows), "items": len(ranked),
            "mean_agreement": sum(agreements) / len(agreements) if agreements else None}


def _ab_verdict(verdict: str, label_of_a: int) -> str:
    """A stored verdict (the compare label 1 or 2 picked, or tie) as a, b or tie."""
    if verdict == "tie":
        return "tie"
    return "a" if int(verdict) == label_of_a else "b"


def report(store: Store) -> dict:
    """The A/B test: B's human win rate with its 95% interval, agreement between people, and the reward
    model's win rate on the same items (from the compare key, when compare ran with --rm) with the share of
    items where its preferred side is the people's."""
    items = [i for i in store.items_with_labels("ab") if i["labels"]]
    if not items:
        raise ValueError("no A/B item has a label yet")
    scores, units, rm_scores, agree, decided = [], [], [], 0, 0
    counts = {"a": 0, "b": 0, "tie": 0}
    for item in items:
        verdicts = [_ab_verdict(lab["verdict"], item["secret"]["a"]) for lab in item["labels"]]
        for v in verdicts:
            counts[v] += 1
        values = [VERDICT_SCORE[v] for v in verdicts]
        human = sum(values) / len(values)
        scores.append(human)
        units.append(values)
        secret = item["secret"]
        if "reward_a" in secret and "reward_b" in secret:
            ra, rb = float(secret["reward_a"]), float(secret["reward_b"])
            rm = 1.0 if rb > ra else 0.0 if rb < ra else 0.5
            rm_scores.append(rm)
            if human != 0.5 and rm != 0.5:
                decided += 1
                agree += (rm > 0.5) == (human > 0.5)
    out = {"verdicts": counts, "human": win_rate(scores),
           "krippendorff_alpha": krippendorff_alpha_interval(units),
           "items_with_two_or_more": sum(len(u) >= 2 for u in units)}
    if rm_scores and len(rm_scores) == len(scores):
        out["reward_model"] = {"win_rate_b": sum(rm_scores) / len(rm_scores),
                               "agreement_with_people": agree / decided if decided else None,
                               "items_both_decided": decided}
    models = items[0]["secret"].get("models") or {}
    if models:
        out["models"] = models
    return out
