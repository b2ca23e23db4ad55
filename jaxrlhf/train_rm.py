"""Train a reward model: `python -m jaxrlhf.train_rm --config=configs/rm.py [--config.KEY=VALUE ...]`.

The host loop only: config in, mesh, model and data, jitted steps, logs, checkpoints, export. The
maths lives in `jaxrlhf.rm.step` and `jaxrlhf.ops`, the data in `jaxrlhf.data`.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from jaxrlhf.infra.metrics import MetricsWriter
from jaxrlhf.infra.runtime import run_trainer
from jaxrlhf.models.export import export_hf
from jaxrlhf.models.hub import load_tokenizer
from jaxrlhf.rm import data as rm_data
from jaxrlhf.rm.load import use_distinct_pad
from jaxrlhf.rm.evaluate import histogram_png
from jaxrlhf.rm.scoring import SPEC_FILE, ScoringSpec
from jaxrlhf.rm.step import make_eval_step, make_reward_fn, make_train_step
from jaxrlhf.training.loop import host_scalar, run_steps
from jaxrlhf.training.memory_plan import check_rm_batch, report_rm_plan
from jaxrlhf.training.optim import make_optimizer
from jaxrlhf.training.run_setup import lora_from_config  # noqa: F401 (kept importable from here)
from jaxrlhf.training.run_setup import init_train_state, load_model, open_checkpoints, start_run
from jaxrlhf.training.trainable import count_params, split_for


def load_reward_model(config, mesh):
    return load_model(config, mesh, "reward")


def reward_stats(train_summary: dict, spec: ScoringSpec) -> dict:
    """What PPO needs to normalise this model's rewards: their mean and std on training data, of the
    quantity every consumer scores (reward / length with `loss.length_normalise`), and how many rewards
    they came from (`n_rewards`; `n_pairs` is the pairs, lists' pairs or rated responses compared)."""
    keys = ("reward_mean", "reward_std", "n", "n_rewards", "accuracy")
    stats = {("n_pairs" if k == "n" else "train_accuracy" if k == "accuracy" else k): train_summary[k]
             for k in keys if k in train_summary}
    return dict(stats, length_normalised=spec.length_normalise)


def train(config) -> dict:
    """Runs training as configured; returns the final held-out metrics."""
    workdir, mesh = start_run(config)
    check_rm_batch(config, mesh)
    loaded = load_reward_model(config, mesh)
    report_rm_plan(config, loaded, mesh)
    tokenizer = load_tokenizer(loaded.model_dir)
    use_distinct_pad(loaded, tokenizer)
    data = rm_data.prepare(config, tokenizer, is_decoder=loaded.family.IS_DECODER)
    spec = ScoringSpec.of_training(config, data, loaded.family.IS_DECODER)
    if jax.process_index() == 0:  # how eval_rm, score, compare and PPO must feed this model (rm/scoring.py)
        (workdir / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=2))

    steps_per_epoch = len(data.train_batcher)
    total_steps = config.train.max_steps or config.train.epochs * steps_per_epoch
    optimizer, schedule = make_optimizer(config.optim, total_steps)
    graphdef, trainable, frozen = split_for(loaded.model, config.model)
    state = init_train_state(trainable, optimizer)
    print(f"model {loaded.model_dir} ({loaded.hf_config['model_type']}): {count_params(trainable):,} trainable, "
          f"{count_params(frozen):,} frozen parameters; fresh: {', '.join(loaded.initialised) or 'none'}")
    print(f"data: {data.describe()}; {steps_per_epoch} steps/epoch, {total_steps} steps")

    ckpt, state, start = open_checkpoints(config, workdir, state)

    train_step = jax.jit(make_train_step(graphdef, config.loss, optimizer, schedule, config.optim.grad_accum,
                                         data.objective), donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(graphdef, config.loss.length_normalise))
    reward_step = jax.jit(make_reward_fn(graphdef, config.loss.length_normalise))

    def evaluate(params, **kw):
        return data.evaluate(lambda batch: eval_step(params, frozen, batch),
                             lambda ids, mask, length: reward_step(params, frozen, ids, mask, length), mesh, **kw)

    def summarise(window):
        logged = {k: float(np.mean([host_scalar(m[k]) for m in window])) for k in window[0]}
        return logged, logged.pop("pairs") * len(window)

    writer = MetricsWriter(workdir)
    run = run_steps(train_step, state, frozen, data.train_batcher.from_step(start),  # resumes mid-epoch
                    mesh=mesh, train_cfg=config.train, start=start, total_steps=total_steps,
                    steps_per_epoch=steps_per_epoch, seed=config.seed, ckpt=ckpt, writer=writer,
                    summarise=summarise, unit="pairs", evaluate=lambda s: evaluate(s["params"])[0], desc="train_rm",
                    postfix=lambda m: dict(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.2f}",
                                           pairs_s=f"{m.get('pairs_per_s', 0.0):.1f}"))
    state = run.state
    if run.done < total_steps:
        print(f"stopped at step {run.done} of {total_steps}; checkpoint saved, rerun the same command to resume")
        writer.close()
        return {"stopped_at": run.done}

    summary, scores = evaluate(state["params"])
    summary["train_seconds"] = round(run.seconds, 1)
    if run.skipped:
        summary["skipped_nonfinite_steps"] = run.skipped
    if run.units_per_s is not None:
        summary["pairs_per_s"] = round(run.units_per_s, 2)
    writer.write(total_steps, summary, prefix="eval/")
    writer.close()
    if jax.process_index() == 0:
        (workdir / "eval.json").write_text(json.dumps(summary, indent=2))
        if config.train.histogram and scores is not None and summary["n"]:
            histogram_png(scores, workdir / "reward_histogram.png")
    if config.train.export:
        stats = reward_stats(evaluate(state["params"], on_train=True, sample=config.train.stats_pairs)[0], spec)
        if jax.process_index() == 0:  # a workdir is a reward model too (rm/load.py)
            (workdir / "reward_stats.json").write_text(json.dumps(stats, indent=2))
        from flax import nnx

        model = nnx.merge(graphdef, state["params"], frozen)
        export_hf(model, loaded.family, loaded.config, "reward", workdir / "export", tokenizer=tokenizer,
                  extra_json={"reward_stats.json": stats, SPEC_FILE: spec.to_json()})
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    run_trainer(train, str(Path(__file__).parent / "configs" / "rm.py"))
