"""Train a reward model: `python -m jaxrlhf.train_rm --config=configs/rm.py [--config.KEY=VALUE ...]`.

The host loop only: config in, mesh, model and data, jitted steps, logs, checkpoints, export. The
maths lives in `jaxrlhf.rm.step` and `jaxrlhf.ops`, the data in `jaxrlhf.data`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from jaxrlhf.infra import preemption
from jaxrlhf.infra.metrics import MetricsWriter
from jaxrlhf.infra.runtime import progress, run_trainer
from jaxrlhf.models.export import export_hf
from jaxrlhf.models.hub import load_tokenizer
from jaxrlhf.rm import data as rm_data
from jaxrlhf.rm.load import use_distinct_pad
from jaxrlhf.rm.evaluate import histogram_png, to_global
from jaxrlhf.rm.step import make_eval_step, make_reward_fn, make_train_step
from jaxrlhf.training.nonfinite import NonFiniteGuard
from jaxrlhf.training.memory_plan import check_rm_batch, report_rm_plan
from jaxrlhf.training.optim import make_optimizer
from jaxrlhf.training.run_setup import lora_from_config  # noqa: F401 (kept importable from here)
from jaxrlhf.training.run_setup import init_train_state, load_model, open_checkpoints, start_run
from jaxrlhf.training.trainable import count_params, split_trainable


def load_reward_model(config, mesh):
    return load_model(config, mesh, "reward")


def reward_stats(train_summary: dict) -> dict:
    """What PPO needs to normalise this model's rewards (pairs objective only has the full set)."""
    keys = ("reward_mean", "reward_std", "n", "accuracy")
    return {("n_pairs" if k == "n" else "train_accuracy" if k == "accuracy" else k): train_summary[k]
            for k in keys if k in train_summary}


def train(config) -> dict:
    """Runs training as configured; returns the final held-out metrics."""
    workdir, mesh = start_run(config)
    check_rm_batch(config, mesh)
    loaded = load_reward_model(config, mesh)
    report_rm_plan(config, loaded, mesh)
    tokenizer = load_tokenizer(loaded.model_dir)
    use_distinct_pad(loaded, tokenizer)
    data = rm_data.prepare(config, tokenizer, is_decoder=loaded.family.IS_DECODER)

    steps_per_epoch = len(data.train_batcher)
    total_steps = config.train.max_steps or config.train.epochs * steps_per_epoch
    optimizer, schedule = make_optimizer(config.optim, total_steps)
    graphdef, trainable, frozen = split_trainable(loaded.model, config.model.train_mode)
    state = init_train_state(trainable, optimizer)
    print(f"model {loaded.model_dir} ({loaded.hf_config['model_type']}): {count_params(trainable):,} trainable, "
          f"{count_params(frozen):,} frozen parameters; fresh: {', '.join(loaded.initialised) or 'none'}")
    print(f"data: {data.describe()}; {steps_per_epoch} steps/epoch, {total_steps} steps")

    ckpt, state, start = open_checkpoints(config, workdir, state)

    train_step = jax.jit(make_train_step(graphdef, config.loss, optimizer, schedule, config.optim.grad_accum,
                                         data.objective), donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(graphdef, config.loss.length_normalise))
    reward_step = jax.jit(make_reward_fn(graphdef))

    def evaluate(**kw):
        return data.evaluate(lambda batch: eval_step(state["params"], frozen, batch),
                             lambda ids, mask: reward_step(state["params"], frozen, ids, mask), mesh, **kw)
    writer = MetricsWriter(workdir)
    base_key = jax.random.key(config.seed)
    eval_every = config.train.eval_every or steps_per_epoch

    preemption.install_sigterm_handler()
    guard = NonFiniteGuard(config.train.on_nonfinite)
    window, t0, t_window = [], time.time(), time.time()
    steady = {"pairs": 0.0, "seconds": 0.0}  # throughput after the first (compiling) step
    batches = data.train_batcher.from_step(start)  # resumes mid-epoch without replaying data
    bar = progress(total=total_steps, initial=start, desc="train_rm")
    done = start
    for step in range(start, total_steps):
        epoch = step // steps_per_epoch
        batch = to_global(next(batches), mesh)
        state, metrics = train_step(state, frozen, batch, jax.random.fold_in(base_key, step))
        window.append(metrics)
        guard.add(metrics["nonfinite"])
        done = step + 1
        if step == start or done % config.train.log_every == 0 or done == total_steps:
            guard.check(done, ckpt.latest_step())
            logged = {k: float(np.mean([jax.device_get(m[k]) for m in window])) for k in window[0]}
            seconds = time.time() - t_window
            pairs = logged.pop("pairs") * len(window)
            if step > start:  # the first step compiles: keep it out of the throughput
                steady["pairs"] += pairs
                steady["seconds"] += seconds
                logged["pairs_per_s"] = pairs / seconds
            writer.write(done, logged, prefix="train/")
            bar.set_postfix(loss=f"{logged['loss']:.3f}", acc=f"{logged['accuracy']:.2f}",
                            pairs_s=f"{logged.get('pairs_per_s', 0.0):.1f}")
            window, t_window = [], time.time()
        paused = time.time()  # evaluation and saving stay out of the throughput
        if done % eval_every == 0 and done != total_steps:
            summary, _ = evaluate()
            writer.write(done, summary, prefix="eval/")
            bar.write(f"step {done}: held-out {json.dumps(summary)}")
        stopping = preemption.should_stop_everywhere(done, config.train.log_every) or done == config.train.stop_after
        if ckpt.should_save(done) or done == total_steps or stopping:
            guard.check(done, ckpt.latest_step())
            ckpt.save(done, state, {"step": done, "epoch": epoch})
        t_window += time.time() - paused
        bar.update(1)
        if stopping:
            break
    bar.close()
    ckpt.close()
    train_seconds = time.time() - t0
    if done < total_steps:
        print(f"stopped at step {done} of {total_steps}; checkpoint saved, rerun the same command to resume")
        writer.close()
        return {"stopped_at": done}

    summary, scores = evaluate()
    summary["train_seconds"] = round(train_seconds, 1)
    if guard.skipped:
        summary["skipped_nonfinite_steps"] = guard.skipped
    if steady["seconds"] > 0:
        summary["pairs_per_s"] = round(steady["pairs"] / steady["seconds"], 2)
    writer.write(total_steps, summary, prefix="eval/")
    writer.close()
    if jax.process_index() == 0:
        (workdir / "eval.json").write_text(json.dumps(summary, indent=2))
        if config.train.histogram and scores is not None and summary["n"]:
            histogram_png(scores, workdir / "reward_histogram.png")
    if config.train.export:
        stats = reward_stats(evaluate(on_train=True, sample=config.train.stats_pairs)[0])
        from flax import nnx

        model = nnx.merge(graphdef, state["params"], frozen)
        export_hf(model, loaded.family, loaded.config, "reward", workdir / "export", tokenizer=tokenizer,
                  extra_json={"reward_stats.json": stats})
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    run_trainer(train, str(Path(__file__).parent / "configs" / "rm.py"))
