"""Rollout benchmark: jaxrlhf `generate` (jit, KV cache) vs `transformers` `model.generate` (PyTorch), SmolLM2-135M.

    python -m jaxrlhf.assets fetch smollm2
    python scripts/bench_rollout.py                      # batch 8, prompt 64, 64 new tokens; writes docs/benchmarks.md
    python scripts/bench_rollout.py --repeats 1 --out /tmp/b.md   # quicker look

Same job on both sides: SmolLM2-135M-Instruct (the dequantised HF directory the asset fetcher builds),
float32, a batch of real prompts (the first human turn of the shipped HH-RLHF harmless dialogues, in the
tokenizer's chat template, LEFT-padded to the prompt length), and exactly `--new` generated tokens per
row: jaxrlhf gets no stop tokens, transformers gets `min_new_tokens = max_new_tokens` (EOS suppressed).
Modes: greedy; plain sampling at temperature 1 (what PPO rollouts use); sampling at temperature 0.7
with top-p 0.9. Top-k is off on both sides.

Timing (wall clock, after a warm-up): tokens/s = batch x new tokens / seconds per `generate` call,
median of `--repeats` calls. jaxrlhf's first call traces and compiles; that time is reported apart
(first call minus a steady call). torch runs with `torch.set_num_threads(--threads)`; XLA's CPU
backend uses the machine's cores (`nproc` is printed with the table).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout

MARK_START = "<!-- bench_rollout:start (written by scripts/bench_rollout.py; rerun it rather than editing) -->"
MARK_END = "<!-- bench_rollout:end -->"
TITLE = "## Rollout: jaxrlhf sampling vs transformers generate"
DATA = REPO / "jaxrlhf" / "assets" / "data" / "hh_rlhf_harmless_2048.jsonl.gz"
MODES = {"greedy": dict(temperature=0.0, top_p=1.0), "sample": dict(temperature=1.0, top_p=1.0),
         "top_p": dict(temperature=0.7, top_p=0.9)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", help="asset alias or HF Llama-family directory")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=64, help="prompt length after left padding")
    p.add_argument("--new", type=int, default=64, help="tokens generated per row")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per side and mode (median)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"), help="markdown file to update ('' : none)")
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


def bench_jax(model_name, ids, mask, new, modes, repeats, pad_id):
    import jax

    from jaxrlhf.models.hub import from_pretrained
    from jaxrlhf.rl.sampling import SamplingConfig, generate

    lm = from_pretrained(model_name, "causal_lm")
    from flax import nnx

    split = nnx.split(lm.model)
    results = {}
    for mode in modes:
        cfg = SamplingConfig(max_new_tokens=new, eos_ids=(), pad_id=pad_id, **MODES[mode])
        keys = iter(jax.random.split(jax.random.key(0), repeats + 2))

        def run():
            out = generate(split, ids, mask, next(keys), cfg)
            jax.block_until_ready(out)
            return out

        t0 = time.perf_counter()
        out = run()
        first = time.perf_counter() - t0
        assert int(out["num_steps"]) == new and int(out["response_mask_BxN"].sum()) == ids.shape[0] * new
        steady = timed(run, repeats)
        results[mode] = dict(seconds=statistics.median(steady), compile=max(first - min(steady), 0.0),
                             tokens=out["response_ids_BxN"])
    return results


def bench_torch(model_dir, ids, mask, new, modes, repeats, pad_id, threads):
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    t_ids, t_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    results = {}
    for mode in modes:
        m = MODES[mode]
        kw = dict(max_new_tokens=new, min_new_tokens=new, pad_token_id=pad_id)
        kw.update(dict(do_sample=False) if m["temperature"] == 0 else
                  dict(do_sample=True, temperature=m["temperature"], top_p=m["top_p"], top_k=0))  # 0: no top-k

        def run():
            with torch.inference_mode():
                return model.generate(input_ids=t_ids, attention_mask=t_mask, **kw)

        torch.manual_seed(0)
        out = run()  # warm-up
        assert out.shape == (ids.shape[0], ids.shape[1] + new), out.shape
        results[mode] = dict(seconds=statistics.median(timed(run, repeats)), tokens=out[:, ids.shape[1]:].numpy())
    return results


def machine() -> dict:
    cpu = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return dict(nproc=os.cpu_count(), cpu=cpu, load=load)


def versions() -> str:
    import flax
    import jax
    import torch
    import transformers

    return f"jax {jax.__version__}, flax {flax.__version__}, torch {torch.__version__}, transformers {transformers.__version__}"


def render(args, rows, mach, load_before, vers, command) -> str:
    lines = [MARK_START, TITLE, "",
             f"SmolLM2-135M-Instruct, float32, batch {args.batch}, prompts left-padded to {args.prompt} tokens "
             f"(first human turns of HH-RLHF harmless in the chat template), exactly {args.new} new tokens per row "
             "(no early stop on either side). Modes: greedy; sample = temperature 1, no filter; top_p = temperature 0.7, "
             "top-p 0.9 (top-k off on both sides). Tokens/s = batch x new tokens "
             f"/ median wall seconds of {args.repeats} `generate` calls after a warm-up; jaxrlhf's compile time "
             "(first call minus a steady call) is not in its tokens/s.", "",
             "| mode | jaxrlhf tokens/s | transformers tokens/s | speed-up | jaxrlhf s/call | transformers s/call "
             "| jaxrlhf compile s | same greedy tokens |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['jax_tps']:.0f} | {r['torch_tps']:.0f} | {r['speedup']:.2f}x | "
                     f"{r['jax_s']:.3f} | {r['torch_s']:.3f} | {r['compile']:.1f} | {r['agree']} |")
    lines += ["", f"    {command}", "",
              f"Machine: {mach['nproc']} CPUs ({mach['cpu']}), torch threads {args.threads}; load average "
              f"(1/5/15 min) {load_before} before and {mach['load']} after the run"
              f"{' (the machine was busy: other jobs share these cores)' if float(load_before.split()[0]) > 1.5 else ''}."
              f" {vers}. Run {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}.", "",
              "\"same greedy tokens\": the share of greedy tokens both sides agree on (float32 rounding can flip a "
              "near-tie and the rows then diverge; the sampled rows differ by construction).",
              MARK_END]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start, end = text.find(MARK_START.split(" (")[0]), text.find(MARK_END)
    if start >= 0 and end > start:
        text = text[:start] + section.rstrip("\n") + text[end + len(MARK_END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv=None) -> int:
    import numpy as np

    args = parse_args(argv)
    load_before = machine()["load"]
    from jaxrlhf.models.hf_files import resolve_model_dir
    from jaxrlhf.models.hub import load_tokenizer

    model_dir = resolve_model_dir(args.model, None)
    tok = load_tokenizer(model_dir)
    ids, mask = make_prompts(tok, args.batch, args.prompt)
    modes = [m for m in args.modes.split(",") if m]
    print(f"prompts: {args.batch} x {args.prompt} (real lengths {mask.sum(1).tolist()}), {args.new} new tokens",
          flush=True)
    jx = bench_jax(args.model, ids, mask, args.new, modes, args.repeats, tok.pad_token_id)
    th = bench_torch(model_dir, ids, mask, args.new, modes, args.repeats, tok.pad_token_id, args.threads)
    n = args.batch * args.new
    rows = []
    for mode in modes:
        agree = (f"{np.mean(np.asarray(jx[mode]['tokens']) == th[mode]['tokens']):.0%}" if mode == "greedy"
                 else "n/a")
        rows.append(dict(mode=mode, jax_tps=n / jx[mode]["seconds"], torch_tps=n / th[mode]["seconds"],
                         speedup=th[mode]["seconds"] / jx[mode]["seconds"], jax_s=jx[mode]["seconds"],
                         torch_s=th[mode]["seconds"], compile=jx[mode]["compile"], agree=agree))
    command = "python scripts/bench_rollout.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    section = render(args, rows, machine(), load_before, versions(), command)
    print(section)
    if args.out:
        write_section(Path(args.out), section)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
