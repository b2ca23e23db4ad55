"""Responses of two policies (say SFT and PPO) to the same prompts, for a blind human A/B test.

    python -m jaxrlhf.compare --a=workdir/sft --b=workdir/ppo/export --prompts=prompts.jsonl --rm=workdir/rm/export

Writes into --out: pairs.jsonl and index.html (each prompt with two responses labelled 1 and 2, in a
seeded random order per prompt) and key.json (which label is A and which B, the model paths, lengths
and rewards). Prints one JSON object: n, mean_length_a/b and, with --rm, mean_reward_a/b and
rm_win_rate_b, the share of prompts where B's reward is higher than A's, an exact tie counting half.
Prompt formats: see jaxrlhf.rl.policy_compare. The logic lives there, this file is kept short.
"""

from __future__ import annotations

import json

from absl import flags

from jaxrlhf.infra.runtime import cli_errors, run_app

flags.DEFINE_string("a", None, "Policy A: HF directory or asset alias.", required=True)
flags.DEFINE_string("b", None, "Policy B: HF directory or asset alias.", required=True)
flags.DEFINE_string("prompts", None, "jsonl (prompt, or HH chosen/rejected) or text file, one prompt a line.",
                    required=True)
flags.DEFINE_string("rm", None, "Reward model (export dir or train_rm workdir) to score both sides.")
flags.DEFINE_string("out", "compare_out", "Output directory.")
flags.DEFINE_integer("limit", 0, "Use only the first N prompts (0: all).")
flags.DEFINE_integer("max_new_tokens", 128, "Tokens per response at most.")
flags.DEFINE_float("temperature", 0.0, "Sampling temperature (0: greedy).")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling threshold (1: off).")
flags.DEFINE_integer("seed", 0, "Seed of the sampling and of the 1/2 order.")
flags.DEFINE_integer("batch_size", 8, "Prompts per generation batch.")
flags.DEFINE_bool("chat", True, "Render plain prompts with the policy's chat template when it has one.")
flags.DEFINE_integer("max_prompt_length", 512, "Prompt tokens kept (the end) for the policies.")
flags.DEFINE_integer("rm_max_length", 512, "Tokens per sequence for the reward model (prompt cut from the left).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    with cli_errors():
        from jaxrlhf.rl.policy_compare import GenerationSettings, run_comparison

        settings = GenerationSettings(max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                                      top_p=FLAGS.top_p, seed=FLAGS.seed, batch_size=FLAGS.batch_size,
                                      chat=FLAGS.chat, max_prompt_length=FLAGS.max_prompt_length)
        print(json.dumps(run_comparison(FLAGS.a, FLAGS.b, FLAGS.prompts, FLAGS.out, FLAGS.rm, settings,
                                        FLAGS.limit, FLAGS.rm_max_length)))


if __name__ == "__main__":
    run_app(main)
