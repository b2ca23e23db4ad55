"""Dropping finished rows from the decode batch: jaxrlhf `generate` with `compact_rows` on and off, SmolLM2-135M.

    python scripts/bench_compaction.py                # 8 arithmetic problems x 8 samples, 64 and 128 new tokens
    python scripts/bench_compaction.py --new 64 --repeats 1   # smoke test

The GRPO arithmetic task's rollout (jaxrlhf/configs/grpo_arithmetic.py): 8 held-out-style problems in the
chat template, left-padded to 64 tokens, 8 samples each at temperature 1, stopping at the model's stop
tokens, so rows finish at different steps. Both settings draw the same tokens (tests/test_decode_cache.py);
the table gives seconds per call (median of `--repeats`, each with its own key, alternating the two
settings), the rows decoded summed over the steps (`row_steps`), and the first call's compile overhead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import benchlib  # first: puts this checkout on sys.path
import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--new", type=int, nargs="+", default=[64, 128], help="max_new_tokens values")
    p.add_argument("--repeats", type=int, default=4)
    args = p.parse_args(argv)
    start = benchlib.machine_snapshot()
    import jax
    from flax import nnx

    from jaxrlhf.data.prompts import prompt_of_text
    from jaxrlhf.models.hub import from_pretrained, load_tokenizer
    from jaxrlhf.rl import arithmetic
    from jaxrlhf.rl.prompts import render_for_policy
    from jaxrlhf.rl.sampling import SamplingConfig, generate, left_pad
    from jaxrlhf.rl.stop_tokens import stop_token_ids

    policy = from_pretrained("smollm2", "causal_lm")
    tok = load_tokenizer(policy.model_dir)
    problems = arithmetic.problems(8, 0)
    ids, mask = left_pad(render_for_policy(tok, [prompt_of_text(r["prompt"]) for r in problems]),
                         tok.pad_token_id, length=64)
    split, eos = nnx.split(policy.model), stop_token_ids(tok, policy.model_dir, policy.hf_config)
    print("| new tokens | compact_rows | median s a call | row_steps (full batch) | response length p10 / p50 / p90 "
          "| compile s |\n|---|---|---|---|---|---|")
    for new in args.new:
        cfgs = {c: SamplingConfig(max_new_tokens=new, temperature=1.0, eos_ids=eos, pad_id=tok.pad_token_id,
                                  compact_rows=c) for c in (True, False)}
        first, times, work, lengths = {}, {c: [] for c in cfgs}, {c: [] for c in cfgs}, []
        for c, cfg in cfgs.items():
            t = time.perf_counter()
            jax.block_until_ready(generate(split, ids, mask, jax.random.key(0), cfg, 8))
            first[c] = time.perf_counter() - t
        for i in range(args.repeats):
            for c, cfg in cfgs.items():
                t = time.perf_counter()
                out = jax.block_until_ready(generate(split, ids, mask, jax.random.key(i + 1), cfg, 8))
                times[c].append(time.perf_counter() - t)
                work[c].append(int(out["row_steps"]))
            lengths.extend(np.asarray(out["lengths_B"]).tolist())
        full = 64 * (new - 1)
        for c in cfgs:
            med = statistics.median(times[c])
            p10, p50, p90 = np.percentile(lengths, [10, 50, 90])
            print(f"| {new} | {c} | {med:.2f} | {statistics.median(work[c]):.0f} ({full}) | {p10:.0f} / {p50:.0f} / "
                  f"{p90:.0f} | {first[c] - min(times[c]):.1f} |", flush=True)
    print(f"\n    {benchlib.command_line('scripts/bench_compaction.py', sys.argv[1:] if argv is None else argv)}\n")
    print(benchlib.machine_line(benchlib.machine_description(start)), benchlib.versions_text("jax", "flax"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
