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
from pathlib import Path

import jax
from absl import flags

from jaxrlhf.data import ListBatcher, PairBatcher, load_list_data, load_pair_data, load_records
from jaxrlhf.data.tokenize import special_tokens
from jaxrlhf.infra import sharding as shd
from jaxrlhf.infra.runtime import cli_errors, run_app
from jaxrlhf.models.hf_files import is_hf_dir
from jaxrlhf.models.hub import from_pretrained, load_tokenizer
from jaxrlhf.po.implicit import load_policy, make_implicit_reward_fn
from jaxrlhf.po.setup import PREFERENCE_FILE
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
flags.DEFINE_string("reference", None, "Score --model as an implicit reward model against this reference causal "
                    "LM (default: the one a train_dpo export names).")
flags.DEFINE_float("beta", None, "Implicit reward scale (default: the train_dpo run's loss.beta).")
FLAGS = flags.FLAGS


def _load_kwargs(fmt: str, limit: int) -> dict:
    return dict(format=fmt, max_rows=limit) if limit else dict(format=fmt)


def _score(data: str, tokenizer, max_length: int, batch_size: int, append_eos: bool, pair_fn, reward_fn, mesh,
           kw: dict, shared_prompt: bool = False) -> dict:
    """The reward-model summary of `data`: pair_fn(batch) -> (r_c, r_r); reward_fn(ids, mask, length) -> r.
    `shared_prompt`: responses to one prompt keep the same cut of it, as train_dpo tokenises."""
    pairs, _, report = load_pair_data(data, tokenizer, max_length, append_eos=append_eos, shared_prompt=shared_prompt,
                                      **kw)
    summary = summarise(score_pairs(pair_fn, PairBatcher(pairs, batch_size, shuffle=False).epoch(0), mesh))
    if load_records(data, tokenizer=tokenizer, **kw).format == "ranked":
        lists, _, _ = load_list_data(data, tokenizer, max_length, append_eos=append_eos, shared_prompt=shared_prompt,
                                     **kw)
        batches = ListBatcher(lists, batch_size, shuffle=False).epoch(0)
        summary["kendall_tau"] = score_lists(reward_fn, batches, mesh)["kendall_tau"]
    skipped = dict(report.invalid) | dict(report.filtered)
    if skipped:
        summary["skipped"] = skipped
    return summary


def evaluate_file(model_path: str, data: str, *, fmt: str = "auto", max_length: int = 256,
                  batch_size: int = 32, limit: int = 0) -> dict:
    mesh = shd.make_mesh()
    rm = load_trained_rm(model_path, mesh)
    loaded, tokenizer, spec = rm.loaded, rm.tokenizer, rm.spec
    from flax import nnx

    graphdef, params = nnx.split(loaded.model)
    eval_step = jax.jit(make_eval_step(graphdef, spec.length_normalise))
    reward_fn = jax.jit(make_reward_fn(graphdef, spec.length_normalise))
    return _score(data, tokenizer, max_length, batch_size, spec.append_eos and loaded.family.IS_DECODER,
                  lambda b: eval_step(params, nnx.State({}), b),
                  lambda ids, mask, length: reward_fn(params, nnx.State({}), ids, mask, length), mesh,
                  _load_kwargs(fmt, limit))


def is_preference_policy(model_path: str) -> bool:
    """A train_dpo export (its preference.json) or workdir (loss.beta in its run_config.json)."""
    p = Path(model_path).expanduser()
    if is_hf_dir(p):
        return (p / PREFERENCE_FILE).is_file()
    run_config = p / "run_config.json"
    return run_config.is_file() and '"beta"' in run_config.read_text()


def evaluate_implicit(model_path: str, data: str, *, reference: str | None = None, beta: float | None = None,
                      fmt: str = "auto", max_length: int = 256, batch_size: int = 32, limit: int = 0) -> dict:
    """The reward-model summary of a policy's implicit rewards beta * (log p - log p_ref) on `data`."""
    from flax import nnx

    mesh = shd.make_mesh()
    policy = load_policy(model_path, mesh)
    note = policy.note
    beta = beta if beta is not None else note.get("beta")
    if beta is None:
        raise ValueError(f"--beta: {model_path} does not say which beta it was trained with (no {PREFERENCE_FILE}); "
                         "pass it")
    if beta <= 0:
        raise ValueError(f"--beta={beta} must be > 0 (the implicit reward is beta * log-ratio)")
    reference = reference or (None if note.get("reference_free") else note.get("reference"))
    if not reference and not note.get("reference_free"):
        raise ValueError("--reference: the model the policy was optimised against (an HF dir, hub id or alias)")
    policy_def, policy_state = nnx.split(policy.model)
    ref_def, ref_state = None, nnx.State({})
    if reference:
        ref_model = from_pretrained(reference, "causal_lm", mesh=mesh)
        if load_tokenizer(ref_model.model_dir).get_vocab() != policy.tokenizer.get_vocab():
            raise ValueError(f"--reference={reference} has another vocabulary than {model_path}: the implicit "
                             f"reward compares log-probs of the same token ids")
        ref_def, ref_state = nnx.split(ref_model.model)
    append_eos = bool(note.get("append_eos", True))
    reward = jax.jit(make_implicit_reward_fn(policy_def, ref_def, beta=float(beta),
                                             length_normalise=note.get("loss_type") == "simpo",
                                             suffix_len=len(special_tokens(policy.tokenizer, append_eos).suffix)))
    reward_fn = lambda ids, mask, length: reward(policy_state, ref_state, ids, mask, length)
    pair_fn = lambda b: (reward_fn(b["chosen_ids_BxT"], b["chosen_mask_BxT"], b["chosen_len_B"]),
                         reward_fn(b["rejected_ids_BxT"], b["rejected_mask_BxT"], b["rejected_len_B"]))
    summary = _score(data, policy.tokenizer, max_length, batch_size, append_eos, pair_fn, reward_fn, mesh,
                     _load_kwargs(fmt, limit), shared_prompt=True)
    summary["implicit_reward"] = {"beta": float(beta), "reference": reference}
    return summary


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
