"""Supervised fine-tuning: `python -m jaxrlhf.train_sft --config=configs/sft.py [--config.KEY=VALUE ...]`.

The first step of the RLHF pipeline: next-token NLL on the response tokens of (prompt, response)
examples. Config in, loop, out: the maths lives in `jaxrlhf.sft.step`, the data in `jaxrlhf.sft.data`,
the loop in `jaxrlhf.training`.
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
from jaxrlhf.sft import data as sft_data
from jaxrlhf.sft.evaluate import held_out_nll
from jaxrlhf.sft.step import make_eval_step, make_train_step
from jaxrlhf.training import supervised
from jaxrlhf.training.loop import Reporting, StepHook, host_scalar
from jaxrlhf.training.run_setup import load_model, releases_workdir, start_run


def summarise(window: list[dict]) -> tuple[dict, float]:
    """Loss per response token over the window (exact, from sums); throughput in sequence tokens."""
    sums = {k: sum(host_scalar(m[k]) for m in window) for k in window[0]}
    return {"loss": sums["nll_sum"] / max(sums["tokens"], 1.0), "grad_norm": sums["grad_norm"] / len(window),
            "learning_rate": host_scalar(window[-1]["learning_rate"]), "response_tokens": sums["tokens"]}, \
        sums["seq_tokens"]


@releases_workdir
def train(config, hooks: Sequence[StepHook] = ()) -> dict:
    """Runs fine-tuning as configured; returns the final held-out metrics (`{"stopped_at": step}` when stopped)."""
    workdir, mesh = start_run(config, "sft")
    loaded = load_model(config, mesh, "causal_lm")
    tokenizer = load_tokenizer(loaded.model_dir)
    data = sft_data.prepare(config, tokenizer)
    run = supervised.prepare(config, workdir, loaded, data.train_batcher, data.describe())
    graphdef, frozen = run.graphdef, run.frozen

    chunk = config.loss.chunk_size
    train_step = jax.jit(make_train_step(graphdef, run.optimizer, run.schedule, config.optim.grad_accum, chunk),
                         donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(graphdef, chunk))

    def evaluate(state) -> dict:
        return held_out_nll(lambda batch: eval_step(state["params"], frozen, batch), data.held_out_batches(), mesh)

    writer = MetricsWriter(workdir)
    has_eval = data.held_out is not None
    reporting = Reporting(desc="train_sft", prefix="train/", summarise=summarise, unit="tokens",
                          postfix=lambda m: dict(loss=f"{m['loss']:.3f}", tok_s=f"{m.get('tokens_per_s', 0.0):.0f}"))
    result = supervised.train(run, train_step, data.train_batcher, config=config, mesh=mesh, writer=writer,
                              reporting=reporting, evaluate=evaluate if has_eval else None,
                              eval_at_start=config.train.eval_at_start, hooks=hooks)
    if not result.finished:
        writer.close()
        return {"stopped_at": result.done}
    summary = supervised.finish(result, evaluate(result.state) if has_eval else {}, workdir, writer,
                                unit="tokens", digits=1)
    if config.train.export:
        model = nnx.merge(graphdef, result.state["params"], frozen)
        export_hf(model, loaded.family, loaded.config, "causal_lm", workdir / "export", tokenizer=tokenizer)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    run_trainer(train, str(Path(__file__).parent / "configs" / "sft.py"))
