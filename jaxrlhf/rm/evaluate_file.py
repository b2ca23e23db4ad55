"""A reward model's summary of a comparison file: what `eval_rm` prints, as a function a notebook or a
test calls (the entry point only parses flags). `summarise_file` is shared with the implicit reward model
of a DPO-family policy (`po.implicit.evaluate_implicit`), so both report the same keys."""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from jaxrlhf.data import ListBatcher, PairBatcher, load_list_data, load_pair_data, load_records
from jaxrlhf.infra import sharding as shd
from jaxrlhf.rm.evaluate import score_lists, score_pairs, summarise
from jaxrlhf.rm.load import load_trained_rm
from jaxrlhf.rm.step import make_eval_step, make_reward_fn


def load_kwargs(fmt: str, limit: int) -> dict:
    return dict(format=fmt, max_rows=limit) if limit else dict(format=fmt)


def summarise_file(data: str, tokenizer, max_length: int, batch_size: int, append_eos: bool, pair_fn: Callable,
                   reward_fn: Callable, mesh, kw: dict, shared_prompt: bool = False) -> dict:
    """The reward-model summary of `data`: pair_fn(batch) -> (r_c, r_r); reward_fn(ids, mask, length) -> r.
    Ranked lists also give Kendall's tau. `shared_prompt`: responses to one prompt keep the same cut of it,
    as train_dpo tokenises."""
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
    """A trained reward model (export or train_rm workdir) on a comparison file, in train_rm's eval keys."""
    mesh = shd.make_mesh()
    rm = load_trained_rm(model_path, mesh)
    loaded, tokenizer, spec = rm.loaded, rm.tokenizer, rm.spec
    graphdef, params = nnx.split(loaded.model)
    eval_step = jax.jit(make_eval_step(graphdef, spec.length_normalise))
    reward_fn = jax.jit(make_reward_fn(graphdef, spec.length_normalise))
    return summarise_file(data, tokenizer, max_length, batch_size, spec.append_eos and loaded.family.IS_DECODER,
                          lambda b: eval_step(params, nnx.State({}), b),
                          lambda ids, mask, length: reward_fn(params, nnx.State({}), ids, mask, length), mesh,
                          load_kwargs(fmt, limit))
