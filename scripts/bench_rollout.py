"""Rollout benchmark: jaxrlhf `generate` (jit, KV cache) vs `transformers` `model.generate` (PyTorch), SmolLM2-135M.

    python -m jaxrlhf.assets fetch smollm2
    python scripts/bench_rollout.py                      # batch 8, prompt 64, 64 new tokens; writes docs/benchmarks.md
    python scripts/bench_rollout.py --quick              # the same calls, 3 timed per side and mode
    python scripts/bench_rollout.py --repeats 1 --modes greedy --new 8 --out ''   # smoke test
    python scripts/bench_rollout.py --group 8            # group mode: 8 prompts x 8 samples; its own section
    python scripts/bench_rollout.py --group 2 --batch 2 --repeats 1 --new 8 --out ''   # group-mode smoke test

Same job on both sides: SmolLM2-135M-Instruct (the dequantised HF directory the asset fetcher builds),
float32, a batch of real prompts (the first human turn of the shipped HH-RLHF harmless dialogues, in the
tokenizer's chat template, LEFT-padded to the prompt length), and exactly `--new` generated tokens per
row: jaxrlhf gets no stop tokens, transformers gets `min_new_tokens = max_new_tokens` (EOS suppressed).
Modes: greedy; plain sampling at temperature 1 (what PPO rollouts use); sampling at temperature 0.7
with top-p 0.9. Top-k is off on both sides.

Group mode (`--group G`, what GRPO rollouts do): plain sampling at temperature 1, G samples of each of the
`--batch` prompts, so batch x G rows. jaxrlhf: `generate(..., group_size=G)`, one prefill per prompt whose
KV cache its G samples share; transformers: `model.generate(..., do_sample=True, num_return_sequences=G)`,
which repeats each prompt G times before the prefill. It runs instead of `--modes` and writes its own
section of docs/benchmarks.md (bench_all's `rollout_group`).

Timing (wall clock): tokens/s = batch x new tokens / seconds per `generate` call, the best and the
median of `--repeats` calls per side. Both sides run in this one process; after a warm-up their calls
alternate call by call, so a drift of the machine's speed or background load hits both alike (the best
call is the least disturbed one). `--quick` makes the same calls, fewer of them. jaxrlhf's first
call traces and compiles; that time is reported apart (first call minus best call). torch runs with
`torch.set_num_threads(--threads)`; XLA's CPU backend uses the machine's cores (`nproc` is printed
with the table). Under contention torch's OpenMP threads degrade far more than XLA's (seen here: a
64-token greedy call took 32-63 s instead of 4.3 s while another job held one of the 2 cores).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time

import benchlib  # first: puts this checkout on sys.path
import numpy as np
from benchlib import REPO

MARK_START = "<!-- bench_rollout:start (written by scripts/bench_rollout.py; rerun it rather than editing) -->"
MARK_END = "<!-- bench_rollout:end -->"
TITLE = "## Rollout: jaxrlhf sampling vs transformers generate"
GROUP_MARK_START = ("<!-- bench_rollout_group:start (written by scripts/bench_rollout.py --group; rerun it rather "
                    "than editing) -->")
GROUP_MARK_END = "<!-- bench_rollout_group:end -->"
GROUP_TITLE = "## Group rollout: G samples per prompt, jaxrlhf shared prefill vs transformers num_return_sequences"
GROUP_MODE = "sample"  # what GRPO rollouts use: temperature 1, no filter
DATA = REPO / "jaxrlhf" / "data" / "builtin" / "hh_rlhf_harmless_2048.jsonl.gz"
MODES = {"greedy": dict(temperature=0.0, top_p=1.0), "sample": dict(temperature=1.0, top_p=1.0),
         "top_p": dict(temperature=0.7, top_p=0.9)}
QUICK = {"repeats": 3}  # the same calls, fewer of them


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", help="asset alias or HF Llama-family directory")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=64, help="prompt length after left padding")
    p.add_argument("--new", type=int, default=64, help="tokens generated per row")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per side and mode (best, median)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--group", type=int, default=1, help="> 1: group mode, this many samples per prompt (mode "
                   f"{GROUP_MODE}; --modes is not used)")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"), help="markdown file to update ('' : none)")
    benchlib.add_json_arg(p)
    benchlib.apply_quick(p, argv, QUICK)
    return p.parse_args(argv)


def first_human_turns(n: int) -> list[str]:
    out = []
    with gzip.open(DATA, "rt") as f:
        for line in f:
            text = json.loads(line)["chosen"]
            turn = text.split("\n\nHuman: ", 1)[-1].split("\n\nAssistant:", 1)[0].strip()
            if turn:
                out.append(turn)
            if len(out) >= n:
                break
    return out


def make_prompts(tok, batch: int, length: int):
    """The first `batch` HH first turns whose chat prompt fits in `length` tokens, left-padded."""
    from jaxrlhf.rl.sampling import chat_prompts, left_pad

    seqs = [s for s in chat_prompts(tok, first_human_turns(50 * batch)) if len(s) <= length][:batch]
    if len(seqs) < batch:
        sys.exit(f"error: only {len(seqs)} prompts fit in {length} tokens")
    return left_pad(seqs, tok.pad_token_id, length=length)


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def jax_runner(model_name, ids, mask, new, pad_id, group=1):
    """mode -> a function that runs one jaxrlhf `generate` call to completion and returns the tokens (`group`
    samples per prompt, from one shared prefill)."""
    import jax
    from flax import nnx

    from jaxrlhf.models.hub import from_pretrained
    from jaxrlhf.rl.sampling import SamplingConfig, generate

    split = nnx.split(from_pretrained(model_name, "causal_lm").model)
    keys = iter(jax.random.split(jax.random.key(0), 10_000))

    def make(mode):
        cfg = SamplingConfig(max_new_tokens=new, eos_ids=(), pad_id=pad_id, **MODES[mode])

        def run():
            out = jax.block_until_ready(generate(split, ids, mask, next(keys), cfg, group_size=group))
            assert int(out["num_steps"]) == new and int(out["response_mask_BxN"].sum()) == ids.shape[0] * group * new
            return np.asarray(out["response_ids_BxN"])
        return run
    return make


def torch_runner(model_dir, ids, mask, new, pad_id, threads, group=1):
    import torch
    import transformers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    t_ids, t_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def make(mode):
        m = MODES[mode]
        kw = dict(max_new_tokens=new, min_new_tokens=new, pad_token_id=pad_id)
        kw.update(dict(do_sample=False) if m["temperature"] == 0 else
                  dict(do_sample=True, temperature=m["temperature"], top_p=m["top_p"], top_k=0))  # 0: no top-k
        if group > 1:  # transformers repeats each prompt `group` times, then prefills every copy
            kw["num_return_sequences"] = group

        def run():
            with torch.inference_mode():
                out = model.generate(input_ids=t_ids, attention_mask=t_mask, **kw)
            assert out.shape == (ids.shape[0] * group, ids.shape[1] + new), out.shape
            return out[:, ids.shape[1]:].numpy()
        return run
    return make


def bench_mode(mode, jax_make, torch_make, repeats):
    """Warm-up (jaxrlhf: compile) on both sides, then `repeats` rounds alternating jaxrlhf and torch calls,
    so that both sides see the same background load."""
    jx, th = jax_make(mode), torch_make(mode)
    t = time.perf_counter()
    jax_tokens = jx()
    first = time.perf_counter() - t
    torch_tokens = th()
    jax_times, torch_times = [], []
    for _ in range(repeats):
        jax_times += timed(jx, 1)
        torch_times += timed(th, 1)
    print(f"{mode}: jaxrlhf first call {first:.2f} s, then {', '.join(f'{x:.2f}' for x in jax_times)} s; "
          f"transformers {', '.join(f'{x:.2f}' for x in torch_times)} s", flush=True)
    return dict(jax=jax_times, torch=torch_times, compile=max(first - min(jax_times), 0.0),
                agree=float(np.mean(jax_tokens == torch_tokens)))


def headline(rows, group: int = 1) -> dict:
    """The smallest speed-up over the modes run (best and median calls): the claim holds for every mode."""
    best, med = min(rows, key=lambda r: r["speedup"]), min(rows, key=lambda r: r["speedup_med"])
    name = (f"group rollout tokens/s ({group} samples per prompt) vs transformers num_return_sequences" if group > 1
            else "rollout tokens/s vs transformers generate")
    return {"name": name, "best": best["speedup"],
            "median": med["speedup_med"],
            "detail": f"the slowest of {len(rows)} mode(s): {med['mode']}, jaxrlhf {med['jax_med']:.0f} vs "
                      f"transformers {med['torch_med']:.0f} tokens/s (median)"}


def render(args, rows, mach, vers, command) -> str:
    if args.group > 1:
        return render_group(args, rows, mach, vers, command)
    lines = [MARK_START, TITLE, "", *benchlib.quick_note(args, QUICK),
             f"SmolLM2-135M-Instruct, float32, batch {args.batch}, prompts left-padded to {args.prompt} tokens "
             f"(first human turns of HH-RLHF harmless in the chat template), exactly {args.new} new tokens per row "
             "(no early stop on either side). Modes: greedy; sample = temperature 1, no filter; "
             "top_p = temperature 0.7, "
             "top-p 0.9 (top-k off on both sides). Tokens/s = batch x new tokens / wall seconds of one `generate` "
             f"call: the best of {args.repeats} calls per side (the least disturbed by other jobs), then the median; "
             "the two sides' calls alternate after a warm-up. jaxrlhf's compile time (its first call minus its best "
             "call) is not in its tokens/s.", ""]
    lines += benchlib.table(
        ["mode", "jaxrlhf tokens/s", "transformers tokens/s", "speed-up", "median: jaxrlhf", "median: transformers",
         "median speed-up", "jaxrlhf compile s", "same greedy tokens"],
        [[r["mode"], f"{r['jax_tps']:.0f}", f"{r['torch_tps']:.0f}", f"{r['speedup']:.2f}x", f"{r['jax_med']:.0f}",
          f"{r['torch_med']:.0f}", f"{r['speedup_med']:.2f}x", f"{r['compile']:.1f}", r["agree"]] for r in rows])
    lines += ["", f"    {command}", "",
              f"{benchlib.machine_line(mach)} torch threads {args.threads}; XLA uses all cores. {vers}. "
              f"Run {mach['date']}.", "",
              "\"same greedy tokens\": the share of greedy tokens both sides agree on (float32 rounding can flip a "
              "near-tie and the rows then diverge; the sampled rows differ by construction).",
              MARK_END]
    return "\n".join(lines) + "\n"


def render_group(args, rows, mach, vers, command) -> str:
    B, G, n = args.batch, args.group, args.new
    lines = [GROUP_MARK_START, GROUP_TITLE, "", *benchlib.quick_note(args, QUICK),
             f"SmolLM2-135M-Instruct, float32, {B} prompts left-padded to {args.prompt} tokens (first human turns of "
             f"HH-RLHF harmless in the chat template), {G} samples of each at temperature 1 (no top-k, no top-p): "
             f"{B * G} rows of exactly {n} new tokens (no early stop on either side). jaxrlhf: `generate(..., "
             f"group_size={G})`, one prefill per prompt ({B} rows) whose KV cache its {G} samples share; transformers: "
             f"`model.generate(..., do_sample=True, num_return_sequences={G})`, which repeats each prompt {G} times "
             f"and prefills all {B * G} copies. Tokens/s = {B} x {G} x {n} / wall seconds of one `generate` call: the "
             f"best of {args.repeats} calls per side, then the median; the two sides' calls alternate after a "
             "warm-up. jaxrlhf's compile time (its first call minus its best call) is not in its tokens/s.", ""]
    lines += benchlib.table(
        ["mode", "jaxrlhf tokens/s", "transformers tokens/s", "speed-up", "median: jaxrlhf", "median: transformers",
         "median speed-up", "jaxrlhf compile s"],
        [[f"{r['mode']}, G={G}", f"{r['jax_tps']:.0f}", f"{r['torch_tps']:.0f}", f"{r['speedup']:.2f}x",
          f"{r['jax_med']:.0f}", f"{r['torch_med']:.0f}", f"{r['speedup_med']:.2f}x", f"{r['compile']:.1f}"]
         for r in rows])
    lines += ["", f"    {command}", "",
              f"{benchlib.machine_line(mach)} torch threads {args.threads}; XLA uses all cores. {vers}. "
              f"Run {mach['date']}.",
              GROUP_MARK_END]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    start = benchlib.machine_snapshot()
    from jaxrlhf.models.hf_files import resolve_model_dir
    from jaxrlhf.models.hub import load_tokenizer

    model_dir = resolve_model_dir(args.model, None)
    tok = load_tokenizer(model_dir)
    ids, mask = make_prompts(tok, args.batch, args.prompt)
    group = max(args.group, 1)
    modes = [GROUP_MODE] if group > 1 else [m for m in args.modes.split(",") if m]
    print(f"prompts: {args.batch} x {args.prompt} (real lengths {mask.sum(1).tolist()}), {args.new} new tokens"
          + (f", {group} samples per prompt" if group > 1 else ""), flush=True)
    jax_make = jax_runner(args.model, ids, mask, args.new, tok.pad_token_id, group)
    torch_make = torch_runner(model_dir, ids, mask, args.new, tok.pad_token_id, args.threads, group)
    n = args.batch * group * args.new
    rows = []
    for mode in modes:
        r = bench_mode(mode, jax_make, torch_make, args.repeats)
        jb, tb = min(r["jax"]), min(r["torch"])
        jm, tm = statistics.median(r["jax"]), statistics.median(r["torch"])
        rows.append(dict(mode=mode, jax_tps=n / jb, torch_tps=n / tb, speedup=tb / jb, jax_med=n / jm,
                         torch_med=n / tm, speedup_med=tm / jm, compile=r["compile"],
                         agree=f"{r['agree']:.0%}" if mode == "greedy" else "n/a"))
    command = benchlib.command_line("scripts/bench_rollout.py", sys.argv[1:] if argv is None else argv)
    mach = benchlib.machine_description(start)
    section = render(args, rows, mach, benchlib.versions_text("jax", "flax", "torch", "transformers"), command)
    print(section)
    marks = (GROUP_MARK_START, GROUP_MARK_END) if group > 1 else (MARK_START, MARK_END)
    benchlib.write_section(args.out, section, *marks)
    head = headline(rows, group)
    benchlib.print_headline(head)
    benchlib.write_json(args.json, "rollout_group" if group > 1 else "rollout", args, command, mach, head, modes=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
