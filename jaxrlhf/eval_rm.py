"""Evaluate a reward model on a comparison file and print one JSON object.

    python -m jaxrlhf.eval_rm --model=workdir/rm/export --data=pairs.jsonl
    python -m jaxrlhf.eval_rm --model=workdir/dpo/export --reference=smollm2 --data=pairs.jsonl

A DPO-family policy (a train_dpo export or workdir, or any causal LM given `--reference`) is scored as an
implicit reward model, `beta * (log p - log p_ref)` of each response (`jaxrlhf.po.implicit`), with the
same JSON, so a policy and a reward model are compared on the same pairs. beta and the reference default
to what train_dpo recorded in the export's `preference.json`.

`--model` is an exported HF directory or a train_rm workdir (newest checkpoint). The data may be any
format `jaxrlhf.data` reads; ranked lists also give Kendall's tau between rewards and ranks. Rewards are
the quantity the model was trained on (`reward_model.json`: divided by the response length when it was
trained with `loss.length_normalise`), so the accuracy is the one train_rm's eval.json reports.
"""

from __future__ import annotations

import json

from absl import flags

from jaxrlhf.infra.runtime import cli_errors, run_app
from jaxrlhf.po.implicit import evaluate_implicit, is_preference_policy
from jaxrlhf.rm.evaluate_file import evaluate_file

flags.DEFINE_string("model", None, "Exported RM directory or train_rm workdir.", required=True)
flags.DEFINE_string("data", None, "Comparison file (json/jsonl/csv/parquet, gz ok), builtin:NAME or hub id.",
                    required=True)
flags.DEFINE_string("format", "auto", "Data format: auto, pairs, hh, chat, ranked, ratings.")
flags.DEFINE_integer("max_length", 256, "Tokens per sequence (prompt cut from the left).")
flags.DEFINE_integer("batch_size", 32, "Pairs per forward pass.")
flags.DEFINE_integer("limit", 0, "Use only the first N rows (0: all).")
flags.DEFINE_string("reference", None, "Score --model as an implicit reward model against this reference causal "
                    "LM (default: the one a train_dpo export names).")
flags.DEFINE_float("beta", None, "Implicit reward scale (default: the train_dpo run's loss.beta).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    with cli_errors():
        kw = dict(fmt=FLAGS.format, max_length=FLAGS.max_length, batch_size=FLAGS.batch_size, limit=FLAGS.limit)
        if FLAGS.reference or FLAGS.beta is not None or is_preference_policy(FLAGS.model):
            summary = evaluate_implicit(FLAGS.model, FLAGS.data, reference=FLAGS.reference, beta=FLAGS.beta, **kw)
        else:
            summary = evaluate_file(FLAGS.model, FLAGS.data, **kw)
        print(json.dumps(summary))


if __name__ == "__main__":
    run_app(main)
