"""Did a train_grpo arithmetic run help? Held-out exact-match accuracy of the starting policy and of the
export, each greedy-decoded through `jaxrlhf.sample`'s path (the export loaded fresh from disk, so this
also checks what the run wrote), with the difference in standard errors; and how far the export moved
from the start: KL(export || start) per response, estimated from `--kl_samples` responses per held-out
problem sampled from the export at temperature 1 (the mean summed log-ratio, the k1 estimate a run with
grpo.kl_coef > 0 logs as kl_k1_per_seq).

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


def kl_to_start(export: str, start: str, rows: list[dict], max_new_tokens: int, k: int) -> float:
    """Mean over sampled responses of sum_t log p_export - log p_start (temperature 1, the export's stops)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxrlhf.data.prompts import prompt_of_text
    from jaxrlhf.models.hub import from_pretrained, load_tokenizer
    from jaxrlhf.rl.experience import response_logprobs
    from jaxrlhf.rl.prompts import render_for_policy
    from jaxrlhf.rl.sampling import SamplingConfig, generate, left_pad
    from jaxrlhf.rl.stop_tokens import stop_token_ids

    policy, reference = from_pretrained(export, "causal_lm"), from_pretrained(start, "causal_lm")
    tok = load_tokenizer(policy.model_dir)
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=1.0, pad_id=tok.pad_token_id,
                         eos_ids=stop_token_ids(tok, policy.model_dir, policy.hf_config))
    ids, mask = left_pad(render_for_policy(tok, [prompt_of_text(r["prompt"]) for r in rows]), tok.pad_token_id)
    out = generate(policy.model, ids, mask, jax.random.key(0), cfg, group_size=k)
    resp, resp_mask = out["response_ids_BxN"], out["response_mask_BxN"]
    full = jnp.concatenate([jnp.repeat(ids, k, 0), resp], 1), jnp.concatenate([jnp.repeat(mask, k, 0), resp_mask], 1)
    lp = [np.asarray(response_logprobs(m.model, *full, resp)) for m in (policy, reference)]
    return float(((lp[0] - lp[1]) * np.asarray(resp_mask)).sum(-1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="workdir/grpo_arithmetic")
    parser.add_argument("--kl_samples", type=int, default=4, help="responses per problem for the KL estimate")
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
    kl = kl_to_start(str(work / "export"), config["policy"]["name"], rows, new, args.kl_samples)
    out = {"n": n, "accuracy_before": before, "accuracy_after": after, "difference_in_se": (after - before) / se,
           "kl_to_start_per_response": kl, "kl_samples": args.kl_samples,
           "examples": [{"prompt": r["prompt"], "answer": r["answer"], "response": a}
                        for r, a in list(zip(rows, answers))[:5]]}
    (work / "check_grpo.json").write_text(json.dumps(out, indent=2))
    head = "| held-out problems | accuracy before | accuracy after | difference | KL(export, start) per response |"
    print(f"{head}\n|---|---|---|---|---|\n| {n} | {before:.3f} | {after:.3f} | {out['difference_in_se']:.1f} SE "
          f"| {kl:.2f} nats |")


if __name__ == "__main__":
    main()
