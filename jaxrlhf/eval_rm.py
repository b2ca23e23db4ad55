"""Evaluate a reward model on a comparison file and print one JSON object.

    python -m jaxrlhf.eval_rm --model=workdir/rm/export --data=pairs.jsonl

`--model` is an exported HF directory or a train_rm workdir (newest checkpoint). The data may be any
format `jaxrlhf.data` reads; ranked lists also give Kendall's tau between rewards and ranks. Rewards are
the quantity the model was trained on (`reward_model.json`: divided by the response length when it was
trained with `loss.length_normalise`), so the accuracy is the one train_rm's eval.json reports.
"""

from __future__ import annotations

import json

import jax
from absl import flags

from jaxrlhf.data import ListBatcher, PairBatcher, load_list_data, load_pair_data, load_records
from jaxrlhf.infra import sharding as shd
from jaxrlhf.infra.runtime import cli_errors, run_app
from jaxrlhf.rm.evaluate import score_lists, score_pairs, summarise
from jaxrlhf.rm.load import load_trained_rm
from jaxrlhf.rm.step import make_eval_step, make_reward_fn

flags.DEFINE_string("model", None, "Exported RM directory or train_rm workdir.", required=True)
flags.DEFINE_string("data", None, "Comparison file (json/jsonl/csv/parquet, gz ok), builtin:NAME or hub id.",
                    required=True)
flags.DEFINE_string("format", "auto", "Data format: auto, pairs, hh, chat, ranked, ratings.")
flags.DEFINE_integer("max_length", 256, "Tokens per sequence (prompt cut from the left).")
flags.DEFINE_integer("batch_size", 32, "Pairs per forward pass.")
flags.DEFINE_integer("limit", 0, "Use only the first N rows (0: all).")
FLAGS = flags.FLAGS


def evaluate_file(model_path: str, data: str, *, fmt: str = "auto", max_length: int = 256,
                  batch_size: int = 32, limit: int = 0) -> dict:
    mesh = shd.make_mesh()
    rm = load_trained_rm(model_path, mesh)
    loaded, tokenizer, spec = rm.loaded, rm.tokenizer, rm.spec
    from flax import nnx

    graphdef, params = nnx.split(loaded.model)
    append_eos = spec.append_eos and loaded.family.IS_DECODER
    kw = dict(format=fmt, max_rows=limit) if limit else dict(format=fmt)
    eval_step = jax.jit(make_eval_step(graphdef, spec.length_normalise))
    pairs, _, report = load_pair_data(data, tokenizer, max_length, append_eos=append_eos, **kw)
    batches = PairBatcher(pairs, batch_size, shuffle=False).epoch(0)
    summary = summarise(score_pairs(lambda b: eval_step(params, nnx.State({}), b), batches, mesh))
    if load_records(data, tokenizer=tokenizer, **kw).format == "ranked":
        lists, _, _ = load_list_data(data, tokenizer, max_length, append_eos=append_eos, **kw)
        reward_fn = jax.jit(make_reward_fn(graphdef, spec.length_normalise))
        rewards = lambda ids, mask, length: reward_fn(params, nnx.State({}), ids, mask, length)
        batches = ListBatcher(lists, batch_size, shuffle=False).epoch(0)
        summary["kendall_tau"] = score_lists(rewards, batches, mesh)["kendall_tau"]
    skipped = dict(report.invalid) | dict(report.filtered)
    if skipped:
        summary["skipped"] = skipped
    return summary


def main(argv):
    del argv
    with cli_errors():
        print(json.dumps(evaluate_file(FLAGS.model, FLAGS.data, fmt=FLAGS.format, max_length=FLAGS.max_length,
                                       batch_size=FLAGS.batch_size, limit=FLAGS.limit)))


if __name__ == "__main__":
    run_app(main)
