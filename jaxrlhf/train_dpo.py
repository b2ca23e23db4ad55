"""Preference optimisation without a reward model: `python -m jaxrlhf.train_dpo --config=configs/dpo.py`.

DPO and its family (IPO, conservative and robust DPO, hinge, SimPO, an RPO-style SFT term), KTO on rated
responses, and Plackett-Luce DPO on ranked lists, chosen by `loss.type`, against a frozen reference.
Config in, loop, out: the maths lives in `jaxrlhf.po.step` and `jaxrlhf.ops.preference`, the data in
`jaxrlhf.po.data`, the cached reference in `jaxrlhf.po.reference`, the loop in `jaxrlhf.training`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import jax
from flax import nnx

from jaxrlhf.infra.metrics import MetricsWriter
from jaxrlhf.infra.runtime import run_trainer
from jaxrlhf.models.export import export_hf
from jaxrlhf.models.hub import load_tokenizer
from jaxrlhf.po import data as po_data
from jaxrlhf.po import reference as po_reference
from jaxrlhf.po.evaluate import held_out
from jaxrlhf.po.setup import PREFERENCE_FILE, check_loss, load_reference, preference_json, summarise
from jaxrlhf.po.step import LossSpec, make_eval_step, make_reference_fn, make_train_step
from jaxrlhf.training import supervised
from jaxrlhf.training.loop import Reporting, StepHook
from jaxrlhf.training.run_setup import load_model, releases_workdir, start_run

UNITS = {"pairs": "pairs", "listwise": "lists", "kto": "responses"}


@releases_workdir
def train(config, hooks: Sequence[StepHook] = ()) -> dict:
    """Runs training as configured; returns the final held-out metrics (`{"stopped_at": step}` when stopped)."""
    check_loss(config.loss)
    workdir, mesh = start_run(config, "dpo")
    loaded = load_model(config, mesh, "causal_lm")
    tokenizer = load_tokenizer(loaded.model_dir)
    data = po_data.prepare(config, tokenizer)
    ref = load_reference(config, mesh, tokenizer)
    run = supervised.prepare(config, workdir, loaded, data.train_batcher, data.describe())
    spec = LossSpec.of(config.loss, data.objective, data.suffix_len)
    frozen = (run.frozen, ref.state)

    cached = po_reference.use_cache(config.loss.reference_logps, run.total_steps, run.steps_per_epoch,
                                    ref.kind == "none")
    eval_batcher = data.batcher(data.held_out) if data.held_out is not None else None
    if cached:
        ref_fn = jax.jit(make_reference_fn(run.graphdef, ref.graphdef, spec, ref.kind))
        parts = {"train": data.train, **({"held_out": data.held_out} if eval_batcher else {})}
        batchers = {"train": data.batcher(data.train), **({"held_out": eval_batcher} if eval_batcher else {})}
        params = run.state["params"]
        logps = po_reference.load_or_compute(workdir, parts, batchers, lambda b: ref_fn(params, frozen, b), mesh,
                                             po_reference.fingerprint(parts, ref.name, config.model.dtype))
        data.train_batcher.reference = logps["train"]
        if eval_batcher is not None:
            eval_batcher.reference = logps["held_out"]
    kind = "cached" if cached else ref.kind
    print(f"reference: {ref.describe()}; log-probs {'cached' if cached else 'computed in every step'}")

    step_fn = jax.jit(make_train_step(run.graphdef, ref.graphdef, spec, kind, run.optimizer, run.schedule,
                                      config.optim.grad_accum), donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(run.graphdef, ref.graphdef, spec, kind))

    def evaluate(state) -> dict:
        return held_out(lambda batch: eval_step(state["params"], frozen, batch), eval_batcher.epoch(0), mesh,
                        data.objective)

    writer = MetricsWriter(workdir)
    unit = UNITS[data.objective]
    reporting = Reporting(desc="train_dpo", prefix="train/", summarise=lambda w: summarise(w, data.objective),
                          unit=unit, postfix=lambda m: dict(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.2f}"))
    result = supervised.train(run, lambda state, _, batch, key: step_fn(state, frozen, batch, key),
                              data.train_batcher, config=config, mesh=mesh, writer=writer, reporting=reporting,
                              evaluate=evaluate if eval_batcher is not None else None,
                              eval_at_start=config.train.eval_at_start, hooks=hooks)
    if not result.finished:
        writer.close()
        return {"stopped_at": result.done}
    summary = evaluate(result.state) if eval_batcher is not None else {}
    summary = supervised.finish(result, summary, workdir, writer, unit=unit, digits=2)
    if config.train.export:
        model = nnx.merge(run.graphdef, result.state["params"], run.frozen)
        export_hf(model, loaded.family, loaded.config, "causal_lm", workdir / "export", tokenizer=tokenizer,
                  extra_json={PREFERENCE_FILE: preference_json(config, ref)})
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    run_trainer(train, str(Path(__file__).parent / "configs" / "dpo.py"))
