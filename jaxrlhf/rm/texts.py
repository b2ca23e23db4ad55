"""Texts a person gives `jaxrlhf.score`, read and scored by a trained reward model: one JSON object
(`prompt` + `response`, or `text`) or plain text (a literal backslash-n is a newline) per line, each
scored as given, with the reward normalised by the export's training statistics when it has them."""

from __future__ import annotations

import json

from jaxrlhf.rm.load import load_trained_rm


def parse_line(line: str, number: int) -> tuple[str, str]:
    line = line.rstrip("\n")
    if line.lstrip().startswith("{"):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {number}: invalid JSON ({e})") from None
        if "text" in row:
            return "", str(row["text"])
        if "response" not in row:
            raise ValueError(f"line {number}: needs 'response' (with optional 'prompt') or 'text'")
        return str(row.get("prompt", "")), str(row["response"])
    return "", line.replace("\\n", "\n")


def score_texts(model_path: str, pairs: list[tuple[str, str]], max_length: int = 512, batch_size: int = 16):
    """One row per (prompt, response) text, tokenised as given (texts in the model's training format)."""
    rm = load_trained_rm(model_path)
    scorer = rm.scorer(max_length, batch_size)
    rewards = scorer.score_encoded(scorer.encode_raw([p for p, _ in pairs], [r for _, r in pairs]))
    stats = rm.stats
    out = []
    for (prompt, response), r in zip(pairs, rewards.tolist()):
        row = {"reward": round(r, 4)}
        if stats.get("reward_std"):
            row["normalised"] = round((r - stats["reward_mean"]) / stats["reward_std"], 4)
        row["text"] = (prompt + response)[-120:]
        out.append(row)
    return out
