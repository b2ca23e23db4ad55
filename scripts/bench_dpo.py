"""DPO benchmark: TRL's DPOTrainer against jaxrlhf on the same job, in one run.

    pip install --no-deps --target /tmp/trl116 trl==1.16.0 accelerate peft==0.21.2   # or --install
    python -m jaxrlhf.assets fetch smollm2
    python scripts/bench_dpo.py                          # configs/dpo.py's steps, writes docs/benchmarks.md
    python scripts/bench_dpo.py --quick                  # 8 steps, 32 held-out pairs: the same steps, fewer
    python scripts/bench_dpo.py --quick --steps 3 --eval-pairs 16 --out ''   # smoke test

The job (both sides) is `configs/dpo.py` as it stands, read at run time (its settings are printed with the
table): SmolLM2-135M-Instruct (the `smollm2` asset, one float32 HF folder both sides load) with LoRA on the
projections it names, no dropout (the same parameters train on both sides: PEFT's LoRA on TRL's side, not
full fine-tuning), the sigmoid DPO loss against the same model with its adapters off, on the shipped HH-RLHF
harmless comparisons rendered, split (by prompt) and tokenised as jaxrlhf's trainer does it
(`jaxrlhf.po.data.prepare`), its max length, batch size and AdamW settings (warmup, then its schedule to the
last step, grad-norm clipping), float32, 2 threads. The script refuses a config that is not LoRA or not the
plain sigmoid loss.

Like for like, beyond the settings:
- Token ids: TRL trains on jaxrlhf's ids. TRL 1.16's DPOTrainer always tokenises text itself
  (`_prepare_dataset`, no pre-tokenised path), keeps one prompt for both responses and cuts long sequences at
  the END (`truncation_mode="keep_start"`), while jaxrlhf cuts the prompt from the left per response (so a
  truncated pair's chosen and rejected prompts can differ). So the TRL side is `DPOTrainer` with
  `_prepare_dataset` passed through for pre-tokenised rows and a collator that builds TRL's own batch
  (`input_ids` chosen rows then rejected rows, right-padded to the batch's longest, `attention_mask`,
  `completion_mask` = the response tokens, EOS included) from jaxrlhf's sequences; everything after the
  collator (forward, fused log-prob head, loss, metrics, optimiser, scheduler) is TRL's and transformers'
  own code. The script checks, on the rows used, that these ids equal TRL's own tokenisation of the text
  wherever jaxrlhf did not truncate, and counts the pairs TRL's text path would have cut differently.
- Batches: TRL gets the rows of jaxrlhf's batch plan (`train_batcher.plan`, seed 0: length-bucketed), step
  by step in the same order (`train_sampling_strategy="sequential"`), and a digest of every batch's ids is
  compared. Padding is each side's own: jaxrlhf pads a batch to `data.pad_to_multiple` (`configs/dpo.py`: 64,
  few compiled shapes), TRL to its longest sequence (its CPU default); the per-step table shows both.
- Initial adapters: TRL's LoRA A matrices are set to the ones jaxrlhf's `train()` starts from (its model is
  built the same way, same seed, by an `init` worker before the sides start; B is zero on both). jaxrlhf
  draws A ~ N(0, 1/fan_in), PEFT's default is uniform with a third of that variance: left alone the two
  sides would train different models. With the same start, the same batches and the same optimiser the
  per-step losses should agree to float rounding, and the script prints them side by side.
- Reference log-probs: `--reference online` (default): both sides run the adapters-off reference forward in
  every step (jaxrlhf `loss.reference_logps=online`; TRL with PEFT and `precompute_ref_log_probs=False`).
  `--reference cached`: both precompute them before training, outside the timed steps (jaxrlhf over its whole
  train split and held-out set: use `--limit`; TRL over the rows it trains on).
- Held-out implicit-reward accuracy: after the same steps both sides score the same held-out pairs:
  reward = beta * (log p_policy - log p_reference) of each response, accuracy = reward(chosen) >
  reward(rejected), ties wrong. jaxrlhf: its `train()` summary; TRL: computed here with TRL's own log-prob
  forward (`fused_lm_head=True`, `compute_ref_log_probs`).
- Not the same on purpose: each side's padding (above); TRL computes its per-step metrics (entropy, logits,
  token accuracy) as it always does; jaxrlhf runs with the malloc tunable its own entry points set
  (`jaxrlhf/infra/host_memory.py`), TRL with the machine's defaults (`--trl_tunables`: TRL with it too).
  Gradient checkpointing is off on both (TRL's DPOConfig turns it on by default).

Timing as `scripts/bench_rm.py` times: each side in its own process pinned to `--threads` CPUs, the two taking
turns (`benchlib.run_in_turns`), `--handover_every` optimiser steps a turn, on a clock that stops while a side
waits. A step ends when its metrics are on the host (jaxrlhf: `train.log_every=1` and a hook of its loop; TRL:
`logging_steps=1` and `on_log`). Steady steps are the same step numbers on both sides: all but the first
`--skip_first` steps and the first step of each new padded length on jaxrlhf's side (where it compiles).
steps/s over them, and the best and median turn (a turn holds the same steps, so the same batches, on both
sides); pairs/s = steps/s times the batch size.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import benchlib  # first: puts this checkout on sys.path
from bench_rm import SCHEDULES_HF, fmt, pin_cpus, warmup_steps
from benchlib import REPO

from jaxrlhf.infra import host_memory  # light: no JAX import

TRL_VERSION = benchlib.TRL_REWARD_VERSION  # current TRL, the pin bench_rm uses (DPOTrainer, DPOConfig)
TRL_REQUIREMENT = benchlib.trl_requirement(TRL_VERSION)
PEFT_REQUIREMENT = "peft==0.21.2"  # LoRA on TRL's side; installed --no-deps next to TRL
MARK_START = "<!-- bench_dpo:start (written by scripts/bench_dpo.py; rerun it rather than editing) -->"
MARK_END = "<!-- bench_dpo:end -->"
TITLE = "## DPO: jaxrlhf vs TRL"
QUICK = {"steps": 8, "held_out": 32, "handover_every": 2}  # the same steps, fewer of them
SIDES = {"trl": "TRL", "jax": "jaxrlhf"}
REFERENCES = ("online", "cached")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: configs/dpo.py's max_steps)")
    p.add_argument("--held_out", "--eval-pairs", dest="held_out", type=int, default=None,
                   help="pairs held out, split by prompt, and scored after training (default: configs/dpo.py's)")
    p.add_argument("--limit", type=int, default=0, help="training pairs to use (0: all); for --reference cached")
    p.add_argument("--max_length", type=int, default=None, help="default: configs/dpo.py's")
    p.add_argument("--batch_size", type=int, default=None, help="pairs per step (default: configs/dpo.py's)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: configs/dpo.py's)")
    p.add_argument("--beta", type=float, default=None, help="DPO beta (default: configs/dpo.py's)")
    p.add_argument("--seed", type=int, default=None, help="init and order seed (default 0)")
    p.add_argument("--reference", choices=REFERENCES, default="online",
                   help="reference log-probs: online (a reference forward in every step) or cached (precomputed)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (and pinned CPUs) for each side")
    p.add_argument("--model_dir", default="", help="HF directory of SmolLM2 (default: the 'smollm2' asset)")
    p.add_argument("--handover_every", type=int, default=4, help="optimiser steps per turn of each side")
    p.add_argument("--skip_first", type=int, default=2, help="first steps left out of the steady steps")
    p.add_argument("--trl_pad_to_multiple", type=int, default=0,
                   help="TRL batches padded to a multiple of this (0: to the longest sequence, TRL's default)")
    p.add_argument("--trl_tunables", action="store_true",
                   help="run TRL with the GLIBC_TUNABLES jaxrlhf's entry points set (default: the machine's)")
    p.add_argument("--trl_path", default=benchlib.trl_folder(TRL_VERSION),
                   help=f"folder with {TRL_REQUIREMENT}, accelerate and peft (else the installed ones)")
    p.add_argument("--skip_trl", action="store_true")
    p.add_argument("--skip_jax", action="store_true")
    p.add_argument("--install", action="store_true",
                   help=f"pip install {TRL_REQUIREMENT}, accelerate and {PEFT_REQUIREMENT} into --trl_path if missing")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"),
                   help="markdown file whose 'DPO: jaxrlhf vs TRL' section is (re)written; '' to skip")
    benchlib.add_json_arg(p)
    benchlib.apply_quick(p, argv, QUICK)
    benchlib.add_worker_args(p, ("trl", "jax", "init"))
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- the shared job

def job_config(args, model_dir: str):
    """configs/dpo.py with the flags applied; both sides read every setting from this."""
    spec = importlib.util.spec_from_file_location("_dpo_config", REPO / "jaxrlhf" / "configs" / "dpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model.name = model_dir
    config.model.dtype = config.model.param_dtype = config.model.frozen_dtype = "float32"
    config.model.dropout = config.model.attention_dropout = config.model.lora_dropout = 0.0
    if config.model.train_mode != "lora":
        raise SystemExit(f"error: this benchmark matches LoRA on both sides; configs/dpo.py trains "
                         f"{config.model.train_mode!r}")
    if config.loss.type != "sigmoid" or config.loss.label_smoothing or config.loss.sft_weight:
        raise SystemExit("error: this benchmark matches the plain sigmoid DPO loss on both sides")
    config.loss.reference_logps = args.reference
    if args.steps is not None:
        config.train.max_steps = args.steps
    if args.held_out is not None:
        config.data.eval_size = args.held_out
    if args.max_length is not None:
        config.data.max_length = args.max_length
    if args.batch_size is not None:
        config.data.batch_size = args.batch_size
    if args.lr is not None:
        config.optim.learning_rate = args.lr
    if args.beta is not None:
        config.loss.beta = args.beta
    if args.seed is not None:
        config.seed = args.seed
    # `data.limit` counts source rows before the split: ask for the training pairs plus the held-out ones.
    config.data.limit = args.limit + config.data.eval_size if args.limit else 0
    return config


def settings_text(config, steps: int) -> str:
    o, d, m = config.optim, config.data, config.model
    chat = ", chat template" if d.get("chat_template", False) else ""
    return (f"LoRA rank {m.lora_rank}, alpha {m.lora_alpha:g} on {m.lora_targets.replace('|', ', ')}; sigmoid DPO "
            f"loss, beta {config.loss.beta:g}; data {d.source} ({d.format}{chat}), max_length {d.max_length}, "
            f"{d.batch_size} pairs/step, {steps} steps, "
            f"AdamW lr {o.learning_rate:g} ({o.schedule}, {warmup_steps(o, steps)} warmup steps), weight decay "
            f"{o.weight_decay:g}, betas ({o.b1:g}, {o.b2:g}), eps {o.eps:g}, grad-norm clip {o.max_grad_norm:g}, "
            f"float32, dropout off, seed {config.seed}")


def resolve_model_dir(flag: str) -> str:
    if flag:
        return flag
    from jaxrlhf.assets import AssetNotFetchedError, resolve_model_path

    try:
        return resolve_model_path("smollm2")
    except AssetNotFetchedError:
        sys.exit("error: SmolLM2 not found: run `python -m jaxrlhf.assets fetch smollm2` or pass --model_dir")


def planned_rows(batcher, steps: int):
    """[steps, batch] training rows of jaxrlhf's batches, in its order (epoch after epoch, as `from_step`)."""
    import numpy as np

    plans, need = [], steps
    for epoch in range((steps + len(batcher) - 1) // len(batcher)):
        plans.append(batcher.plan(epoch)[:need])
        need -= len(plans[-1])
    rows = np.concatenate(plans)
    if (rows < 0).any():
        raise SystemExit("error: the planned steps include a partial batch (filler rows at weight 0, which TRL "
                         "cannot weigh): use fewer --steps or a --limit that is a multiple of the batch size")
    return rows


def batch_digest(seqs, prompt_lens) -> int:
    """crc32 of a batch's unpadded sequences (chosen rows, then rejected rows) and their prompt lengths."""
    import numpy as np

    crc = 0
    for seq, n in zip(seqs, prompt_lens):
        crc = zlib.crc32(np.asarray(seq, np.int32).tobytes(), crc)
        crc = zlib.crc32(np.int32(n).tobytes(), crc)
    return crc


def load_data(config):
    """Tokenizer, the trainer's own data (po.data.prepare) and the same split as text records."""
    from jaxrlhf.data import load_records, split_by_prompt
    from jaxrlhf.models.hub import load_tokenizer
    from jaxrlhf.po import data as po_data
    from jaxrlhf.rm import data as rm_data

    tok = load_tokenizer(config.model.name)
    data = po_data.prepare(config, tok)
    if data.suffix_len:
        raise SystemExit(f"error: the tokenizer closes sequences with {data.suffix_len} special tokens, which "
                         "jaxrlhf leaves unscored and TRL's completion mask would score")
    parsed = load_records(config.data.source, tokenizer=tok, **rm_data._load_kwargs(config.data))
    train_recs, held_recs = split_by_prompt(parsed.records, config.data.eval_size, config.data.split_seed)
    assert len(train_recs) == len(data.train) and len(held_recs) == len(data.held_out)
    return tok, data, train_recs, held_recs


# ----------------------------------------------------------------------------- TRL side

def jax_initial_lora(config) -> dict[str, dict]:
    """The LoRA factors jaxrlhf's `train(config)` starts from (its model built the same way, same seed), as
    {"LAYER.MODULE": {"lora_a": [rank, in], "lora_b": [out, rank]}}: PyTorch's Linear layout, PEFT's shapes."""
    import gc

    import jax
    import numpy as np

    from jaxrlhf.infra import sharding as shd
    from jaxrlhf.training.run_setup import load_model
    from jaxrlhf.training.trainable import split_for

    mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    loaded = load_model(config, mesh, "causal_lm")
    _, trainable, _ = split_for(loaded.model, config.model)
    out: dict[str, dict] = {}
    for path, x in jax.tree_util.tree_leaves_with_path(trainable):
        keys = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
        factor = next((k for k in keys if k in ("lora_a", "lora_b")), None)
        arr = np.asarray(x)
        if factor is None or arr.ndim != 3:
            raise SystemExit(f"error: unexpected trainable jaxrlhf parameter {'.'.join(keys)} {arr.shape} (this "
                             "benchmark expects scanned LoRA factors only)")
        module = keys[keys.index(factor) - 1]
        for layer in range(arr.shape[0]):
            out.setdefault(f"{layer}.{module}", {})[factor] = np.ascontiguousarray(arr[layer].T)
    del loaded, trainable
    gc.collect()
    return out


def run_init(args, config) -> dict:
    """The `init` worker, before the two sides start: jaxrlhf's initial LoRA factors into the spec's `out`
    (.npz), in a process of its own so that the TRL process never holds a JAX model."""
    import numpy as np

    factors = jax_initial_lora(config)
    arrays = {f"{key}/{name}": x for key, f in factors.items() for name, x in f.items()}
    np.savez(benchlib.worker_spec(args)["out"], **arrays)
    return {"tensors": len(arrays), "params": sum(int(x.size) for x in arrays.values())}


def load_initial_lora(path: str) -> dict[str, dict]:
    import numpy as np

    out: dict[str, dict] = {}
    with np.load(path) as f:
        for name in f.files:
            key, factor = name.split("/")
            out.setdefault(key, {})[factor] = f[name]
    return out


def trl_text_check(trainer, tok, encs, records, max_length: int) -> dict:
    """TRL's own tokenisation (`DPOTrainer._prepare_dataset`: EOS appended as text, prompt and prompt +
    response tokenised, the completion where they diverge) of `records` against jaxrlhf's `encs`."""
    import datasets
    from trl import DPOTrainer

    ds = datasets.Dataset.from_dict({"prompt": [r.prompt for r in records], "chosen": [r.chosen for r in records],
                                     "rejected": [r.rejected for r in records]})
    targs = copy.copy(trainer.args)
    targs.max_length = None  # no filtering: row i stays row i
    prepared = DPOTrainer._prepare_dataset(trainer, ds, tok, targs, "text check")
    out = {"pairs": len(records), "jax_truncated": 0, "untruncated_equal": 0, "untruncated_differ": 0,
           "trl_would_cut": 0}
    for i, row in enumerate(prepared):
        cut = False
        for side in ("chosen", "rejected"):
            enc, j = encs[i][side]
            trl_ids = list(row["prompt_ids"]) + list(row[f"{side}_ids"])
            cut |= len(trl_ids) > max_length
            if enc.truncated[j]:
                continue
            same = trl_ids == enc.sequence(j).tolist() and len(row["prompt_ids"]) == int(enc.prompt_len[j])
            out["untruncated_equal" if same else "untruncated_differ"] += 1
        out["trl_would_cut"] += cut
        out["jax_truncated"] += any(enc.truncated[j] for enc, j in encs[i].values())
    return out


def run_trl(args, config) -> dict:
    if benchlib.trl_in_folder(args.trl_path):  # TRL, accelerate and peft from their --target folder, this process only
        sys.path.insert(0, args.trl_path)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import datasets
    import transformers
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from jaxrlhf.rm.evaluate import summarise

    baton = benchlib.baton()
    tok, data, train_recs, held_recs = load_data(config)
    steps = config.train.max_steps
    rows = planned_rows(data.train_batcher, steps)
    init = load_initial_lora(benchlib.worker_spec(args)["lora_init"])
    train, held = data.train, data.held_out

    def example(pairs, i: int) -> dict:
        return {"row": int(i), **{f"{side}_{key}": value for side in ("chosen", "rejected")
                                  for key, value in (("input_ids", getattr(pairs, side).sequence(i).tolist()),
                                                     ("prompt_len", int(getattr(pairs, side).prompt_len[i])))}}

    train_ds = datasets.Dataset.from_list([example(train, int(i)) for i in rows.reshape(-1)])

    class PairCollator:
        """TRL's `DataCollatorForPreference` batch (chosen rows then rejected rows, right-padded to the longest
        or to `multiple`; completion_mask: the response) from sequences whose prompts may differ per side;
        while `counting`, notes each batch's rows, padded length, digest and real / padded tokens."""

        def __init__(self, pad_id: int, multiple: int = 0):
            self.pad_id, self.multiple, self.counting = pad_id, multiple, False
            self.rows, self.widths, self.digests, self.real, self.total = [], [], [], 0, 0

        def __call__(self, examples):
            seqs = [e[f"{s}_input_ids"] for s in ("chosen", "rejected") for e in examples]
            starts = [e[f"{s}_prompt_len"] for s in ("chosen", "rejected") for e in examples]
            width = max(len(s) for s in seqs)
            if self.multiple:
                width = -(-width // self.multiple) * self.multiple
            ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
            attn = torch.zeros((len(seqs), width), dtype=torch.long)
            comp = torch.zeros((len(seqs), width), dtype=torch.long)
            for j, (s, p) in enumerate(zip(seqs, starts)):
                ids[j, :len(s)] = torch.tensor(s, dtype=torch.long)
                attn[j, :len(s)] = 1
                comp[j, p:len(s)] = 1
            out = {"input_ids": ids, "attention_mask": attn, "completion_mask": comp}
            for key in ("ref_chosen_logps", "ref_rejected_logps"):
                if key in examples[0]:
                    out[key] = torch.tensor([e[key] for e in examples])
            if self.counting:
                self.rows.append([e["row"] for e in examples])
                self.widths.append(width)
                self.digests.append(batch_digest(seqs, starts))
                self.real += int(attn.sum())
                self.total += int(attn.numel())
            return out

    class PretokenisedDPOTrainer(DPOTrainer):
        """DPOTrainer on rows that already hold token ids (TRL 1.16 has no such path: it would tokenise text),
        noting each training step's loss as TRL computes it."""

        step_losses: list[float] = []

        def _prepare_dataset(self, dataset, processing_class, args_, dataset_name):
            if "chosen_input_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args_, dataset_name)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                self.step_losses.append(float((loss[0] if return_outputs else loss).detach()))
            return loss

    class StepClock(TrainerCallback):
        """Each step's learning rate (on_step_begin), its end on the held clock once its metrics are logged
        (on_log, every step: torch on CPU is synchronous, the step has finished) and its grad norm; hands the
        baton over every `--handover_every` steps."""

        def on_train_begin(self, args_, state, control, **kw):
            self.t0, self.ends, self.lrs, self.grad_norms = baton.clock(), [], [], []
            self.threads = torch.get_num_threads()
            collator.counting = True

        def on_step_begin(self, args_, state, control, lr_scheduler=None, **kw):
            self.lrs.append(float(lr_scheduler.get_last_lr()[0]))

        def on_log(self, args_, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:  # the summary log after training
                return
            self.ends.append(baton.clock())
            self.grad_norms.append(logs.get("grad_norm"))
            if state.global_step % args.handover_every == 0:
                baton.pass_on()

    o, m = config.optim, config.model
    transformers.set_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(config.model.name, dtype=torch.float32)
    peft_config = LoraConfig(r=m.lora_rank, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                             target_modules=m.lora_targets.split("|"), bias="none", task_type="CAUSAL_LM")
    collator, clock = PairCollator(tok.pad_token_id, args.trl_pad_to_multiple), StepClock()
    targs = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_dpo_trl_"), per_device_train_batch_size=config.data.batch_size,
        max_steps=steps, learning_rate=o.learning_rate, lr_scheduler_type=SCHEDULES_HF[o.schedule],
        warmup_steps=warmup_steps(o, steps), weight_decay=o.weight_decay, adam_beta1=o.b1, adam_beta2=o.b2,
        adam_epsilon=o.eps, max_grad_norm=o.max_grad_norm, gradient_accumulation_steps=1,
        beta=config.loss.beta, loss_type="sigmoid", max_length=config.data.max_length,
        precompute_ref_log_probs=args.reference == "cached", precompute_ref_batch_size=config.data.batch_size,
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, disable_dropout=True,
        remove_unused_columns=False, train_sampling_strategy="sequential", report_to="none", eval_strategy="no",
        save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, seed=config.seed,
        data_seed=config.seed)
    trainer = PretokenisedDPOTrainer(model=model, args=targs, train_dataset=train_ds, processing_class=tok,
                                     data_collator=collator, callbacks=[clock], peft_config=peft_config)
    trainer.step_losses = []
    trainer.remove_callback(PrinterCallback)  # its line per logged step: console noise only

    # jaxrlhf's initial adapters into PEFT's (B is zero on both sides: the starting policy is the base model).
    pattern = re.compile(r"layers\.(\d+)\.\w+\.(\w+)\.lora_([AB])\.default\.weight$")
    copied, trl_trainable = 0, 0
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if not p.requires_grad:
                continue
            found = pattern.search(name)
            want = init.get(f"{found[1]}.{found[2]}", {}).get("lora_" + found[3].lower()) if found else None
            if want is None or tuple(p.shape) != want.shape:
                raise SystemExit(f"error: TRL's trainable {name} {tuple(p.shape)} has no jaxrlhf counterpart")
            p.copy_(torch.from_numpy(want))
            copied, trl_trainable = copied + 1, trl_trainable + p.numel()
    jax_trainable = sum(int(x.size) for f in init.values() for x in f.values())
    if copied != sum(len(f) for f in init.values()) or trl_trainable != jax_trainable:
        raise SystemExit(f"error: trainable parameters differ: TRL {trl_trainable:,} in {copied} tensors, "
                         f"jaxrlhf {jax_trainable:,}")

    encs = lambda pairs, idx: [{"chosen": (pairs.chosen, int(i)), "rejected": (pairs.rejected, int(i))} for i in idx]
    used = sorted(set(rows.reshape(-1).tolist()))
    check = trl_text_check(trainer, tok, encs(train, used) + encs(held, range(len(held))),
                           [train_recs[i] for i in used] + list(held_recs), config.data.max_length)

    t_call = baton.clock()
    out = trainer.train()
    t_call = baton.clock() - t_call
    if len(clock.ends) != steps:
        raise SystemExit(f"error: TRL logged {len(clock.ends)} steps, not {steps}")
    if collator.rows[:steps] != rows.tolist():
        raise SystemExit("error: TRL's batches are not jaxrlhf's planned rows")
    ends = clock.ends

    # Held-out: the same pairs jaxrlhf scores, TRL's own log-prob forward, policy and adapters-off reference.
    model = trainer.model.eval()
    scorer = PairCollator(tok.pad_token_id)
    logps = {k: [] for k in ("pc", "pr", "rc", "rr")}
    for start in range(0, len(held), data.eval_batch_size):
        inputs = scorer([example(held, i) for i in range(start, min(start + data.eval_batch_size, len(held)))])
        with torch.no_grad():
            labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
            policy = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
                           fused_lm_head=True, use_cache=False).log_probs
            pol = policy[:, -(inputs["completion_mask"].shape[1] - 1):].sum(dim=1).chunk(2)
            ref = trainer.compute_ref_log_probs(model, inputs)
        for key, x in zip(("pc", "pr", "rc", "rr"), (*pol, *ref)):
            logps[key].append(x.double().numpy())
    lp = {k: np.concatenate(v) for k, v in logps.items()}
    beta = config.loss.beta
    rewards = {"chosen": beta * (lp["pc"] - lp["rc"]), "rejected": beta * (lp["pr"] - lp["rr"]),
               "chosen_len": held.chosen.response_len.astype(np.float64),
               "rejected_len": held.rejected.response_len.astype(np.float64)}
    summary = summarise(rewards)
    summary.update(loss=float(np.mean(np.logaddexp(0.0, -(rewards["chosen"] - rewards["rejected"])))),
                   logp_chosen=float(np.mean(lp["pc"])), logp_rejected=float(np.mean(lp["pr"])),
                   ref_logp_chosen=float(np.mean(lp["rc"])))
    durs = [e - s for s, e in zip([clock.t0] + ends[:-1], ends)]
    return {"backend": f"TRL {TRL_VERSION} DPOTrainer + PEFT LoRA (PyTorch)", "durations": durs,
            "widths": collator.widths[:steps], "digests": collator.digests[:steps],
            "losses": trainer.step_losses[:steps], "lrs": clock.lrs[:steps], "grad_norms": clock.grad_norms[:steps],
            "held_out": summary, "padding_efficiency": collator.real / max(collator.total, 1),
            "trainable": trl_trainable, "train_call_s": t_call,
            "trl_train_runtime_s": out.metrics.get("train_runtime"), "text_check": check,
            "optimizer": type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__,
            "optim_name": getattr(targs.optim, "value", str(targs.optim)), "torch_threads": clock.threads,
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "versions": benchlib.versions("torch", "transformers", "trl", "peft", "accelerate", "datasets")}


# ----------------------------------------------------------------------------- jaxrlhf side

class _StepClock:
    """A hook of the trainer's loop (`train(config, hooks=...)`): per step, when it ended on the held clock
    (with `log_every=1` every step's metrics are on the host before the hook runs: the device is synchronised),
    its seconds from asking for its batch, padded length, loss, learning rate, grad norm and batch digest; hands
    the baton over every `every` steps."""

    def __init__(self, every: int, suffix_len: int = 0):
        self.rows: list[dict] = []
        self.every, self.suffix_len, self.baton = every, suffix_len, benchlib.baton()

    def __call__(self, done: int, batch: dict, metrics: dict, seconds: float) -> None:
        import numpy as np

        end = self.baton.clock()
        seqs, starts = [], []
        if "shared_ids_BxT" in batch:  # one row a pair: prompt, chosen, rejected (data.shared_prompt)
            ids, part = np.asarray(batch["shared_ids_BxT"]), np.asarray(batch["shared_part_BxT"])
            for k in (1, 2):
                for j in range(ids.shape[0]):
                    prompt = ids[j][part[j] == 0]
                    seqs.append(np.concatenate([prompt, ids[j][part[j] == k]]))
                    starts.append(len(prompt))
            real, total = int(np.sum(part >= 0)), ids.size
        else:
            for side in ("chosen", "rejected"):
                ids, mask, lens = (np.asarray(batch[f"{side}_{k}"]) for k in ("ids_BxT", "mask_BxT", "len_B"))
                for j in range(ids.shape[0]):
                    seq = ids[j][mask[j] > 0]
                    seqs.append(seq)
                    starts.append(len(seq) - int(lens[j]) - self.suffix_len)
            real, total = sum(len(x) for x in seqs), 2 * ids.size
        scalar = lambda k: float(np.asarray(metrics[k])) if k in metrics else None
        self.rows.append({"end": end, "seconds": seconds, "width": int(ids.shape[1]),
                          "loss": scalar("loss_sum") / max(scalar("denom") or 1.0, 1.0), "lr": scalar("learning_rate"),
                          "grad_norm": scalar("grad_norm"), "weight": float(np.sum(batch["weight_B"])),
                          "real": real, "total": total, "digest": batch_digest(seqs, starts)})
        if done % self.every == 0:
            self.baton.pass_on()


def run_jax(args, config) -> dict:
    from jaxrlhf.train_dpo import train

    workdir = Path(tempfile.mkdtemp(prefix="bench_dpo_jax_"))
    config.workdir = str(workdir)
    config.train.log_every = 1               # every step synchronised before the clock's hook runs
    config.train.eval_every = 10 ** 9        # no evaluation inside the timed loop
    config.train.checkpoint_every = 10 ** 9  # only the final save (after the last step's hook)
    config.train.resume = False
    config.train.export = False
    clock = _StepClock(args.handover_every)
    t_call = clock.baton.clock()
    summary = train(config, hooks=[clock])
    t_call = clock.baton.clock() - t_call
    if "accuracy" not in summary:
        raise SystemExit(f"error: jaxrlhf training did not finish: {summary}")
    r = clock.rows
    ends = [x["end"] for x in r]
    durs = [e - s for s, e in zip([ends[0] - r[0]["seconds"]] + ends[:-1], ends)]
    widths = [x["width"] for x in r]
    compile_steps = sorted({w: i for i, w in reversed(list(enumerate(widths)))}.values())
    padding = sum(x["real"] for x in r) / max(sum(x["total"] for x in r), 1)
    return {"backend": "jaxrlhf (JAX/Flax NNX, LoRA)", "durations": durs, "widths": widths,
            "digests": [x["digest"] for x in r], "losses": [x["loss"] for x in r], "lrs": [x["lr"] for x in r],
            "grad_norms": [x["grad_norm"] for x in r], "compile_steps": compile_steps,
            "pairs": sum(x["weight"] for x in r), "held_out": summary, "padding_efficiency": padding,
            "train_call_s": t_call, "jax_train_seconds": summary.get("train_seconds"),
            "jax_pairs_per_s": summary.get("pairs_per_s"), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "versions": benchlib.versions("jax", "jaxlib", "flax", "optax")}


# ----------------------------------------------------------------------------- report

def step_stats(durs: list[float], steady: list[int], every: int, pairs: int) -> dict:
    """steps/s over all steps and over the `steady` ones; per turn (steps [k*every, (k+1)*every)) over its
    steady steps: the best and the median turn."""
    total = sum(durs)
    t = sum(durs[i] for i in steady)
    turns: dict[int, list[float]] = {}
    for i in steady:
        turns.setdefault(i // every, []).append(durs[i])
    rates = [len(v) / sum(v) for v in turns.values() if sum(v) > 0]
    nan = float("nan")
    return {"steps": len(durs), "steady_steps": len(steady), "train_s": total, "steady_s": t,
            "steps_per_s_all": len(durs) / total if total > 0 else nan,
            "steps_per_s": len(steady) / t if t > 0 else nan, "pairs_per_s": pairs * len(steady) / t if t > 0 else nan,
            "best_turn": max(rates, default=nan), "median_turn": statistics.median(rates) if rates else nan,
            "turn_steps_per_s": rates, "first_step_s": durs[0] if durs else nan,
            "median_step_s": statistics.median([durs[i] for i in steady]) if steady else nan}


def compile_estimate(durs: list[float], widths: list[int], compile_steps: list[int], steady: list[int]) -> float:
    """jaxrlhf's compile steps' time above a steady step of the same padded length (the steady median when
    no steady step has it)."""
    by_width: dict[int, list[float]] = {}
    for i in steady:
        by_width.setdefault(widths[i], []).append(durs[i])
    typical = statistics.median([durs[i] for i in steady]) if steady else 0.0
    return sum(max(durs[i] - statistics.median(by_width.get(widths[i], [typical])), 0.0) for i in compile_steps)


def analyse(results: dict[str, dict], args, config) -> dict:
    """The steady steps both sides share, each side's stats over them, and the cross-checks."""
    steps = config.train.max_steps
    compile_steps = results["jax"]["compile_steps"] if "jax" in results else []
    steady = [i for i in range(steps) if i >= args.skip_first and i not in compile_steps]
    pairs = config.data.batch_size
    out = {"steady": steady, "stats": {}}
    for side, r in results.items():
        out["stats"][side] = step_stats(r["durations"], steady, args.handover_every, pairs)
    if "jax" in results:
        jx = results["jax"]
        out["compile_s"] = compile_estimate(jx["durations"], jx["widths"], compile_steps, steady)
    if len(results) == 2:
        jx, tr = results["jax"], results["trl"]
        out["digests_equal"] = sum(a == b for a, b in zip(jx["digests"], tr["digests"]))
        dl = [abs(a - b) for a, b in zip(jx["losses"], tr["losses"])]
        dlr = [abs(a - b) for a, b in zip(jx["lrs"], tr["lrs"])]
        dg = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(jx["grad_norms"], tr["grad_norms"])
              if a is not None and b is not None]
        out.update(max_loss_diff=max(dl, default=float("nan")), max_lr_diff=max(dlr, default=float("nan")),
                   max_grad_norm_rel=max(dg, default=float("nan")))
    return out


def headline(a: dict) -> dict:
    jx, tr = a["stats"]["jax"], a["stats"]["trl"]
    overall = jx["steps_per_s"] / tr["steps_per_s"]
    return {"name": f"DPO training steps/s vs TRL {TRL_VERSION} DPOTrainer (LoRA)",
            "best": jx["best_turn"] / tr["best_turn"], "median": jx["median_turn"] / tr["median_turn"],
            "overall": overall,
            "detail": f"jaxrlhf {fmt(jx['steps_per_s'], 3)} vs TRL {fmt(tr['steps_per_s'], 3)} steps/s over the "
                      f"{len(a['steady'])} steady steps ({benchlib.ratio_text(overall)})"}


def step_table(results: dict[str, dict], a: dict) -> list[str]:
    """Every step side by side: padded length, seconds, loss, learning rate."""
    jx, tr = results.get("jax"), results.get("trl")
    n = max(len(r["durations"]) for r in results.values())
    get = lambda r, k, i, d=4: fmt(r[k][i], d) if r is not None and i < len(r[k]) and r[k][i] is not None else "-"
    rows = []
    for i in range(n):
        rows.append([i + 1, "yes" if i in a["steady"] else "", get(jx, "widths", i), get(tr, "widths", i),
                     get(jx, "durations", i, 2), get(tr, "durations", i, 2), get(jx, "losses", i, 5),
                     get(tr, "losses", i, 5), f"{jx['lrs'][i]:.3g}" if jx else "-",
                     f"{tr['lrs'][i]:.3g}" if tr else "-"])
    return benchlib.table(["step", "steady", "T jaxrlhf", "T TRL", "jaxrlhf s", "TRL s", "loss jaxrlhf", "loss TRL",
                           "lr jaxrlhf", "lr TRL"], rows)


def render(results: dict[str, dict], a: dict, args, argv: list[str], config, mach: dict, timing: dict) -> str:
    cmd = benchlib.command_line("scripts/bench_dpo.py", argv)
    steps = config.train.max_steps
    versions = {"python": platform.python_version()}
    for r in results.values():
        versions.update(r["versions"])
    lines = [MARK_START, TITLE, "", *benchlib.quick_note(args, QUICK)]
    if args.limit and not args.quick:
        lines += [f"**Validation run on a subset (`--limit {args.limit}`): not a benchmark result.**", ""]
    ref = ("online: both sides run the adapters-off reference forward in every step" if args.reference == "online"
           else "cached: both sides precompute the reference log-probs before training")
    lines += [
        "Same job on both sides (`configs/dpo.py`): SmolLM2-135M-Instruct with the same LoRA adapters (TRL: PEFT; "
        "TRL's initial A matrices set to jaxrlhf's, B zero), sigmoid DPO against the adapters-off model, on the "
        "shipped HH-RLHF harmless comparisons split by prompt as jaxrlhf splits them, with the same token ids, the "
        f"same batches in the same order, the same optimiser and schedule, float32 and {args.threads} threads. "
        f"Reference log-probs {ref}. The two sides ran at the same time in two processes taking turns, "
        f"{args.handover_every} optimiser steps a turn (only one computes at any moment). Held-out implicit-reward "
        "accuracy: beta * (log p - log p_ref) of chosen > rejected on the same held-out pairs after the same "
        "steps, ties wrong.",
        "",
    ]
    rows = []
    for side in ("trl", "jax"):
        if side not in results:
            continue
        r, s, h = results[side], a["stats"][side], results[side]["held_out"]
        n = len(r.get("compile_steps", []))
        comp = f"{fmt(a['compile_s'])} ({n} step{'s' * (n != 1)})" if side == "jax" else "-"
        rows.append([r["backend"], fmt(s["steps_per_s"], 3), fmt(s["best_turn"], 3), fmt(s["median_turn"], 3),
                     fmt(s["pairs_per_s"], 2), fmt(s["steps_per_s_all"], 3), fmt(h["accuracy"], 4),
                     fmt(h["loss"], 4), fmt(h["mean_margin"], 4), h["n"], f"{s['steady_steps']} of {s['steps']}",
                     fmt(s["train_s"]), fmt(s["first_step_s"], 2), comp,
                     fmt(r.get("padding_efficiency"), 2)])
    lines += benchlib.table(
        ["backend", "steps/s (steady)", "best turn", "median turn", "pairs/s (steady)", "steps/s (all steps)",
         "held-out accuracy", "held-out loss", "mean margin", "n held out", "steady steps", "train s",
         "1st step s", "compile s (est.)", "padding efficiency"], rows)
    lines += [""]
    if len(results) == 2:
        h = headline(a)
        jx, tr = results["jax"], results["trl"]
        lines += [
            f"- jaxrlhf / TRL steps/s: **{benchlib.ratio_text(h['overall'])}** over the {len(a['steady'])} steady "
            f"steps (steps {', '.join(str(i + 1) for i in a['steady'])}), {benchlib.ratio_text(h['best'])} best "
            f"turn, {benchlib.ratio_text(h['median'])} median turn; held-out accuracy jaxrlhf "
            f"{fmt(jx['held_out']['accuracy'], 4)} vs TRL {fmt(tr['held_out']['accuracy'], 4)} "
            f"({jx['held_out']['n']} pairs). Turns: {timing['turns']}.",
            f"- Same batches: {a['digests_equal']} of {steps} steps with equal ids and prompt lengths (crc32 of "
            f"each batch's unpadded sequences). Per-step training loss: max |jaxrlhf - TRL| "
            f"{a['max_loss_diff']:.2e}; learning rate: max difference {a['max_lr_diff']:.2e}; grad norm "
            f"(before clipping): max relative difference {a['max_grad_norm_rel']:.2e}. Held-out mean log p(chosen) "
            f"of the trained policy: jaxrlhf {fmt(jx['held_out'].get('logp_chosen'), 3)}, TRL "
            f"{fmt(tr['held_out'].get('logp_chosen'), 3)}. Trainable parameters: {tr['trainable']:,} on both.",
        ]
    lines += [f"- Settings: {settings_text(config, steps)}."]
    if "trl" in results:
        r = results["trl"]
        c = r["text_check"]
        lines.append(
            f"- TRL input check (the {c['pairs']} train pairs used and the held-out pairs): of the sequences jaxrlhf "
            f"did not truncate, {c['untruncated_equal']} equal TRL's own tokenisation of the text "
            f"(`DPOTrainer._prepare_dataset`: prompt, prompt + response + EOS, completion split) and "
            f"{c['untruncated_differ']} differ; jaxrlhf cut {c['jax_truncated']} pairs to "
            f"{config.data.max_length} tokens from the prompt's start, which TRL's own path would cut at the "
            f"response's end instead ({c['trl_would_cut']} pairs over {config.data.max_length} tokens).")
        padded = (f"a multiple of {args.trl_pad_to_multiple}" if args.trl_pad_to_multiple
                  else "the longest sequence")
        lines.append(f"- TRL: optimizer {r['optimizer']} (`optim={r['optim_name']}`), torch {r['torch_threads']} "
                     f"threads, each batch padded to {padded}, `GLIBC_TUNABLES={r.get('glibc_tunables') or 'unset'}`"
                     f"; its own `train_runtime` {fmt(r['trl_train_runtime_s'])} s (wall time: includes setup and "
                     "the other side's turns).")
    if "jax" in results:
        r = results["jax"]
        lines.append(
            f"- jaxrlhf pads each batch to a multiple of {config.data.pad_to_multiple} ({len(set(r['widths']))} "
            f"shape(s): {sorted(set(r['widths']))}, each compiled at its first step, step(s) "
            f"{', '.join(str(i + 1) for i in r['compile_steps'])}); `train()` itself reported "
            f"{fmt(r.get('jax_train_seconds'))} s (wall time, includes the other side's turns) and "
            f"{fmt(r.get('jax_pairs_per_s'), 2)} pairs/s after its first step. It ran with "
            f"`GLIBC_TUNABLES={r.get('glibc_tunables') or 'unset'}` (what its entry points set).")
    lines += [
        "- Train s: start of the step loop to the end of the last optimiser step on a clock that stops while the "
        "side waits for its turn (loading, tokenising, the reference precompute, checkpointing and evaluation "
        f"excluded). Steady steps: the same step numbers on both sides, all but the first {args.skip_first} and "
        "jaxrlhf's compile steps; compile s = those steps' time above a steady step of the same length. Best / "
        "median turn: the steps/s of each turn's steady steps (the same batches on both sides).",
        f"- Command: `{cmd}`",
        f"- {benchlib.machine_line(mach)} {args.threads} threads and CPUs per side, the sides taking turns.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- Date: {mach['date']}",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


def ensure_trl(args) -> None:
    """TRL, accelerate and peft from --trl_path (a `pip install --no-deps --target` folder), else installed."""
    found = benchlib.trl_in_folder(args.trl_path)
    if found and found != TRL_VERSION:
        print(f"warning: {args.trl_path} holds trl {found}, not the pinned {TRL_VERSION}")
    def has(pkg: str) -> bool:
        return (Path(args.trl_path) / pkg).is_dir() or importlib.util.find_spec(pkg) is not None

    missing = [req for pkg, req in (("trl", TRL_REQUIREMENT), ("accelerate", "accelerate"),
                                    ("peft", PEFT_REQUIREMENT)) if not has(pkg)]
    if not missing:
        return
    install = f"pip install --no-deps --target {args.trl_path} {' '.join(missing)}"
    if not args.install:
        sys.exit(f"error: {', '.join(missing)} not installed: `{install}` (or rerun with --install, or --skip_trl)")
    subprocess.check_call([sys.executable, "-m", *install.split()])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args._worker:
        benchlib.baton()  # first: nothing of this side runs outside its turns
        pin_cpus(args.threads)
        config = job_config(args, args.model_dir)
        result = {"trl": run_trl, "jax": run_jax, "init": run_init}[args._worker](args, config)
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
    if config.train.max_steps < 1:
        sys.exit("error: --steps must be at least 1")
    argv_model = [*argv, "--model_dir", model_dir]  # "--model_dir" after argv: the last one wins
    lora_init = str(Path(tempfile.mkdtemp(prefix="bench_dpo_init_")) / "lora_init.npz")
    # jaxrlhf runs with the malloc tunable its own entry points set (jaxrlhf.infra.host_memory); TRL runs as its
    # users run it, unless --trl_tunables.
    tuned = host_memory.entry_point_env(os.environ)
    sides = [benchlib.Side(SIDES[name], name, argv_model, spec={"lora_init": lora_init} if name == "trl" else None,
                           env=tuned if name == "jax" or args.trl_tunables else dict(os.environ))
             for name, skip in (("trl", args.skip_trl), ("jax", args.skip_jax)) if not skip]
    try:
        if not args.skip_trl:
            benchlib.run_worker(__file__, argv_model, "init", {"out": lora_init}, echo=True, label="LoRA init")
        by_label = benchlib.run_in_turns(__file__, sides, echo=True)
    except benchlib.WorkerFailed as e:
        print(f"== {e}", flush=True)
        print(f"not writing {args.out or 'a file'}")
        return 1
    finally:
        shutil.rmtree(Path(lora_init).parent, ignore_errors=True)
    results = {r["side"]: r for r in by_label.values()}
    a = analyse(results, args, config)
    mach = benchlib.machine_description(start)
    timing = {"turns": benchlib.turns_text({SIDES[r["side"]]: r for r in by_label.values()})}
    print("\nPer step (steady: in the steps/s columns):\n" + "\n".join(step_table(results, a)))
    section = render(results, a, args, argv, config, mach, timing)
    print("\n" + section)
    benchlib.write_section(args.out, section, MARK_START, MARK_END)
    if len(results) == 2:
        head = headline(a)
        benchlib.print_headline(head, " turn")
        benchlib.write_json(args.json, "dpo", args, benchlib.command_line("scripts/bench_dpo.py", argv), mach, head,
                            jaxrlhf=results["jax"], trl=results["trl"], analysis=a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
