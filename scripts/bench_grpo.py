"""GRPO benchmark: the wall time of one GRPO iteration, jaxrlhf `train_grpo.train` vs TRL's GRPOTrainer, in one run.

    python -m jaxrlhf.assets fetch smollm2
    pip install --no-deps --target /tmp/trl116 trl==1.16.0 accelerate   # TRL's side only (pin: benchlib.py)
    python scripts/bench_grpo.py                                        # full job, writes docs/benchmarks.md
    python scripts/bench_grpo.py --quick                                # same iteration, 2 timed per side
    python scripts/bench_grpo.py --prompts 2 --group 2 --new 4 --iters 2 --out ''   # smoke test

TRL's side runs TRL 1.16.0's `trl.GRPOTrainer` (transformers `model.generate` on the CPU, no vLLM), imported
from `--trl_path` (a `pip install --no-deps --target` folder, put on `sys.path` of the TRL subprocess only;
the main environment is not touched), with `accelerate` in the same folder; the installed transformers 5 is
used as it is. It is the pin bench_rm and bench_dpo use (`benchlib.TRL_REWARD_VERSION`).

The job, identical on both sides:

- policy SmolLM2-135M-Instruct (the asset fetcher's HF directory), full fine-tuning, float32; beta 0, so no
  reference model is loaded or run on either side;
- prompts: the arithmetic task of `configs/grpo_arithmetic.py` (`jaxrlhf.rl.arithmetic.problems`, seed 0),
  rendered with the chat template; each iteration takes `--prompts` of them, in the order jaxrlhf's
  `train()` draws its batches, left-padded to `--prompt_len` tokens; TRL gets the same prompts in the same
  order (`shuffle_dataset=False`) and the script checks that its tokenisation gives the same ids and that its
  padded prompts are exactly `--prompt_len` wide;
- `--group` samples per prompt at temperature `--temperature`, exactly `--new` tokens each, no stop token on
  either side (jaxrlhf `sampling.ignore_eos`; TRL: no `eos_token_id` in its generation config nor in the
  model's, which transformers would otherwise fill in, and no completion cut at the first EOS afterwards;
  the script checks every completion's length);
- reward: `jaxrlhf.rl.verifiable.exact_match` on both sides (TRL's `reward_funcs` calls it with the row's
  answer); group advantages (r - mean) / (std + 1e-4), std unbiased over the group, on both;
- one optimiser step per iteration over all `--prompts` x `--group` completions (jaxrlhf: one minibatch of
  them, one epoch; TRL: `per_device_train_batch_size` = all of them, `gradient_accumulation_steps=1`,
  `steps_per_generation=1`, `num_iterations=1`: each step generates once and updates once), the clipped
  surrogate with clip 0.2 (the ratio is 1: both sides take the old log-probs from the same forward pass,
  gradient stopped, rather than a second pass), each response's token mean averaged over the responses
  (jaxrlhf `grpo.loss_aggregation=seq_mean_token_mean`, TRL `loss_type="grpo"`), no dynamic sampling,
  gradient-norm clipping at 1.0 and AdamW at `--lr` (constant, no weight decay).

What each side computes per iteration is listed in the doc section (`render`).

Timing as `scripts/bench_ppo.py` times: each side in its own subprocess, both started at once, taking turns
iteration by iteration (`benchlib.run_in_turns`), so only one side computes at any moment and a drift of the
machine's speed hits both alike. Each side's first turn also holds its imports and model loading. jaxrlhf:
`train(config, hooks=...)` from `jaxrlhf.train_grpo`, whose loop hook hands the baton over after each
iteration; `grpo/iteration_seconds` from its metrics.jsonl (sampling through the update, synchronised by the
metrics read-back). TRL: a `TrainerCallback` whose `on_step_end` hands the baton over; the time between
consecutive `on_step_end` callbacks (the first from `on_train_begin`) on a clock that stops while the side
waits (`Baton.clock`). The first iteration of each side is a warm-up (jaxrlhf compiles in it) and is not in
best / median. Generation time: jaxrlhf's `grpo/sample_seconds` (the sampling call through decoding its
texts); TRL's, by wrapping its `_generate` (tokenising, `model.generate`, decoding). `--quick` keeps the
iteration and times fewer of them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib  # first: puts this checkout on sys.path
from benchlib import REPO

from jaxrlhf.infra import host_memory  # light: no JAX import

MARK_START = "<!-- bench_grpo:start (written by scripts/bench_grpo.py; rerun it rather than editing) -->"
MARK_END = "<!-- bench_grpo:end -->"
TITLE = "## GRPO iteration: jaxrlhf vs TRL"
TRL_VERSION = benchlib.TRL_REWARD_VERSION  # current TRL: GRPOTrainer, GRPOConfig
QUICK = {"iters": 2}  # the same iteration, fewer of them
SIDES = {"jax": "jaxrlhf", "trl": "TRL"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policy", default="smollm2", help="asset alias or HF Llama-family directory")
    p.add_argument("--prompts", type=int, default=8, help="prompts per iteration")
    p.add_argument("--group", type=int, default=8, help="samples per prompt (G)")
    p.add_argument("--prompt_len", type=int, default=64, help="prompt tokens after left padding (configs/"
                   "grpo_arithmetic.py's width; every arithmetic prompt fits)")
    p.add_argument("--new", type=int, default=16, help="tokens sampled per completion")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per side, after one warm-up")
    p.add_argument("--lr", type=float, default=1e-6, help="learning rate (constant)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on TRL's side")
    p.add_argument("--trl_path", default=benchlib.trl_folder(TRL_VERSION),
                   help=f"folder with {benchlib.trl_requirement(TRL_VERSION)} (and accelerate): "
                   f"{benchlib.trl_install_command(TRL_VERSION)}")
    p.add_argument("--commit", default="", help="benchmark jaxrlhf as committed at this git revision (extracted with "
                   "`git archive` into a temp folder) instead of the working tree")
    p.add_argument("--skip_trl", action="store_true")
    p.add_argument("--skip_jax", action="store_true")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"), help="markdown file to update ('' : none)")
    benchlib.add_json_arg(p)
    benchlib.apply_quick(p, argv, QUICK)
    benchlib.add_worker_args(p, ("jax", "trl"))
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- shared job

def policy_dir(name: str) -> str:
    from jaxrlhf.models.hf_files import resolve_model_dir

    return str(resolve_model_dir(name, None))


def jax_config(args, workdir: str):
    """configs/grpo_arithmetic.py set to the benchmark job; the TRL side reads the same numbers from `args`."""
    from jaxrlhf.configs.grpo_arithmetic import get_config

    c = get_config()
    c.workdir = workdir
    c.policy.name = args.policy
    c.policy.dtype = "float32"
    c.data.max_prompt_length = args.prompt_len
    c.data.pad_to_multiple = args.prompt_len  # every batch exactly prompt_len wide
    c.sampling.max_new_tokens = args.new
    c.sampling.temperature = args.temperature
    c.sampling.ignore_eos = True  # exactly `new` tokens per completion, as on TRL's side
    c.rewards.functions = "exact_match"
    g = c.grpo
    g.algorithm = "grpo"
    g.group_size = args.group
    g.rollout_batch_size = args.prompts
    g.minibatch_size = args.prompts * args.group  # one update over the whole rollout, as TRL's one step
    g.epochs = 1
    g.scale_by_std = True           # TRL scale_rewards="group"
    g.kl_coef = 0.0                 # TRL beta=0.0: no reference model
    g.clip_eps, g.clip_eps_high = 0.2, 0.0  # TRL epsilon=0.2, epsilon_high=None (= epsilon)
    g.loss_aggregation = "seq_mean_token_mean"  # TRL loss_type="grpo"
    g.dynamic_sampling = False      # TRL keeps all-equal groups' tokens in the denominator
    c.actor_optim.learning_rate = args.lr
    c.train.iterations = args.iters + 1
    c.train.log_every = 1
    c.train.checkpoint_every = 10 ** 9
    c.train.eval_every = 0  # no held-out greedy evaluation: it is not part of an iteration
    c.train.sample_every = 0
    c.train.export = False
    return c


def prompt_batches(args) -> list[list[dict]]:
    """The prompt batches jaxrlhf's train() draws for iterations 0..iters (same library calls, same config), each
    prompt as its chat messages, its answer and its unpadded token ids."""
    from jaxrlhf.models.hub import load_tokenizer
    from jaxrlhf.rl import group_setup

    c = jax_config(args, "")
    prompts, _ = group_setup.build_prompts(c, load_tokenizer(policy_dir(args.policy)))
    out = []
    for it in range(args.iters + 1):
        b = prompts.batch(it)
        assert b["ids_BxP"].shape == (args.prompts, args.prompt_len), b["ids_BxP"].shape
        out.append([{"messages": [{"role": r, "content": t} for r, t in p.messages], "answer": row["answer"],
                     "ids": [int(i) for i, m in zip(ids, mask) if m]}
                    for p, row, ids, mask in zip(b["prompts"], b["rows"], b["ids_BxP"], b["mask_BxP"])])
    return out


# ----------------------------------------------------------------------------- workers

def jax_worker(args, spec: dict) -> dict:
    import shutil

    import jaxrlhf.train_grpo as tg

    print(f"jaxrlhf: {Path(tg.__file__).parent}", flush=True)
    workdir = tempfile.mkdtemp(prefix="bench_grpo_jax_")
    config = jax_config(args, workdir)
    baton = benchlib.baton()
    t = baton.clock()
    # the loop calls its hooks after each iteration's metrics are read back: the device is idle at the hand-over
    tg.train(config, hooks=(lambda *_: baton.pass_on(),))
    total = baton.clock() - t
    rows = [json.loads(line) for line in open(Path(workdir) / "metrics.jsonl")]
    rows = [r for r in rows if "grpo/iteration_seconds" in r]
    assert len(rows) == args.iters + 1, len(rows)
    shutil.rmtree(workdir, ignore_errors=True)
    return dict(iteration=[r["grpo/iteration_seconds"] for r in rows],
                generate=[r["grpo/sample_seconds"] for r in rows],
                response_length=[r["grpo/response_length"] for r in rows],
                reward=[r["grpo/reward_mean"] for r in rows],
                updates=[r["grpo/minibatch_updates"] for r in rows], total=total,
                versions=benchlib.versions_text("jax", "flax"))


def trl_worker(args, spec: dict) -> dict:
    sys.path.insert(0, args.trl_path)
    import torch
    import transformers
    from datasets import Dataset

    torch.set_num_threads(args.threads)
    import trl
    import trl.trainer.grpo_trainer as grpo_mod
    from trl import GRPOConfig, GRPOTrainer

    from jaxrlhf.rl.verifiable import exact_match  # light: no JAX import

    assert trl.__version__ == TRL_VERSION, (trl.__version__, trl.__file__)
    G, width = args.group, args.prompt_len
    src = policy_dir(args.policy)
    tok = transformers.AutoTokenizer.from_pretrained(src, padding_side="left")
    batches = spec["batches"]
    rows = [r for b in batches for r in b]
    expected = {r["messages"][-1]["content"]: r["ids"] for r in rows}  # the arithmetic prompts are distinct
    dataset = Dataset.from_dict({"prompt": [r["messages"] for r in rows], "answer": [r["answer"] for r in rows]})

    def exact_match_reward(prompts, completions, answer, **_):
        return [exact_match(p[-1]["content"], c[-1]["content"], {"answer": a})
                for p, c, a in zip(prompts, completions, answer)]

    exact_match_reward.__name__ = "exact_match"

    policy = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)

    out_dir = tempfile.mkdtemp(prefix="bench_grpo_trl_")
    cfg = GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=args.prompts * G, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1, num_generations=G, max_completion_length=args.new,
        temperature=args.temperature, top_p=1.0, top_k=0, generation_kwargs={"eos_token_id": None},
        beta=0.0, epsilon=0.2, loss_type="grpo", scale_rewards="group", mask_truncated_completions=False,
        shuffle_dataset=False, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, max_steps=args.iters + 1, gradient_checkpointing=False, bf16=False,
        fp16=False, use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
        dataloader_num_workers=0, log_completions=False)

    # TRL left-pads each batch's prompts to its longest; pad them to the benchmark's one width instead, as
    # jaxrlhf's batches are (its right-padded completions are all `new` long and stay as they are).
    original_pad = grpo_mod.pad

    def pad_prompts_to_width(tensors, padding_value=0, padding_side="right", pad_to_multiple_of=None):
        if padding_side == "left":
            pad_to_multiple_of = width
        out = original_pad(tensors, padding_value, padding_side, pad_to_multiple_of)
        assert padding_side != "left" or out.shape[-1] == width, f"TRL's prompts are {out.shape[-1]} wide, not {width}"
        return out

    grpo_mod.pad = pad_prompts_to_width

    gen_times, lengths, logs, order, past_eos = [], [], [], [], []
    marks: list[float] = []
    baton = benchlib.baton()

    class Clock(transformers.TrainerCallback):
        """Marks each iteration's end on the held clock, then hands the baton over (torch on CPU is synchronous:
        the iteration has finished)."""

        def on_train_begin(self, *a, **k):
            marks.append(baton.clock())

        def on_step_end(self, *a, **k):
            marks.append(baton.clock())
            baton.pass_on()

        def on_log(self, _args, _state, _control, logs_=None, **k):
            logs.append(dict(k.get("logs") or logs_ or {}))

    trainer = GRPOTrainer(model=policy, reward_funcs=exact_match_reward, args=cfg, train_dataset=dataset,
                          processing_class=tok, callbacks=[Clock()])
    trainer.eos_token_ids = []  # TRL always adds the tokenizer's EOS to the ids it cuts completions after
    original_tokenize, original_generate = trainer._tokenize_prompts, trainer._generate

    def checked_tokenize(prompts):
        out = original_tokenize(prompts)
        bad = [p[-1]["content"] for p, ids in zip(prompts, out[0]) if list(ids) != expected[p[-1]["content"]]]
        assert not bad, f"TRL's prompt ids differ from jaxrlhf's for {bad[:2]}"
        return out

    def timed_generate(prompts):
        # `generate` takes the model's EOS when the config it is passed has none, and `Trainer.train()` sets the
        # model's to the tokenizer's (<|im_end|>) as it starts: clear it, or rows would stop early (and be padded
        # with the pad id, <|im_end|> too, so the completion lengths would not show it)
        for c in (trainer.model.generation_config, trainer.model.config, trainer.generation_config):
            c.eos_token_id = None
        t = time.perf_counter()
        out = original_generate(prompts)
        gen_times.append(time.perf_counter() - t)
        lengths.append([len(c) for c in out[1]])
        eos = tok.eos_token_id  # completions that went on past an EOS: generation did not stop there
        past_eos.append(sum(any(a == eos and b != eos for a, b in zip(c, c[1:])) for c in out[1]))
        order.append([p[-1]["content"] for p in prompts[::G]])
        return out

    trainer._tokenize_prompts, trainer._generate = checked_tokenize, timed_generate
    t = baton.clock()
    trainer.train()
    total = baton.clock() - t
    its = [b - a for a, b in zip(marks, marks[1:])]
    assert len(its) == args.iters + 1, (len(its), marks)
    assert order == [[r["messages"][-1]["content"] for r in b] for b in batches], "TRL's prompt order differs"
    assert all(n == args.new for ls in lengths for n in ls), f"completion lengths {lengths}"
    rewards = [lg["reward"] for lg in logs if "reward" in lg]
    return dict(iteration=its, generate=gen_times, response_length=[statistics.mean(ls) for ls in lengths],
                reward=rewards, updates=[1] * len(its), total=total, past_eos=past_eos,
                versions=benchlib.versions_text("trl", "torch", "transformers", "accelerate"))


# ----------------------------------------------------------------------------- host

def side_env(kind: str) -> dict:
    # jaxrlhf with the malloc tunable its entry points set (jaxrlhf.infra.host_memory); TRL as shipped
    return host_memory.entry_point_env(os.environ) if kind == "jax" else dict(os.environ)


def summary(r: dict) -> dict:
    timed = r["iteration"][1:]
    gen = r["generate"][1:]
    s = dict(best=min(timed), median=statistics.median(timed), first=r["iteration"][0], timed=timed,
             gen_median=statistics.median(gen) if gen else float("nan"),
             length=statistics.mean(r["response_length"]),
             reward=statistics.mean(r["reward"]) if r["reward"] else float("nan"))
    rest = [i - g for i, g in zip(timed, gen)]  # rewards, advantages, the update's forward+backward and AdamW
    s["rest_median"] = statistics.median(rest) if rest else float("nan")
    s["compile"] = max(s["first"] - s["median"], 0.0)
    return s


def headline(jx: dict, tr: dict) -> dict:
    js, ts = summary(jx), summary(tr)
    return {"name": f"one GRPO iteration vs TRL {TRL_VERSION} GRPOTrainer", "best": ts["best"] / js["best"],
            "median": ts["median"] / js["median"],
            "detail": f"jaxrlhf {js['median']:.1f} s vs TRL {ts['median']:.1f} s per iteration (median)"}


def render(args, jx: dict, tr: dict, mach: dict, command: str) -> str:
    a = args
    rows = a.prompts * a.group
    js, ts = summary(jx), summary(tr)
    lines = [
        MARK_START, TITLE, "", *benchlib.quick_note(a, QUICK),
        f"One GRPO iteration (sampling + rewards + one update), SmolLM2-135M-Instruct, full fine-tuning, float32, "
        f"beta 0 (no reference model on either side): {a.prompts} arithmetic problems per iteration "
        f"(`jaxrlhf.rl.arithmetic`, seed 0, chat template, left-padded to {a.prompt_len} tokens, the same token ids "
        f"and the same order on both sides), {a.group} samples per problem = {rows} completions of exactly {a.new} "
        f"tokens at temperature {a.temperature:g} (no early stop on either side), reward `exact_match` "
        f"(`jaxrlhf.rl.verifiable`, on both sides), group advantages scaled by the group std, then one AdamW step "
        f"(lr {a.lr:g}, constant, grad-norm clip 1.0) over all {rows} completions, each completion's token mean "
        f"averaged over the completions. Seconds per iteration after one warm-up iteration: best and median of "
        f"{a.iters} per side. The two sides ran at the same time in two processes taking turns iteration by "
        "iteration (only one computes at any moment), so both saw the same machine.", "",
        *benchlib.table(
            ["side", "best s/iter", "median s/iter", "speed-up (best)", "speed-up (median)", "generation s (median)",
             "rest of the iteration s (median)", "warm-up iter s", "compile s", "mean reward", "completion tokens"],
            [["jaxrlhf `train_grpo.train`", f"{js['best']:.1f}", f"{js['median']:.1f}",
              f"{ts['best'] / js['best']:.2f}x", f"{ts['median'] / js['median']:.2f}x", f"{js['gen_median']:.1f}",
              f"{js['rest_median']:.1f}", f"{js['first']:.1f}", f"{js['compile']:.1f}", f"{js['reward']:.3f}",
              f"{js['length']:.1f}"],
             [f"TRL {TRL_VERSION} `GRPOTrainer`", f"{ts['best']:.1f}", f"{ts['median']:.1f}", "1.00x", "1.00x",
              f"{ts['gen_median']:.1f}", f"{ts['rest_median']:.1f}", f"{ts['first']:.1f}", "n/a",
              f"{ts['reward']:.3f}", f"{ts['length']:.1f}"]]),
        "",
        f"All timed iterations (s): jaxrlhf {', '.join(f'{x:.1f}' for x in js['timed'])}; "
        f"TRL {', '.join(f'{x:.1f}' for x in ts['timed'])}. Speed-up = TRL seconds / jaxrlhf seconds. "
        "jaxrlhf's compile s = its warm-up iteration minus its median iteration. Rest of the iteration = "
        "iteration minus its generation: rewards, advantages and the update. Mean reward = exact-match accuracy "
        "of the sampled completions, averaged over all iterations (the two sides sample with different random "
        f"streams). Turns: {benchlib.turns_text({SIDES['jax']: jx, SIDES['trl']: tr})} (a turn is one iteration; "
        "each side's first turn also loads its model; a side's iteration time leaves out its waits).", "",
        "    " + command, "",
        "What each side runs per iteration:", "",
        f"- jaxrlhf (`jaxrlhf.train_grpo.train`, config `configs/grpo_arithmetic.py` set to this job): one jitted "
        f"sampling call ({a.new} decode steps with a KV cache; one prefill per prompt, shared by its {a.group} "
        f"samples: {a.prompts} prefill rows, {rows} decode rows); the texts decoded and `exact_match` run on the "
        "host; one jitted experience step (group advantages; with one update per rollout and beta 0 it runs no "
        f"forward pass: the old log-probs are the update's own, gradient stopped); one jitted update: a "
        f"forward+backward of the policy on the {rows} completions, each group's prompt run once for its "
        f"{a.group} completions (`grpo.shared_prompt`: {a.prompts} x {a.prompt_len} prompt tokens prefilled into a "
        f"KV cache, then the {rows} x {a.new} completion tokens on it, the same log-probs and gradient as "
        f"{rows} full sequences; log-probs in chunks, the [B, T, V] logits "
        "never held whole), the clipped surrogate, global-norm clipping and an AdamW step. Time from its "
        "metrics.jsonl (`grpo/iteration_seconds`). Its only changes to the shipped config for the benchmark: the "
        "sizes above, `sampling.ignore_eos` (no stop id, so every completion has TRL's length), "
        "`grpo.dynamic_sampling=False` (TRL has no dynamic sampling), `grpo.minibatch_size` = all completions "
        "(one update, as TRL's one step) and no held-out evaluation (`train.eval_every=0`).",
        f"- TRL (`trl.GRPOTrainer.train`, {TRL_VERSION}, transformers generation): the prompts tokenised with the "
        f"chat template and left-padded; `model.generate` (transformers, KV cache) on {rows} rows, each prompt "
        f"repeated {a.group} times (its sampler repeats the prompts, so each row runs its own prefill); the "
        "completions decoded, `exact_match` called through `reward_funcs`, group advantages; no old-log-prob or "
        "reference pass (`steps_per_generation=1`, `num_iterations=1`, beta 0); one forward+backward of the "
        f"policy on the {rows} completions (TRL's fused log-prob head; it also computes the per-token entropy "
        "for its metrics), its clipped loss (`loss_type=\"grpo\"`), global-norm clipping at 1.0 "
        "(`max_grad_norm`) and one AdamW step; per step it also logs metrics (host syncs) and runs its "
        "callbacks. Gradient checkpointing off (GRPOConfig turns it on by default), float32 (`bf16=False`). "
        "Time between its `on_step_end` callbacks.",
        "- Made equal by the script on TRL's side: its prompts' left padding goes to the one width above (TRL "
        "pads each batch to its longest prompt; the wrapper of `pad` touches only left padding), generation does "
        "not stop at EOS (no `eos_token_id` in TRL's generation config nor in the model's, which `generate` "
        "would fill in) and no completion is cut at the first EOS afterwards (`trainer.eos_token_ids = []`, since "
        "TRL always adds the tokenizer's EOS); the script asserts TRL's prompt ids equal jaxrlhf's, the prompt "
        "order per iteration and every completion's length. Left different: TRL re-runs a prefill per sample, "
        "jaxrlhf one per prompt, and TRL's update runs each completion's whole sequence, jaxrlhf each prompt "
        "once per group (the algorithms and their numbers are the same; it is how each computes them). "
        "jaxrlhf ran with "
        f"`GLIBC_TUNABLES={side_env('jax').get('GLIBC_TUNABLES') or 'unset'}` (what its command-line entry "
        "points set: `jaxrlhf/infra/host_memory.py`), TRL with the machine's defaults.", "",
        f"{benchlib.machine_line(mach)} jaxrlhf's XLA uses all cores, torch threads {a.threads}. "
        f"{jx['versions']}; {tr['versions']}; jaxrlhf at {benchlib.git_state(a.commit)}. Run {mach['date']}.", "",
        f"TRL {TRL_VERSION} is installed with `pip install --no-deps --target` into its own folder, put on "
        "`sys.path` in the TRL subprocess only, with `accelerate` (which TRL and `transformers.Trainer` need) in "
        "the same folder.",
        MARK_END]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args._worker:
        benchlib.baton()  # first: nothing of this side runs outside its turns
        spec = benchlib.worker_spec(args)
        if spec.get("src"):
            benchlib.import_jaxrlhf_from(spec["src"])
        benchlib.worker_result(args, (jax_worker if args._worker == "jax" else trl_worker)(args, spec))
        return 0
    if args.group < 2:
        sys.exit("--group must be at least 2 (the group baseline needs two samples)")
    if not args.skip_trl and benchlib.trl_in_folder(args.trl_path) != TRL_VERSION:
        sys.exit(f"error: TRL {TRL_VERSION} not found in {args.trl_path}: "
                 f"{benchlib.trl_install_command(TRL_VERSION, args.trl_path)} (or pass --trl_path, or --skip_trl)")
    start = benchlib.machine_snapshot()
    src = benchlib.use_commit(args.commit) if args.commit else ""
    if src:
        benchlib.import_jaxrlhf_from(src)
        print(f"jaxrlhf from {args.commit} ({src})", flush=True)
    spec = {"batches": prompt_batches(args), "src": src}
    print(f"prompts: {args.prompts} x {args.group} samples per iteration, {args.prompt_len} prompt tokens, {args.new} "
          f"new tokens, {args.iters} timed iterations after a warm-up, the sides taking turns; load {start['load']}",
          flush=True)
    sides = [benchlib.Side(SIDES[kind], kind, argv, spec, side_env(kind))
             for kind, skip in (("jax", args.skip_jax), ("trl", args.skip_trl)) if not skip]
    by_label = benchlib.run_in_turns(__file__, sides, cwd=REPO)
    results = {kind: by_label[label] for kind, label in SIDES.items() if label in by_label}
    for kind, r in results.items():
        s = summary(r)
        print(f"{kind}: iterations {', '.join(f'{x:.2f}' for x in r['iteration'])} s "
              f"(generation {', '.join(f'{x:.2f}' for x in r['generate'])} s), "
              f"best {s['best']:.2f}, median {s['median']:.2f}, mean completion {s['length']:.1f} tokens, "
              f"mean reward {s['reward']:.3f}; {r['turns']} turns"
              + (f"; completions that went on past an EOS: {r['past_eos']}" if "past_eos" in r else ""), flush=True)
    if len(results) < 2:
        return 0
    Path(tempfile.gettempdir(), "bench_grpo_results.json").write_text(json.dumps(results))
    mach = benchlib.machine_description(start)
    command = benchlib.command_line("scripts/bench_grpo.py", argv)
    section = render(args, results["jax"], results["trl"], mach, command)
    print(section)
    benchlib.write_section(args.out, section, MARK_START, MARK_END)
    head = headline(results["jax"], results["trl"])
    benchlib.print_headline(head)
    benchlib.write_json(args.json, "grpo", args, command, mach, head,
                        jaxrlhf=summary(results["jax"]), trl=summary(results["trl"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
