"""K responses per prompt from one policy, as JSONL: what `python -m jaxrlhf.sample` writes.

One line per prompt: the prompt (text and turns), its K responses with their token counts, the model and
the sampling settings (so a row says how it was made), and the reward model's score of each response when
one is given. Prompt files are the ones PPO and `compare` read (`policy_compare.read_prompts`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from jaxrlhf.rl.policy_compare import (
    GenerationSettings,
    check_model_dir,
    generate_groups,
    read_prompts,
    reward_model_scores,
)


def sample_to_jsonl(policy: str, prompts_path: str, out_path: str, *, k: int = 4,
                    settings: GenerationSettings = GenerationSettings(), rm_path: str | None = None,
                    limit: int = 0, rm_max_length: int = 512) -> dict:
    """Writes the samples to `out_path` (a file, or '-' for stdout); returns a summary."""
    prompts = read_prompts(prompts_path, limit)
    model_dir = str(check_model_dir(policy))
    if rm_path is not None and not Path(rm_path).expanduser().exists():
        raise ValueError(f"{rm_path}: reward model not found")
    texts, lengths = generate_groups(policy, prompts, settings, k)
    rewards = None
    if rm_path is not None:
        flat = reward_model_scores(rm_path, [p for p in prompts for _ in range(k)], [t for g in texts for t in g],
                                   rm_max_length)
        rewards = flat.reshape(len(prompts), k)
    meta = {"model": policy, "model_dir": model_dir, "settings": dataclasses.asdict(settings), "k": k}
    lines = []
    for i, p in enumerate(prompts):
        row = {"id": i, "prompt": p.text, "messages": [list(m) for m in p.messages], "responses": texts[i],
               "lengths": lengths[i].tolist(), **meta}
        if rewards is not None:
            row.update(rewards=[round(float(r), 6) for r in rewards[i]], rm=rm_path)
        lines.append(json.dumps(row))
    text = "\n".join(lines) + "\n"
    if out_path == "-":
        print(text, end="")
    else:
        Path(out_path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).expanduser().write_text(text)
    summary = {"prompts": len(prompts), "k": k, "mean_length": float(lengths.mean()), "out": out_path}
    if rewards is not None:
        summary["mean_reward"] = float(rewards.mean())
    return summary
