"""K responses per prompt from a policy, as JSONL (for annotation, inspection, or a reward model to score).

    python -m jaxrlhf.sample --policy=smollm2 --prompts=prompts.jsonl --k=4 --out=samples.jsonl
    python -m jaxrlhf.sample --policy=workdir/grpo_arithmetic/export --prompts=problems.jsonl --k=1   # greedy

--policy: an asset alias, an HF directory or a trainer's export/. Greedy by default (--temperature=0); with a
temperature > 0 the K samples of a prompt differ, seeded by --seed. --rm scores every response.
"""

from __future__ import annotations

import json

from absl import flags

from jaxrlhf.infra.runtime import cli_errors, run_app

flags.DEFINE_string("policy", None, "Policy: HF directory, export/ or asset alias.", required=True)
flags.DEFINE_string("prompts", None, "jsonl (prompt, or HH chosen/rejected) or text file, one prompt a line.",
                    required=True)
flags.DEFINE_integer("k", 4, "Responses per prompt.")
flags.DEFINE_string("out", "-", "Output JSONL file ('-': stdout).")
flags.DEFINE_string("rm", None, "Reward model (export dir or train_rm workdir) to score each response.")
flags.DEFINE_integer("limit", 0, "Use only the first N prompts (0: all).")
flags.DEFINE_integer("max_new_tokens", 128, "Tokens per response at most.")
flags.DEFINE_float("temperature", 0.0, "Sampling temperature (0: greedy).")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling threshold (1: off).")
flags.DEFINE_integer("top_k", 0, "Top-k sampling (0: off).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("batch_size", 8, "Prompts per generation batch.")
flags.DEFINE_bool("chat", True, "Render plain prompts with the policy's chat template when it has one.")
flags.DEFINE_integer("max_prompt_length", 512, "Prompt tokens kept (the end).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    with cli_errors():
        from jaxrlhf.rl.policy_compare import GenerationSettings
        from jaxrlhf.rl.sample_file import sample_to_jsonl

        settings = GenerationSettings(max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                                      top_p=FLAGS.top_p, top_k=FLAGS.top_k, seed=FLAGS.seed,
                                      batch_size=FLAGS.batch_size, chat=FLAGS.chat,
                                      max_prompt_length=FLAGS.max_prompt_length)
        summary = sample_to_jsonl(FLAGS.policy, FLAGS.prompts, FLAGS.out, k=FLAGS.k, settings=settings,
                                  rm_path=FLAGS.rm, limit=FLAGS.limit)
        if FLAGS.out != "-":
            print(json.dumps(summary))


if __name__ == "__main__":
    run_app(main)
