"""Supervised fine-tuning: `python -m jaxrlhf.train_sft --config=configs/sft.py [--config.KEY=VALUE ...]`.

The first step of the RLHF pipeline: next-token NLL on the response tokens of (prompt, response)
examples. The host loop only: config in, mesh, model and data, jitted steps, logs, checkpoints,
export. The maths lives in `jaxrlhf.sft.step`, the data in `jaxrlhf.sft.data`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
from flax import nnx

from jaxrlhf.infra.metrics import MetricsWriter
from jaxrlhf.infra.runtime import run_trainer
from jaxrlhf.models.export import export_hf
from jaxrlhf.models.hub import load_tokenizer
from jaxrlhf.sft import data as sft_data
from jaxrlhf.sft.step import make_eval_step, make_train_step
from jaxrlhf.infra.multihost import to_global
from jaxrlhf.training.loop import host_scalar, run_steps
from jaxrlhf.training.optim import make_optimizer
from jaxrlhf.training.run_setup import init_train_state, load_model, open_checkpoints, start_run
from jaxrlhf.training.trainable import count_params, split_for

def held_out_nll(eval_fn, batches, mesh) -> dict:
    """Mean NLL per response token over `batches` and its perplexity."""
    nll, tokens = 0.0, 0.0
    for batch in batches:
        nll_sum, count = eval_fn(to_global(batch, mesh))
        nll, tokens = nll + host_scalar(nll_sum), tokens + host_scalar(count)
    mean = nll / tokens if tokens else float("nan")
    return {"nll": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": int(tokens)}


def train(config) -> dict:
    """Runs fine-tuning as configured; returns the final held-out metrics."""
    workdir, mesh = start_run(config)
    loaded = load_model(config, mesh, "causal_lm")
    tokenizer = load_tokenizer(loaded.model_dir)
    data = sft_data.prepare(config, tokenizer)

    steps_per_epoch = len(data.train_batcher)
    total_steps = config.train.max_steps or config.train.epochs * steps_per_epoch
    optimizer, schedule = make_optimizer(config.optim, total_steps)
    graphdef, trainable, frozen = split_for(loaded.model, config.model)
    state = init_train_state(trainable, optimizer)
    print(f"model {loaded.model_dir} ({loaded.hf_config['model_type']}): {count_params(trainable):,} trainable, "
          f"{count_params(frozen):,} frozen parameters")
    print(f"data: {data.describe()}; {steps_per_epoch} steps/epoch, {total_steps} steps")

    ckpt, state, start = open_checkpoints(config, workdir, state)

    chunk = config.loss.chunk_size
    train_step = jax.jit(make_train_step(graphdef, optimizer, schedule, config.optim.grad_accum, chunk),
                         donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(graphdef, chunk))

    def evaluate(state) -> dict:
        return held_out_nll(lambda batch: eval_step(state["params"], frozen, batch), data.held_out_batches(), mesh)

    def summarise(window):
        sums = {k: sum(host_scalar(m[k]) for m in window) for k in window[0]}
        return {"loss": sums["nll_sum"] / max(sums["tokens"], 1.0), "grad_norm": sums["grad_norm"] / len(window),
                "learning_rate": host_scalar(window[-1]["learning_rate"]), "response_tokens": sums["tokens"]}, \
            sums["seq_tokens"]

    writer = MetricsWriter(workdir)
    has_eval = data.held_out is not None
    if has_eval and config.train.eval_at_start and start == 0:
        writer.write(0, evaluate(state), prefix="eval/")
    run = run_steps(train_step, state, frozen, data.train_batcher.from_step(start), mesh=mesh,
                    train_cfg=config.train, start=start, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                    seed=config.seed, ckpt=ckpt, writer=writer, summarise=summarise, unit="tokens",
                    evaluate=evaluate if has_eval else None, desc="train_sft",
                    postfix=lambda m: dict(loss=f"{m['loss']:.3f}", tok_s=f"{m.get('tokens_per_s', 0.0):.0f}"))
    state = run.state
    if run.done < total_steps:
        print(f"stopped at step {run.done} of {total_steps}; checkpoint saved, rerun the same command to resume")
        writer.close()
        return {"stopped_at": run.done}

    summary = evaluate(state) if has_eval else {}
    summary["train_seconds"] = round(run.seconds, 1)
    if run.skipped:
        summary["skipped_nonfinite_steps"] = run.skipped
    if run.units_per_s is not None:
        summary["tokens_per_s"] = round(run.units_per_s, 1)
    writer.write(total_steps, summary, prefix="eval/")
    writer.close()
    if jax.process_index() == 0:
        (workdir / "eval.json").write_text(json.dumps(summary, indent=2))
    if config.train.export:
        model = nnx.merge(graphdef, state["params"], frozen)
        export_hf(model, loaded.family, loaded.config, "causal_lm", workdir / "export", tokenizer=tokenizer)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    run_trainer(train, str(Path(__file__).parent / "configs" / "sft.py"))
