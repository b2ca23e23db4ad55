"""Supervised fine-tuning: `python -m jaxrlhf.train_sft --config=configs/sft.py [--config.KEY=VALUE ...]`.

The first step of the RLHF pipeline: next-token NLL on the response tokens of (prompt, response)
examples. The host loop only: config in, mesh, model and data, jitted steps, logs, checkpoints,
export. The maths lives in `jaxrlhf.sft.step`, the data in `jaxrlhf.sft.data`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxrlhf.infra import preemption
from jaxrlhf.infra.metrics import MetricsWriter
from jaxrlhf.infra.runtime import progress, run_trainer
from jaxrlhf.models.export import export_hf
from jaxrlhf.models.hub import load_tokenizer
from jaxrlhf.rm.evaluate import to_global
from jaxrlhf.sft import data as sft_data
from jaxrlhf.sft.step import make_eval_step, make_train_step
from jaxrlhf.training.nonfinite import NonFiniteGuard
from jaxrlhf.training.optim import make_optimizer
from jaxrlhf.training.run_setup import init_train_state, load_model, open_checkpoints, start_run
from jaxrlhf.training.trainable import count_params, split_trainable

def _scalar(x) -> float:
    """A replicated (jit output) scalar on the host, also when other hosts hold copies."""
    return float(np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x)


def held_out_nll(eval_fn, batches, mesh) -> dict:
    """Mean NLL per response token over `batches` and its perplexity."""
    nll, tokens = 0.0, 0.0
    for batch in batches:
        nll_sum, count = eval_fn(to_global(batch, mesh))
        nll, tokens = nll + _scalar(nll_sum), tokens + _scalar(count)
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
    graphdef, trainable, frozen = split_trainable(loaded.model, config.model.train_mode)
    state = init_train_state(trainable, optimizer)
    print(f"model {loaded.model_dir} ({loaded.hf_config['model_type']}): {count_params(trainable):,} trainable, "
          f"{count_params(frozen):,} frozen parameters")
    print(f"data: {data.describe()}; {steps_per_epoch} steps/epoch, {total_steps} steps")

    ckpt, state, start = open_checkpoints(config, workdir, state)

    chunk = config.loss.chunk_size
    train_step = jax.jit(make_train_step(graphdef, optimizer, schedule, config.optim.grad_accum, chunk),
                         donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(graphdef, chunk))

    def evaluate() -> dict:
        return held_out_nll(lambda batch: eval_step(state["params"], frozen, batch), data.held_out_batches(), mesh)

    writer = MetricsWriter(workdir)
    has_eval = data.held_out is not None
    if has_eval and config.train.eval_at_start and start == 0:
        writer.write(0, evaluate(), prefix="eval/")
    base_key = jax.random.key(config.seed)
    eval_every = config.train.eval_every or steps_per_epoch

    preemption.install_sigterm_handler()
    guard = NonFiniteGuard(config.train.on_nonfinite)
    window, t0, t_window = [], time.time(), time.time()
    steady = {"tokens": 0.0, "seconds": 0.0}  # throughput after the first (compiling) step
    batches = data.train_batcher.from_step(start)
    bar = progress(total=total_steps, initial=start, desc="train_sft")
    done = start
    for step in range(start, total_steps):
        batch = to_global(next(batches), mesh)
        state, metrics = train_step(state, frozen, batch, jax.random.fold_in(base_key, step))
        window.append(metrics)
        guard.add(metrics["nonfinite"])
        done = step + 1
        if step == start or done % config.train.log_every == 0 or done == total_steps:
            guard.check(done, ckpt.latest_step())
            sums = {k: sum(_scalar(m[k]) for m in window) for k in window[0]}
            logged = {"loss": sums["nll_sum"] / max(sums["tokens"], 1.0), "grad_norm": sums["grad_norm"] / len(window),
                      "learning_rate": _scalar(window[-1]["learning_rate"]), "response_tokens": sums["tokens"]}
            seconds = time.time() - t_window
            if step > start:  # the first step compiles: keep it out of the throughput
                steady["tokens"] += sums["seq_tokens"]
                steady["seconds"] += seconds
                logged["tokens_per_s"] = sums["seq_tokens"] / seconds
            writer.write(done, logged, prefix="train/")
            bar.set_postfix(loss=f"{logged['loss']:.3f}", tok_s=f"{logged.get('tokens_per_s', 0.0):.0f}")
            window, t_window = [], time.time()
        paused = time.time()  # evaluation and saving stay out of the throughput
        if has_eval and done % eval_every == 0 and done != total_steps:
            summary = evaluate()
            writer.write(done, summary, prefix="eval/")
            bar.write(f"step {done}: held-out {json.dumps(summary)}")
        stopping = preemption.should_stop() or done == config.train.stop_after
        if ckpt.should_save(done) or done == total_steps or stopping:
            guard.check(done, ckpt.latest_step())
            ckpt.save(done, state, {"step": done})
        t_window += time.time() - paused
        bar.update(1)
        if stopping:
            break
    bar.close()
    ckpt.close()
    if done < total_steps:
        print(f"stopped at step {done} of {total_steps}; checkpoint saved, rerun the same command to resume")
        writer.close()
        return {"stopped_at": done}

    summary = evaluate() if has_eval else {}
    summary["train_seconds"] = round(time.time() - t0, 1)
    if guard.skipped:
        summary["skipped_nonfinite_steps"] = guard.skipped
    if steady["seconds"] > 0:
        summary["tokens_per_s"] = round(steady["tokens"] / steady["seconds"], 1)
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
