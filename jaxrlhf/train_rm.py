"""Train a reward model: `python -m jaxrlhf.train_rm --config=configs/rm.py [--config.KEY=VALUE ...]`.

Config in, loop, out. The maths lives in `jaxrlhf.rm.step` and `jaxrlhf.ops`, the data in `jaxrlhf.rm.data`,
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
from jaxrlhf.rm import data as rm_data
from jaxrlhf.rm.evaluate import histogram_png
from jaxrlhf.rm.load import load_reward_model, reward_stats, use_distinct_pad
from jaxrlhf.rm.scoring import SPEC_FILE, ScoringSpec
from jaxrlhf.rm.step import make_eval_step, make_reward_fn, make_train_step
from jaxrlhf.training import supervised
from jaxrlhf.training.loop import Reporting, StepHook, mean_of_window
from jaxrlhf.training.memory_plan import check_rm_batch, report_rm_plan
from jaxrlhf.training.run_setup import releases_workdir, start_run


@releases_workdir
def train(config, hooks: Sequence[StepHook] = ()) -> dict:
    """Runs training as configured; returns the final held-out metrics (`{"stopped_at": step}` when stopped)."""
    workdir, mesh = start_run(config, "rm")
    check_rm_batch(config, mesh)
    loaded = load_reward_model(config, mesh)
    report_rm_plan(config, loaded, mesh)
    tokenizer = load_tokenizer(loaded.model_dir)
    use_distinct_pad(loaded, tokenizer)
    data = rm_data.prepare(config, tokenizer, is_decoder=loaded.family.IS_DECODER)
    spec = ScoringSpec.of_training(config, data, loaded.family.IS_DECODER)
    if jax.process_index() == 0:  # how eval_rm, score, compare and PPO must feed this model (rm/scoring.py)
        (workdir / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=2))
    run = supervised.prepare(config, workdir, loaded, data.train_batcher, data.describe())
    graphdef, frozen = run.graphdef, run.frozen

    train_step = jax.jit(make_train_step(graphdef, config.loss, run.optimizer, run.schedule, config.optim.grad_accum,
                                         data.objective), donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(graphdef, config.loss.length_normalise))
    reward_step = jax.jit(make_reward_fn(graphdef, config.loss.length_normalise))

    def evaluate(params, **kw):
        return data.evaluate(lambda batch: eval_step(params, frozen, batch),
                             lambda ids, mask, length: reward_step(params, frozen, ids, mask, length), mesh, **kw)

    def summarise(window):
        logged = mean_of_window(window)
        return logged, logged.pop("pairs") * len(window)

    writer = MetricsWriter(workdir)
    reporting = Reporting(desc="train_rm", prefix="train/", summarise=summarise, unit="pairs",
                          postfix=lambda m: dict(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.2f}",
                                                 pairs_s=f"{m.get('pairs_per_s', 0.0):.1f}"))
    result = supervised.train(run, train_step, data.train_batcher, config=config, mesh=mesh, writer=writer,
                              reporting=reporting, evaluate=lambda s: evaluate(s["params"])[0], hooks=hooks)
    if not result.finished:
        writer.close()
        return {"stopped_at": result.done}
    params = result.state["params"]
    summary, scores = evaluate(params)
    summary = supervised.finish(result, summary, workdir, writer, unit="pairs", digits=2)
    if jax.process_index() == 0 and config.train.histogram and scores is not None and summary["n"]:
        histogram_png(scores, workdir / "reward_histogram.png")
    if config.train.export:
        stats = reward_stats(evaluate(params, on_train=True, sample=config.train.stats_pairs)[0], spec)
        if jax.process_index() == 0:  # a workdir is a reward model too (rm/load.py)
            (workdir / "reward_stats.json").write_text(json.dumps(stats, indent=2))
        export_hf(nnx.merge(graphdef, params, frozen), loaded.family, loaded.config, "reward", workdir / "export",
                  tokenizer=tokenizer, extra_json={"reward_stats.json": stats, SPEC_FILE: spec.to_json()})
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    run_trainer(train, str(Path(__file__).parent / "configs" / "rm.py"))
