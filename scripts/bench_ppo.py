"""PPO benchmark: the wall time of one PPO iteration, jaxrlhf `train_ppo.train` vs TRL's PPOTrainer, in one run.

    python -m jaxrlhf.assets fetch smollm2
    pip install --no-deps --target /tmp/trl112 trl==1.12.0 accelerate    # TRL's side only (pin: benchlib.py)
    python scripts/bench_ppo.py                                          # full job, writes docs/benchmarks.md
    python scripts/bench_ppo.py --quick                                  # same iteration, 2 timed per side
    python scripts/bench_ppo.py --new 4 --iters 1 --out ''               # smoke test

TRL removed PPO after 1.12.0, so its side runs TRL 1.12.0's `trl.experimental.ppo.PPOTrainer`, imported
from `--trl_path` (a `pip install --no-deps --target` folder, put on `sys.path` of the TRL subprocess only;
the main environment is not touched). The installed transformers 5 is used as it is. The one missing
dependency is `accelerate` (TRL's trainer and `transformers.Trainer` import it; jaxrlhf does not need it):
it goes into the same folder with `--no-deps` (its own dependencies, torch, psutil, pyyaml, safetensors,
huggingface_hub, are installed already).

The job, identical on both sides:

- policy SmolLM2-135M-Instruct (the asset fetcher's HF directory), full fine-tuning, float32; frozen
  reference policy = the same weights;
- reward model and critic: SmolLM2-135M as a sequence classifier with one label (`score.weight`,
  initialised once with a fixed seed and saved as an HF directory, `--rm_dir`); both sides read the reward
  at the last real token and the critic starts from the reward model (jaxrlhf: `critic.init=reward_model`);
- each iteration: `--prompts` HH-RLHF harmless prompts (jaxrlhf's prompt set: chat template, at most
  `--prompt_len` tokens, left-padded to exactly `--prompt_len`; TRL gets the same token ids), exactly
  `--new` sampled tokens per prompt at `--temperature` (no stop token on either side: jaxrlhf's
  config sets `sampling.ignore_eos`; TRL runs with `stop_token=None` and the policy's
  `generation_config.eos_token_id=None`, its own setting for that), then `--epochs` PPO epochs of shuffled
  minibatches of `--minibatch` sequences, one optimiser step per minibatch, AdamW at `--lr` (constant)
  for actor and critic on both sides.

What each side computes per iteration is listed in the doc section (`render`).

Timing: each side runs in its own subprocess, both started at once, taking turns iteration by iteration
(`benchlib.run_in_turns`: jaxrlhf, TRL, jaxrlhf, TRL, ...; a side blocks before its next iteration until
it holds the baton), so only one side computes at any moment and both sides' iterations are spread over the
same minutes: a drift of the machine's speed hits both alike. Each side's first turn also holds its
imports and model loading. jaxrlhf: `train(config, hooks=...)` from `jaxrlhf.train_ppo`, whose loop hook
hands the baton over after each iteration; `ppo/iteration_seconds` from its metrics.jsonl (sampling through
the last minibatch update, synchronised by the metrics read-back; measured inside the iteration, so the
waits between turns are not in it). TRL: a `TrainerCallback` whose `on_step_end` hands the baton over; the
time between consecutive `on_step_end` callbacks (the first from `on_train_begin`) on a clock that stops
while the side waits for its turn (`Baton.clock`), which covers one whole iteration of its loop. The first
iteration of each side is a warm-up (jaxrlhf compiles in it; its compile time is reported as the first
iteration minus the median of the others) and is not in best / median. Generation time: jaxrlhf's
`ppo/sample_seconds` (the sampling call through reading its tokens back to decode the texts); TRL's, by
wrapping its `batch_generation`. `--quick` keeps the iteration and times fewer of them.
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

MARK_START = "<!-- bench_ppo:start (written by scripts/bench_ppo.py; rerun it rather than editing) -->"
MARK_END = "<!-- bench_ppo:end -->"
TITLE = "## PPO iteration: jaxrlhf vs TRL"
TRL_VERSION = benchlib.TRL_PPO_VERSION
QUICK = {"iters": 2}  # the same iteration, fewer of them
SIDES = {"jax": "jaxrlhf", "trl": "TRL"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policy", default="smollm2", help="asset alias or HF Llama-family directory")
    p.add_argument("--rm_dir", default=str(Path.home() / ".cache" / "jaxrlhf" / "bench_ppo_rm"),
                   help="HF dir of the policy weights as a 1-label sequence classifier (made once if missing)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per rollout")
    p.add_argument("--prompt_len", type=int, default=64, help="prompt tokens after left padding")
    p.add_argument("--new", type=int, default=32, help="tokens sampled per prompt")
    p.add_argument("--minibatch", type=int, default=4, help="sequences per PPO minibatch (one optimiser step)")
    p.add_argument("--epochs", type=int, default=2, help="PPO epochs over each rollout")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per side, after one warm-up")
    p.add_argument("--lr", type=float, default=3e-6, help="actor and critic learning rate (constant)")
    p.add_argument("--temperature", type=float, default=0.7)
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
    benchlib.add_worker_args(p, ("jax", "trl", "rm"))
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- shared job

def policy_dir(name: str) -> str:
    from jaxrlhf.models.hf_files import resolve_model_dir

    return str(resolve_model_dir(name, None))


def jax_config(args, workdir: str):
    """ppo_defaults() set to the benchmark job; the TRL side reads the same numbers from `args`."""
    from jaxrlhf.configs.base import ppo_defaults

    c = ppo_defaults()
    c.workdir = workdir
    c.policy.name = args.policy
    c.reward_model.path = args.rm_dir
    c.critic.init = "reward_model"
    c.data.max_prompt_length = args.prompt_len
    c.data.pad_to_multiple = args.prompt_len  # every batch exactly prompt_len wide
    c.sampling.max_new_tokens = args.new
    c.sampling.temperature = args.temperature
    c.sampling.ignore_eos = True  # exactly `new` tokens per row, as on TRL's side
    c.ppo.rollout_batch_size = args.prompts
    c.ppo.minibatch_size = args.minibatch
    c.ppo.epochs = args.epochs
    c.actor_optim.learning_rate = c.critic_optim.learning_rate = args.lr
    c.train.iterations = args.iters + 1
    c.train.checkpoint_every = 10 ** 9
    c.train.eval_every = 0  # no held-out rollouts: they are not part of an iteration
    c.train.sample_every = 0
    c.train.export = False
    return c


def prompt_batches(args) -> list[dict]:
    """The prompt batches jaxrlhf's train() draws for iterations 0..iters (same library calls, same config,
    the same held-out prompts set aside)."""
    from jaxrlhf.data.errors import row_policy
    from jaxrlhf.data.sources import load_table
    from jaxrlhf.models.hub import load_tokenizer
    from jaxrlhf.rl.prompts import build_prompt_set

    c = jax_config(args, "")
    tok = load_tokenizer(policy_dir(args.policy))
    d = c.data
    table = load_table(d.source, config=d.subset or None, split=d.split, max_rows=d.limit or None)
    ps = build_prompt_set(table, tok, batch_size=args.prompts, max_prompt_length=d.max_prompt_length,
                          pad_to_multiple=d.pad_to_multiple, seed=c.seed, on_invalid=row_policy(d.on_invalid),
                          use_chat_template=d.chat_template, system=d.system or None)
    ps, _ = ps.hold_out(d.eval_prompts)
    out = []
    for it in range(args.iters + 1):
        b = ps.batch(it)
        assert b["ids_BxP"].shape == (args.prompts, args.prompt_len), b["ids_BxP"].shape
        out.append({"ids": b["ids_BxP"].tolist(), "mask": b["mask_BxP"].tolist()})
    return out


# ----------------------------------------------------------------------------- workers

def make_rm_dir(args) -> None:
    """SmolLM2 weights + a seeded 1-label `score` head, saved as an HF sequence-classifier directory."""
    import shutil

    import torch
    import transformers

    torch.manual_seed(0)
    src = policy_dir(args.policy)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(src, num_labels=1, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(src)
    model.config.pad_token_id = tok.pad_token_id
    tmp = Path(args.rm_dir + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(args.rm_dir)
    print(f"wrote {args.rm_dir} (score.weight {tuple(model.score.weight.shape)})", flush=True)


def jax_worker(args, spec: dict) -> dict:
    import jaxrlhf.train_ppo as tp

    print(f"jaxrlhf: {Path(tp.__file__).parent}", flush=True)
    workdir = tempfile.mkdtemp(prefix="bench_ppo_jax_")
    config = jax_config(args, workdir)
    baton = benchlib.baton()
    t = baton.clock()
    # the loop calls its hooks after each iteration's metrics are read back: the device is idle at the hand-over
    tp.train(config, hooks=(lambda *_: baton.pass_on(),))
    total = baton.clock() - t
    rows = [json.loads(line) for line in open(Path(workdir) / "metrics.jsonl")]
    rows = [r for r in rows if "ppo/iteration_seconds" in r]
    assert len(rows) == args.iters + 1, len(rows)
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    return dict(iteration=[r["ppo/iteration_seconds"] for r in rows], generate=[r["ppo/sample_seconds"] for r in rows],
                response_length=[r["ppo/response_length"] for r in rows],
                updates=[r["ppo/minibatch_updates"] for r in rows], total=total,
                versions=benchlib.versions_text("jax", "flax"))


def trl_worker(args, spec: dict) -> dict:
    sys.path.insert(0, args.trl_path)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    import transformers
    from datasets import Dataset

    torch.set_num_threads(args.threads)
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_mod
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    assert trl.__version__ == TRL_VERSION, (trl.__version__, trl.__file__)
    src = policy_dir(args.policy)
    tok = transformers.AutoTokenizer.from_pretrained(src)
    # TRL finds padding as `ids == pad_token_id`; SmolLM2 pads with <|im_end|>, which is also in every chat
    # prompt, so give it a pad id that never occurs in the text (the reward-model export does the same).
    if tok.pad_token_id == tok.eos_token_id:
        tok.pad_token = tok.unk_token
    pad = tok.pad_token_id
    batches = spec["batches"]
    queries = [[i if m else pad for i, m in zip(ids_row, mask_row)]
               for b in batches for ids_row, mask_row in zip(b["ids"], b["mask"])]
    assert all(sum(1 for i in q if i == pad) == len(q) - sum(m) for q, m in
               zip(queries, [m for b in batches for m in b["mask"]])), "pad id occurs inside a prompt"
    dataset = Dataset.from_dict({"input_ids": queries})

    kw = dict(dtype=torch.float32)
    policy = transformers.AutoModelForCausalLM.from_pretrained(src, **kw)
    ref = transformers.AutoModelForCausalLM.from_pretrained(src, **kw)
    reward = transformers.AutoModelForSequenceClassification.from_pretrained(args.rm_dir, num_labels=1, **kw)
    value = transformers.AutoModelForSequenceClassification.from_pretrained(args.rm_dir, num_labels=1, **kw)
    for m in (policy, ref, reward, value):
        m.config.pad_token_id = pad
    policy.generation_config.pad_token_id = pad
    policy.config.eos_token_id = None  # no early stop: exactly `new` tokens per row (as jaxrlhf's side)

    out_dir = tempfile.mkdtemp(prefix="bench_ppo_trl_")
    cfg = PPOConfig(
        output_dir=out_dir, per_device_train_batch_size=args.prompts, gradient_accumulation_steps=1,
        num_mini_batches=args.prompts // args.minibatch, num_ppo_epochs=args.epochs,
        local_rollout_forward_batch_size=args.prompts, response_length=args.new, temperature=args.temperature,
        stop_token=None, missing_eos_penalty=None, learning_rate=args.lr, lr_scheduler_type="constant",
        weight_decay=0.0, total_episodes=args.prompts * (args.iters + 1), num_sample_generations=0, vf_coef=1.0,
        kl_coef=0.05, kl_estimator="k1", whiten_rewards=False, bf16=False, fp16=False, use_cpu=True,
        report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0, dataloader_num_workers=0)

    gen_times, lengths, logs = [], [], []
    original_generation = ppo_mod.batch_generation

    def timed_generation(model, q, *a, **k):
        t = time.perf_counter()
        out = original_generation(model, q, *a, **k)
        gen_times.append(time.perf_counter() - t)
        lengths.append(out[0].shape[1] - q.shape[1])
        return out

    ppo_mod.batch_generation = timed_generation
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

    trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         value_model=value, train_dataset=dataset, eval_dataset=dataset, callbacks=[Clock()])
    t = baton.clock()
    trainer.train()
    total = baton.clock() - t
    its = [b - a for a, b in zip(marks, marks[1:])]
    assert len(its) == args.iters + 1, (len(its), marks)
    eos = [lg.get("val/num_eos_tokens") for lg in logs if "val/num_eos_tokens" in lg]
    return dict(iteration=its, generate=gen_times, response_length=lengths, eos_tokens_sampled=eos, total=total,
                updates=[args.epochs * (args.prompts // args.minibatch)] * len(its),
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
             length=statistics.mean(r["response_length"]))
    rest = [i - g for i, g in zip(timed, gen)]  # scoring, log-probs/values, GAE and the updates
    s["rest_median"] = statistics.median(rest) if rest else float("nan")
    s["compile"] = max(s["first"] - s["median"], 0.0)
    return s


def headline(jx: dict, tr: dict) -> dict:
    js, ts = summary(jx), summary(tr)
    return {"name": f"one PPO iteration vs TRL {TRL_VERSION} PPOTrainer", "best": ts["best"] / js["best"],
            "median": ts["median"] / js["median"],
            "detail": f"jaxrlhf {js['median']:.1f} s vs TRL {ts['median']:.1f} s per iteration (median)"}


def render(args, jx: dict, tr: dict, mach: dict, command: str) -> str:
    a = args
    n_mb = a.prompts // a.minibatch
    js, ts = summary(jx), summary(tr)
    lines = [
        MARK_START, TITLE, "", *benchlib.quick_note(a, QUICK),
        f"One PPO iteration (rollout + scoring + update), SmolLM2-135M-Instruct policy, reward model and critic "
        f"SmolLM2-135M with a 1-label `score` head (the same seeded HF directory on both sides; the critic starts "
        f"from the reward model), full fine-tuning, float32: {a.prompts} HH-RLHF harmless prompts per rollout "
        f"(chat template, left-padded to {a.prompt_len} tokens, the same token ids on both sides), exactly "
        f"{a.new} sampled tokens per prompt at temperature {a.temperature:g} (no early stop on either side), "
        f"then {a.epochs} PPO epoch(s) of {n_mb} shuffled minibatches of {a.minibatch} sequences, one AdamW step "
        f"per minibatch for actor and critic (lr {a.lr:g}, constant). Seconds per iteration after one warm-up "
        f"iteration: best and median of {a.iters} per side. The two sides ran at the same time in two processes "
        "taking turns iteration by iteration (only one computes at any moment), so both saw the same machine.", "",
        *benchlib.table(
            ["side", "best s/iter", "median s/iter", "speed-up (best)", "speed-up (median)", "generation s (median)",
             "rest of the iteration s (median)", "warm-up iter s", "compile s", "mean response tokens"],
            [["jaxrlhf `train_ppo.train`", f"{js['best']:.1f}", f"{js['median']:.1f}",
              f"{ts['best'] / js['best']:.2f}x", f"{ts['median'] / js['median']:.2f}x", f"{js['gen_median']:.1f}",
              f"{js['rest_median']:.1f}", f"{js['first']:.1f}", f"{js['compile']:.1f}", f"{js['length']:.1f}"],
             [f"TRL {TRL_VERSION} `PPOTrainer`", f"{ts['best']:.1f}", f"{ts['median']:.1f}", "1.00x", "1.00x",
              f"{ts['gen_median']:.1f}", f"{ts['rest_median']:.1f}", f"{ts['first']:.1f}", "n/a",
              f"{ts['length']:.1f}"]]),
        "",
        f"All timed iterations (s): jaxrlhf {', '.join(f'{x:.1f}' for x in js['timed'])}; "
        f"TRL {', '.join(f'{x:.1f}' for x in ts['timed'])}. Speed-up = TRL seconds / jaxrlhf seconds. "
        "jaxrlhf's compile s = its warm-up iteration minus its median iteration. Rest of the iteration = "
        "iteration minus its generation call: reward-model scoring, the log-prob/value passes, GAE and the "
        f"minibatch updates. Turns: {benchlib.turns_text({SIDES['jax']: jx, SIDES['trl']: tr})} (a turn is one "
        "iteration; each side's first turn also loads its models; a side's iteration time leaves out its waits).", "",
        "    " + command, "",
        "What each side runs per iteration:", "",
        f"- jaxrlhf (`jaxrlhf.train_ppo.train`, config from `ppo_defaults()`): one jitted sampling call ({a.new} "
        f"decode steps with a KV cache, batch {a.prompts}); the reward model on the decoded prompt and "
        "response texts, re-tokenised with its own tokenizer (rm.scoring, the path every consumer uses); "
        "one jitted experience step with three "
        "more forward passes (actor log-probs recomputed at the sampling temperature, reference log-probs, "
        "critic values; log-probs in chunks), reward shaping (running reward normalisation, k1 KL penalty) and "
        f"GAE; then {a.epochs * n_mb} minibatch updates in one jitted scan, each a forward+backward of the actor "
        f"and of the critic on "
        f"{a.minibatch} sequences, global-norm clipping at 1.0 and an AdamW step for each. Time from its "
        "metrics.jsonl (`ppo/iteration_seconds`). Its only changes for the benchmark: `sampling.ignore_eos` "
        "(no stop id), so that every row has exactly the tokens TRL's rows have, and no held-out evaluation "
        "rollouts (`train.eval_every=0`; they are outside the iteration either way).",
        f"- TRL (`trl.experimental.ppo.PPOTrainer.train`, {TRL_VERSION}): `model.generate` (transformers, KV cache, "
        f"batch {a.prompts}) returning the step scores, from which it takes the policy's log-probs (no policy "
        "forward pass afterwards); forward passes of the reference policy, of the value model and of the "
        "reward model; k1 KL penalty, GAE (a Python loop over tokens) and advantage whitening (no reward "
        f"normalisation); then {a.epochs * n_mb} minibatch steps, each one forward+backward of policy and value "
        f"model together ({a.minibatch} sequences) and one AdamW step over both (no gradient clipping). "
        "Time between its `on_step_end` callbacks; per iteration it also logs metrics (host syncs), calls "
        "`gc.collect()` and runs its callbacks.",
        "- So jaxrlhf does one forward pass more per rollout (the actor's log-probs, which TRL reads from the "
        "generation scores) and clips gradients, and it updates actor and critic as two separate "
        "forward+backward passes where TRL runs one wrapper module; both whiten advantages, both sample "
        "without top-k/top-p, neither checkpoints inside the timed iterations. jaxrlhf ran with "
        f"`GLIBC_TUNABLES={side_env('jax').get('GLIBC_TUNABLES') or 'unset'}` (what its "
        "command-line entry points set: `jaxrlhf/infra/host_memory.py`), TRL with the machine's defaults.", "",
        f"{benchlib.machine_line(mach)} jaxrlhf's XLA uses all cores, torch threads {a.threads}. "
        f"{jx['versions']}; {tr['versions']}; jaxrlhf at {benchlib.git_state(a.commit)}. Run {mach['date']}.", "",
        f"TRL {TRL_VERSION} is installed with `pip install --no-deps --target` into its own folder, put on "
        "`sys.path` in "
        "the TRL subprocess only, with `accelerate` (which TRL and `transformers.Trainer` need) in the same "
        "folder; TRL gets `pad_token = <|endoftext|>` because it finds padding by `ids == pad_token_id` and "
        "SmolLM2's pad token `<|im_end|>` occurs in every chat prompt.",
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
        if args._worker == "rm":
            make_rm_dir(args)
            return 0
        benchlib.worker_result(args, (jax_worker if args._worker == "jax" else trl_worker)(args, spec))
        return 0
    if args.prompts % args.minibatch:
        sys.exit("--prompts must be a multiple of --minibatch")
    if not args.skip_trl and benchlib.trl_in_folder(args.trl_path) != TRL_VERSION:
        sys.exit(f"error: TRL {TRL_VERSION} not found in {args.trl_path}: "
                 f"{benchlib.trl_install_command(TRL_VERSION, args.trl_path)} (or pass --trl_path, or --skip_trl)")
    start = benchlib.machine_snapshot()
    src = benchlib.use_commit(args.commit) if args.commit else ""
    if src:
        benchlib.import_jaxrlhf_from(src)
        print(f"jaxrlhf from {args.commit} ({src})", flush=True)
    if not (Path(args.rm_dir) / "config.json").is_file():
        benchlib.run_worker(__file__, argv, "rm", {"src": src}, env=side_env("rm"), cwd=REPO)
    spec = {"batches": prompt_batches(args), "src": src}
    print(f"prompts: {args.prompts} x {args.prompt_len} per iteration, {args.new} new tokens, "
          f"{args.iters} timed iterations after a warm-up, the sides taking turns; load {start['load']}", flush=True)
    sides = [benchlib.Side(SIDES[kind], kind, argv, spec, side_env(kind))
             for kind, skip in (("jax", args.skip_jax), ("trl", args.skip_trl)) if not skip]
    by_label = benchlib.run_in_turns(__file__, sides, cwd=REPO)
    results = {kind: by_label[label] for kind, label in SIDES.items() if label in by_label}
    for kind, r in results.items():
        s = summary(r)
        print(f"{kind}: iterations {', '.join(f'{x:.2f}' for x in r['iteration'])} s "
              f"(generation {', '.join(f'{x:.2f}' for x in r['generate'])} s), "
              f"best {s['best']:.2f}, median {s['median']:.2f}, mean response {s['length']:.1f} tokens; "
              f"{r['turns']} turns", flush=True)
    if len(results) < 2:
        return 0
    Path(tempfile.gettempdir(), "bench_ppo_results.json").write_text(json.dumps(results))
    mach = benchlib.machine_description(start)
    command = benchlib.command_line("scripts/bench_ppo.py", argv)
    section = render(args, results["jax"], results["trl"], mach, command)
    print(section)
    benchlib.write_section(args.out, section, MARK_START, MARK_END)
    head = headline(results["jax"], results["trl"])
    benchlib.print_headline(head)
    benchlib.write_json(args.json, "ppo", args, command, mach, head,
                        jaxrlhf=summary(results["jax"]), trl=summary(results["trl"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
