"""One device check for a GPU or TPU host: what jaxrlhf's steps cost there, in at most ~8 minutes.

    python scripts/device_check.py --out /tmp/dc                    # on the accelerator host
    python scripts/device_check.py --out /tmp/dc --sections env,rm,decode --budget_s 300
    JAX_PLATFORMS=cpu python scripts/device_check.py --smoke --out /tmp/dc   # tiny shapes, any CPU, < 60 s

No network and no checkpoints: random weights in SmolLM2-135M shapes (Llama family: 30 layers, hidden 576,
9 heads over 3 KV heads of 64, SwiGLU 1536, vocab 49,152, tied embeddings) and Llama-3.2-1B shapes (16 layers,
hidden 2048, 32/8 heads, 8192, vocab 128,256, tied), built by the library's own model code
(`models.registry.build_model`) and run through the library's own steps: the reward-model train step
(`rm.step`), `rl.sampling.generate`, the rollout sampler (`rl.rollout.make_sample_fn`), the PPO experience and
update steps (`rl.experience`, `rl.ppo_step`), the optimiser of `training.optim`. The models take the compute
dtype (`dtype=`) and storage dtype (`param_dtype=`) at construction; every row says which it used.

Sections (`--sections`, comma-separated, run in the order given; default all, in this order):

    env      versions, backend, device kind and count, memory limit, XLA_FLAGS
    attn     fwd+bwd of jaxrlhf's attention vs jax.nn.dot_product_attention (None, "xla", and "cudnn" on GPU),
             and of each of jaxrlhf's own kernel choices where the library has them (`jaxrlhf_<name>`): ms,
             causal TFLOP/s, max relative difference of the output and of dq against jaxrlhf's default path
    rm       SmolLM2-shaped RM train step: f32 and bf16 compute at 16 pairs x 256, bf16 64 x 512 with and
             without remat: ms/step, pairs/s, MFU (analytic 6N and XLA's cost analysis), memory, compile s
    rm1b     the Llama-3.2-1B-shaped bf16 RM step, 16 pairs x 512
    decode   `generate` bf16 batch 16 and 256, f32 batch 256, prompt 128 + 128 new tokens, no EOS: ms per
             decode step, tokens/s, fraction of HBM bandwidth (weights + KV cache read per step)
    logp     mean and max |sampler log-prob - recomputed log-prob| on response tokens, bf16 and f32
    ppo      one experience step (batch 64, 128 + 128 tokens) and one actor+critic update (minibatch 16),
             bf16: ms, MFU, the cost of one float() per metric
    compile  compile seconds of the bf16 RM step at T = 64, 128, 192, 256
    profile  a jax.profiler trace of one 32-token generate, tarred to OUT/trace.tgz

The models use the library's default attention kernel (`build_model(attention=...)`; each model row records
it as `attention`) unless `--attention NAME` says otherwise.

Output: OUT/results.jsonl, one JSON object per line, written and flushed as each measurement ends (a run cut
short still leaves its lines), then a table on stdout. Every line has `section`, `variant`, `status` (ok,
error, skipped) and `t_s` (seconds since start); an error line has `error` (type and message), `oom` and the
last lines of the traceback: an OOM or a refused kernel is a line, not the end of the run. Past `--budget_s`
(default 480) the remaining measurements are written as skipped. The last line is `section: end`.

How things are measured:
- Timing: `jax.block_until_ready` after each call; the first call after compiling is a warm-up outside the
  timing; a time is the median of `--repeats` calls (all of them are in `times_ms`).
- Compile seconds: wall time of `jit(...).lower(...).compile()`, with JAX's persistent compilation cache off,
  so a rerun compiles cold too. Decode's `compile_s` is its first call minus a timed one.
- MFU: model FLOPs per second over the device's bf16 peak, from a table by `device_kind` (H100/H200 989e12,
  v5e 197e12; an unknown device gives null). `mfu_6n` counts 2N FLOPs per token per forward pass and 6N per
  token for forward+backward, N the matmul parameters (the embedding counts only where it is the LM head).
  `mfu_6n_attn` adds causal attention (2*L*H*head_dim*T per token per forward pass). `mfu_xla` uses
  `cost_analysis()["flops"]` of the same step with its layers unrolled (`flops_xla_unrolled`, see
  `unrolled_flops`): XLA counts a loop body once, so the scanned program's own figure (`flops_xla_compiled`)
  misses all layers but one.
- Memory: `peak_gib` is the device's `peak_bytes_in_use` so far in this process (it only grows, so rows run
  small to large); `program_gib` is the compiled program's arguments + outputs + temporaries
  (`memory_analysis()`). On a GPU the preallocated pool is 92% of HBM unless XLA_PYTHON_CLIENT_MEM_FRACTION
  says otherwise (JAX's default of 75% leaves 64 x 512 without room).
- Dtypes: trained weights (rm, rm1b, ppo, logp) are float32 masters, whatever the compute dtype; decode and
  profile store the weights in the compute dtype, as a rollout copy would. The PPO reference model shares the
  actor's arrays (the same FLOPs, no second copy).
- Decode's HBM fraction counts what today's code reads per step: all weights and the whole (P+N)-slot cache.
  Its ms per step is one `generate` call over the steps it ran, the prefill included.
- `--smoke` sets jax_disable_most_optimizations and, on jaxlib 0.10, XLA:CPU's older fusion emitters, so its
  tiny programs compile in a fifth of the time: its numbers say the paths run, nothing about speed.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import statistics
import sys
import tarfile
import time
import traceback
from pathlib import Path

import benchlib  # first: puts this checkout on sys.path

SECTIONS = ("env", "attn", "rm", "rm1b", "decode", "logp", "ppo", "compile", "profile")
MODEL_SECTIONS = ("rm", "rm1b", "decode", "logp", "ppo", "compile", "profile")  # rows say which attention ran
MODEL_KW: dict = {}  # extra build_model arguments (`--attention`)
GiB = 2 ** 30

# (substring of device_kind, bf16 dense peak FLOP/s, HBM bytes/s); first match wins.
PEAKS = (
    ("H200", 989e12, 4.8e12),
    ("H100 PCIe", 756e12, 2.0e12),
    ("H100", 989e12, 3.35e12),
    ("v5 lite", 197e12, 8.2e11),  # TPU v5e reports itself as "TPU v5 lite"
    ("v5e", 197e12, 8.2e11),
)

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0,
               max_position_embeddings=8192, tie_word_embeddings=True)
LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5, rope_theta=500000.0,
                max_position_embeddings=131072, rope_type="llama3", rope_factor=32.0, rope_low_freq_factor=1.0,
                rope_high_freq_factor=4.0, rope_original_max_position_embeddings=8192, tie_word_embeddings=True)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=512,
            tie_word_embeddings=True)
TINY_1B = dict(TINY, intermediate_size=256, num_key_value_heads=1, rope_type="llama3", rope_factor=8.0,
               rope_original_max_position_embeddings=128)

FULL = dict(
    small=SMOLLM2, large=LLAMA_1B, repeats=5,
    attn=(8, 1024, 32, 8, 64),  # B, T, H, K, head_dim
    rm=(("f32_16x256", "float32", 16, 256, False), ("bf16_16x256", "bfloat16", 16, 256, False),
        ("bf16_64x512", "bfloat16", 64, 512, False), ("bf16_64x512_remat", "bfloat16", 64, 512, True)),
    rm1b=(("bf16_16x512", "bfloat16", 16, 512, False),),
    decode=(("bf16_b16", "bfloat16", 16), ("bf16_b256", "bfloat16", 256), ("f32_b256", "float32", 256)),
    prompt=128, new=128, logp_batch=16,
    ppo=dict(batch=64, prompt=128, new=128, minibatch=16),
    compile_pairs=16, compile_lengths=(64, 128, 192, 256),
    profile=dict(batch=16, prompt=128, new=32),
)
SMOKE = dict(
    small=TINY, large=TINY_1B, repeats=2,
    attn=(2, 64, 4, 2, 16),
    rm=(("f32_2x32", "float32", 2, 32, False), ("bf16_2x64_remat", "bfloat16", 2, 64, True)),
    rm1b=(("bf16_2x64", "bfloat16", 2, 64, False),),
    decode=(("bf16_b2", "bfloat16", 2), ("bf16_b4", "bfloat16", 4), ("f32_b4", "float32", 4)),
    prompt=16, new=8, logp_batch=2,
    ppo=dict(batch=4, prompt=16, new=16, minibatch=2),
    compile_pairs=2, compile_lengths=(16, 32),
    profile=dict(batch=2, prompt=16, new=4),
)

# What the closing table shows per section (each row also has everything else in results.jsonl).
SUMMARY = {
    "env": ("backend", "device_kind", "device_count", "memory_limit_gib"),
    "attn": ("ms", "tflops", "rel_diff_out", "rel_diff_dq"),
    "rm": ("ms", "pairs_per_s", "mfu_6n", "mfu_xla", "peak_gib", "program_gib", "compile_s"),
    "rm1b": ("ms", "pairs_per_s", "mfu_6n", "mfu_xla", "peak_gib", "program_gib", "compile_s"),
    "decode": ("ms_per_step", "tokens_per_s", "hbm_frac", "compile_s"),
    "logp": ("mean_abs_diff", "max_abs_diff", "n_tokens"),
    "ppo": ("ms", "mfu_6n", "mfu_xla", "float_per_metric_ms", "compile_s"),
    "compile": ("compile_s", "lower_s"),
    "profile": ("trace_mib", "ms"),
    "end": ("total_s",),
}


# ----------------------------------------------------------------------------- results file and budget

def _jsonable(x):
    """Plain JSON: numpy/jax scalars as Python numbers, non-finite floats as strings (still visible)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and getattr(x, "size", 1) == 1:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


class Run:
    """The results file, the clock and the budget, and the context every section gets."""

    def __init__(self, args, shapes: dict):
        self.args, self.shapes = args, shapes
        self.t0 = time.perf_counter()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "results.jsonl"
        self.file = open(self.path, "w")  # a fresh file per run; each line flushed as it is written
        self.rows: list[dict] = []
        self.peak_flops, self.peak_bw = None, None
        self.attention = args.attention or default_attention()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over_budget(self) -> bool:
        return self.elapsed() > self.args.budget_s

    def write(self, section: str, variant: str, status: str, **fields) -> dict:
        if section in MODEL_SECTIONS:
            fields = {"attention": self.attention, **fields}
        row = _jsonable({"section": section, "variant": variant, "status": status,
                         "t_s": round(self.elapsed(), 2), **fields})
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.rows.append(row)
        brief = ", ".join(f"{k}={_fmt(row.get(k))}" for k in SUMMARY.get(section, ()) if k in row)
        note = row.get("error") or row.get("reason") or ""
        print(f"[{row['t_s']:7.1f}s] {section}/{variant}: {status} {brief} {note}"[:400], flush=True)
        return row

    def measure(self, section: str, variant: str, fn, **tags) -> dict | None:
        """Runs one measurement `fn() -> fields`; an exception becomes an error line, the budget a skipped one."""
        if self.over_budget():
            self.write(section, variant, "skipped", reason=f"budget of {self.args.budget_s:.0f} s spent", **tags)
            return None
        try:
            fields = fn()
        except Exception as e:  # noqa: BLE001 (an OOM or a refused kernel is a result line, not the end)
            self.write(section, variant, "error", **tags, **error_fields(e))
            return None
        finally:
            gc.collect()
        return self.write(section, variant, "ok", **tags, **fields)


def error_fields(e: BaseException) -> dict:
    msg = f"{type(e).__name__}: {e}"
    oom = any(s in msg for s in ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "OOM"))
    tail = traceback.format_exception(type(e), e, e.__traceback__)
    return {"error": msg[:3000], "oom": oom, "traceback": "".join(tail)[-3000:]}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, float):
        return str(v)
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 1e-3:
        return f"{v:.3g}"
    return f"{v:.4g}" if abs(v) < 1 else f"{v:.1f}" if abs(v) >= 100 else f"{v:.2f}"


# ----------------------------------------------------------------------------- shared helpers

def dtype_of(name: str):
    from jaxrlhf.infra.precision import dtype_of as library_dtype_of  # JAX loads after the env is set

    return library_dtype_of(name)


def timed(fn, repeats: int):
    """(median seconds, all seconds, last output): one warm-up call, then `repeats` timed ones."""
    import jax

    out = jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def memory_fields(compiled=None) -> dict:
    """The device's memory counters (None where the backend keeps none) and the compiled program's size."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    out = {"peak_gib": stats["peak_bytes_in_use"] / GiB if "peak_bytes_in_use" in stats else None,
           "in_use_gib": stats["bytes_in_use"] / GiB if "bytes_in_use" in stats else None}
    if compiled is not None:
        try:
            m = compiled.memory_analysis()
            total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
            out.update(program_gib=total / GiB, temp_gib=m.temp_size_in_bytes / GiB)
        except Exception:  # noqa: BLE001 (not every backend implements memory_analysis)
            out.update(program_gib=None, temp_gib=None)
    return out


def cost_flops(stage) -> float | None:
    """`cost_analysis()["flops"]` of a Lowered or Compiled stage (a dict, or a one-element list on older JAX)."""
    try:
        ca = stage.cost_analysis()
    except Exception:  # noqa: BLE001 (some backends have no cost model)
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    flops = (ca or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None


def mfu(flops: float | None, seconds: float, peak: float | None) -> float | None:
    return None if flops is None or peak is None or seconds <= 0 else flops / seconds / peak


def unrolled_flops(num_layers: int, lower_for) -> tuple[float | None, float]:
    """(XLA's FLOPs of a step with `num_layers` unrolled layers, seconds taken). XLA's cost analysis counts a
    loop body once, so the scanned program's own figure misses all layers but one; lowering the whole step
    unrolled takes 5-10 s for 30 layers, so it is lowered (not compiled) with 1 and 2 unrolled layers of
    abstract weights, `lower_for(n) -> Lowered`, and extended linearly: F(L) = F(1) + (L - 1) (F(2) - F(1))."""
    t = time.perf_counter()
    f1, f2 = cost_flops(lower_for(1)), cost_flops(lower_for(2))
    flops = None if f1 is None or f2 is None else f1 + (num_layers - 1) * (f2 - f1)
    return flops, time.perf_counter() - t


def abstract_opt_state(optimizer, params):
    import jax

    return jax.eval_shape(optimizer.init, params)


def default_attention() -> str:
    """The attention implementation `build_model` uses when not told ("n/a" on a library without the choice)."""
    import inspect

    try:
        from jaxrlhf.models.registry import build_model
    except Exception:  # noqa: BLE001 (the sections will say what is wrong with the import)
        return "unknown"
    param = inspect.signature(build_model).parameters.get("attention")
    return "n/a" if param is None else str(param.default)


def build(spec: dict, task: str, dtype: str, param_dtype: str, *, remat: bool = False, scan: bool = True,
          abstract: bool = False, seed: int = 0):
    """(model, family Config): random weights in `spec`'s shapes through `models.registry.build_model`."""
    from flax import nnx

    from jaxrlhf.models.registry import build_model, family_for

    family = family_for("llama")
    cfg = family.Config(**spec)
    make = lambda: build_model(family, cfg, task, rngs=nnx.Rngs(seed), dtype=dtype_of(dtype),
                               param_dtype=dtype_of(param_dtype), scan_layers=scan, remat=remat, **MODEL_KW)
    return (nnx.eval_shape(make) if abstract else make()), cfg


def matmul_params(spec: dict) -> tuple[int, int]:
    """(backbone matmul parameters, LM-head parameters D*V) of a Llama-family config."""
    D, F, L = spec["hidden_size"], spec["intermediate_size"], spec["num_hidden_layers"]
    H, K, hd = spec["num_attention_heads"], spec["num_key_value_heads"], spec["head_dim"]
    per_layer = D * H * hd + 2 * D * K * hd + H * hd * D + 3 * D * F
    return L * per_layer, D * spec["vocab_size"]


def attn_flops_per_token(spec: dict, T: int) -> float:
    """Causal attention FLOPs per token of one forward pass: QK^T and PV over T/2 keys on average."""
    return 2.0 * spec["num_hidden_layers"] * spec["num_attention_heads"] * spec["head_dim"] * T


def n_params(state) -> int:
    import jax

    return sum(int(x.size) for x in jax.tree_util.tree_leaves(state))


def state_bytes(state) -> int:
    import jax

    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))


# ----------------------------------------------------------------------------- env

def section_env(run: Run):
    def fn():
        import jax

        devs = jax.devices()
        d0 = devs[0]
        kind = getattr(d0, "device_kind", "unknown")
        peak = next(((f, b) for sub, f, b in PEAKS if sub.lower() in kind.lower()), (None, None))
        run.peak_flops, run.peak_bw = peak
        stats = {}
        try:
            stats = d0.memory_stats() or {}
        except Exception:  # noqa: BLE001
            pass
        cudnn = None
        try:
            from jax._src.lib import cuda_versions  # private; absent on CPU/TPU wheels

            cudnn = cuda_versions.cudnn_get_version() if cuda_versions is not None else None
        except Exception:  # noqa: BLE001
            pass
        info = None
        try:
            info = jax.print_environment_info(return_string=True)
        except Exception:  # noqa: BLE001
            pass
        return dict(
            **benchlib.versions("jax", "jaxlib", "flax", "optax", "numpy"), python=sys.version.split()[0],
            backend=jax.default_backend(), device_kind=kind, platform=d0.platform, device_count=len(devs),
            local_device_count=jax.local_device_count(), process_count=jax.process_count(),
            device_kinds=sorted({getattr(d, "device_kind", "?") for d in devs}),
            memory_limit_gib=stats["bytes_limit"] / GiB if "bytes_limit" in stats else None,
            memory_stats={k: v for k, v in stats.items() if isinstance(v, (int, float))} or None,
            peak_flops_bf16=peak[0], peak_hbm_bytes_s=peak[1], cudnn_version=cudnn,
            xla_flags=os.environ.get("XLA_FLAGS", ""),
            env={k: v for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_", "TPU_", "CUDA_VISIBLE"))},
            default_matmul_precision=str(jax.config.jax_default_matmul_precision),
            compilation_cache=bool(jax.config.jax_enable_compilation_cache),
            git=benchlib.git_state(), smoke=run.args.smoke, budget_s=run.args.budget_s, repeats=run.shapes["repeats"],
            environment_info=info)

    run.measure("env", "-", fn)


# ----------------------------------------------------------------------------- attn

def section_attn(run: Run):
    import jax
    import jax.numpy as jnp

    from jaxrlhf.models.attention import dot_product_attention

    B, T, H, K, D = run.shapes["attn"]
    dt = jnp.bfloat16
    kq, kk, kv, kg = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(kq, (B, T, H, D), dt)
    k = jax.random.normal(kk, (B, T, K, D), dt)
    v = jax.random.normal(kv, (B, T, K, D), dt)
    g = jax.random.normal(kg, (B, T, H, D), dt)
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), jnp.bool_)), (B, T, T))
    impls = {
        "jaxrlhf": lambda q, k, v, m: dot_product_attention(q, k, v, m),
        **library_kernels(B, T),
        "nn_default": lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=None),
        "nn_xla": lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla"),
        "nn_cudnn": lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn"),
    }
    fwd_flops = 4.0 * B * H * T * T * D / 2  # causal: half the QK^T and PV products are useful
    total_flops = 3.5 * fwd_flops  # backward = 2.5x forward (FlashAttention's convention)
    reference = {}
    tags = dict(B=B, T=T, H=H, K=K, D=D, dtype="bfloat16")

    def make(name):
        f = impls[name]

        def loss(q, k, v, m, g):
            out = f(q, k, v, m)
            return jnp.sum(out.astype(jnp.float32) * g.astype(jnp.float32)), out

        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))

        def fn():
            t = time.perf_counter()
            compiled = step.lower(q, k, v, mask, g).compile()
            compile_s = time.perf_counter() - t
            sec, times, ((_, out), (dq, _, _)) = timed(lambda: compiled(q, k, v, mask, g), run.shapes["repeats"])
            out, dq = out.astype(jnp.float32), dq.astype(jnp.float32)
            if name == "jaxrlhf":
                reference.update(out=out, dq=dq)
            rel = lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))
            return dict(ms=sec * 1e3, times_ms=[x * 1e3 for x in times], tflops=total_flops / sec / 1e12,
                        compile_s=compile_s, flops=total_flops,
                        rel_diff_out=rel(out, reference["out"]) if reference else None,
                        rel_diff_dq=rel(dq, reference["dq"]) if reference else None,
                        finite=bool(jnp.isfinite(out).all() & jnp.isfinite(dq).all()), **memory_fields(compiled))
        return fn

    needs = {"cudnn": "gpu", "splash": "tpu"}
    for name in impls:
        kernel = name.rsplit("_", 1)[-1]
        if kernel in needs and jax.default_backend() != needs[kernel]:
            run.write("attn", name, "skipped", reason=f"{kernel} needs a {needs[kernel].upper()}; backend is "
                                                      f"{jax.default_backend()}", **tags)
            continue
        run.measure("attn", name, make(name), **tags)


def library_kernels(B: int, T: int) -> dict:
    """jaxrlhf's own kernel choices (`dot_product_attention(implementation=...)`, models.attention
    IMPLEMENTATIONS), as `jaxrlhf_<name>` variants told the mask is causal with no padding; none on a library
    without the choice."""
    import inspect

    import jax.numpy as jnp

    from jaxrlhf.models import attention

    params = inspect.signature(attention.dot_product_attention).parameters
    if "implementation" not in params:
        return {}
    structure = {}
    if "key_mask_BxS" in params:
        structure["key_mask_BxS"] = jnp.ones((B, T), jnp.bool_)
    if "causal" in params:
        structure["causal"] = True

    def kernel(impl):
        return lambda q, k, v, m: attention.dot_product_attention(q, k, v, m, implementation=impl, **structure)

    return {f"jaxrlhf_{impl}": kernel(impl) for impl in getattr(attention, "IMPLEMENTATIONS", ())
            if impl != "default"}


# ----------------------------------------------------------------------------- rm, rm1b, compile

def rm_batch(pairs: int, T: int, vocab: int, seed: int = 0) -> dict:
    """Random token pairs: chosen rows full length, every other rejected row right-padded by a quarter."""
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    chosen = rng.integers(1, vocab, (pairs, T)).astype(np.int32)
    rejected = rng.integers(1, vocab, (pairs, T)).astype(np.int32)
    c_mask = np.ones((pairs, T), np.int32)
    r_mask = np.ones((pairs, T), np.int32)
    r_mask[::2, T - T // 4:] = 0
    batch = {"chosen_ids_BxT": chosen, "rejected_ids_BxT": rejected * r_mask, "chosen_mask_BxT": c_mask,
             "rejected_mask_BxT": r_mask, "weight_B": np.ones(pairs, np.float32),
             "margin_B": np.zeros(pairs, np.float32), "chosen_len_B": c_mask.sum(1).astype(np.int32),
             "rejected_len_B": r_mask.sum(1).astype(np.int32)}
    return {k: jnp.asarray(v) for k, v in batch.items()}


def rm_setup(spec: dict, dtype: str, remat: bool):
    """(graphdef, frozen, state, step factory, optimizer) of a full-FT reward model, float32 masters, AdamW."""
    from jaxrlhf.configs.base import optim_block, rm_defaults
    from jaxrlhf.rm.step import make_train_step
    from jaxrlhf.training.optim import make_optimizer
    from jaxrlhf.training.run_setup import init_train_state
    from jaxrlhf.training.trainable import split_trainable

    model, _ = build(spec, "reward", dtype, "float32", remat=remat)
    graphdef, trainable, frozen = split_trainable(model, "full")
    optimizer, schedule = make_optimizer(optim_block(), 1000)
    state = init_train_state(trainable, optimizer)
    loss_cfg = rm_defaults().loss
    make_step = lambda gd: make_train_step(gd, loss_cfg, optimizer, schedule)
    return graphdef, frozen, state, make_step, optimizer


def rm_measure(run: Run, spec: dict, dtype: str, pairs: int, T: int, remat: bool) -> dict:
    import jax

    from jaxrlhf.training.trainable import split_trainable

    graphdef, frozen, state, make_step, optimizer = rm_setup(spec, dtype, remat)
    batch = rm_batch(pairs, T, spec["vocab_size"])
    key = jax.random.key(0)
    t = time.perf_counter()
    compiled = jax.jit(make_step(graphdef), donate_argnums=(0,)).lower(state, frozen, batch, key).compile()
    compile_s = time.perf_counter() - t
    flops_compiled = cost_flops(compiled)

    def lower_for(n):
        model, _ = build(dict(spec, num_hidden_layers=n), "reward", dtype, "float32", remat=remat, scan=False,
                         abstract=True)
        gd, tr, fr = split_trainable(model, "full")
        st = {"params": tr, "opt_state": abstract_opt_state(optimizer, tr), "step": state["step"]}
        return jax.jit(make_step(gd)).lower(st, fr, batch, key)

    flops_unrolled, unrolled_lower_s = unrolled_flops(spec["num_hidden_layers"], lower_for)
    holder = {"state": state}

    def call():
        holder["state"], metrics = compiled(holder["state"], frozen, batch, key)
        return metrics

    sec, times, metrics = timed(call, run.shapes["repeats"])
    metrics = jax.device_get(metrics)
    nb, _ = matmul_params(spec)
    tokens = 2 * pairs * T
    flops_6n = 6.0 * nb * tokens
    flops_attn = 3.0 * attn_flops_per_token(spec, T) * tokens
    return dict(dtype=dtype, param_dtype="float32", pairs=pairs, T=T, remat=remat, ms=sec * 1e3,
                times_ms=[x * 1e3 for x in times], pairs_per_s=pairs / sec, tokens_per_s=tokens / sec,
                n_params=n_params(holder["state"]["params"]), n_matmul_params=nb, flops_6n=flops_6n,
                flops_attn=flops_attn, flops_xla_compiled=flops_compiled, flops_xla_unrolled=flops_unrolled,
                mfu_6n=mfu(flops_6n, sec, run.peak_flops), mfu_6n_attn=mfu(flops_6n + flops_attn, sec, run.peak_flops),
                mfu_xla=mfu(flops_unrolled, sec, run.peak_flops), compile_s=compile_s,
                unrolled_lower_s=unrolled_lower_s, loss=float(metrics["loss"]),
                nonfinite=float(metrics["nonfinite"]), grad_norm=float(metrics["grad_norm"]),
                **memory_fields(compiled))


def section_rm(run: Run, name: str = "rm", spec_key: str = "small"):
    spec = run.shapes[spec_key]
    for variant, *shape in run.shapes[name]:
        run.measure(name, variant, lambda shape=shape: rm_measure(run, spec, *shape))


def section_rm1b(run: Run):
    section_rm(run, "rm1b", "large")


def section_compile(run: Run):
    import jax

    spec = run.shapes["small"]
    pairs = run.shapes["compile_pairs"]
    setup = {}

    def fn(T):
        if not setup:
            setup["rm"] = rm_setup(spec, "bfloat16", False)
        graphdef, frozen, state, make_step, _ = setup["rm"]
        batch = rm_batch(pairs, T, spec["vocab_size"])
        t = time.perf_counter()
        lowered = jax.jit(make_step(graphdef), donate_argnums=(0,)).lower(state, frozen, batch, jax.random.key(0))
        lower_s = time.perf_counter() - t
        lowered.compile()
        return dict(dtype="bfloat16", pairs=pairs, T=T, lower_s=lower_s, compile_s=time.perf_counter() - t)

    for T in run.shapes["compile_lengths"]:
        run.measure("compile", f"rm_bf16_T{T}", lambda T=T: fn(T))


# ----------------------------------------------------------------------------- decode, logp, profile

def prompts(batch: int, P: int, vocab: int, seed: int = 1):
    """Random left-padded prompts: a quarter of the rows start P/4 tokens late."""
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (batch, P)).astype(np.int32)
    mask = np.ones((batch, P), np.int32)
    mask[::4, :P // 4] = 0
    return jnp.asarray(ids * mask), jnp.asarray(mask)


def section_decode(run: Run):
    import jax
    from flax import nnx

    from jaxrlhf.rl.sampling import SamplingConfig, generate

    spec, P, N = run.shapes["small"], run.shapes["prompt"], run.shapes["new"]
    models = {}

    def fn(dtype, B):
        if dtype not in models:
            models.clear()
            gc.collect()
            model, _ = build(spec, "causal_lm", dtype, dtype)  # a rollout copy: weights stored in the compute dtype
            models[dtype] = (nnx.split(model), model.backbone)
        split, backbone = models[dtype]
        ids, mask = prompts(B, P, spec["vocab_size"])
        cfg = SamplingConfig(max_new_tokens=N, temperature=1.0, eos_ids=(), pad_id=0)
        keys = iter(jax.random.split(jax.random.key(0), 1000))
        call = lambda: generate(split, ids, mask, next(keys), cfg)
        t = time.perf_counter()
        jax.block_until_ready(call())
        first_s = time.perf_counter() - t
        sec, times, out = timed(call, run.shapes["repeats"])
        steps = int(out["num_steps"])
        weight_bytes = state_bytes(split[1])
        cache = jax.eval_shape(lambda: backbone.init_cache(B, P + N))
        cache_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(cache))
        per_step = sec / steps
        bytes_per_step = weight_bytes + cache_bytes
        return dict(dtype=dtype, param_dtype=dtype, B=B, P=P, N=N, num_steps=steps, ms=sec * 1e3,
                    times_ms=[x * 1e3 for x in times], ms_per_step=per_step * 1e3, tokens_per_s=B * steps / sec,
                    first_call_s=first_s, compile_s=max(first_s - sec, 0.0), weight_bytes=weight_bytes,
                    cache_bytes=cache_bytes, bytes_per_step=bytes_per_step,
                    hbm_frac=None if run.peak_bw is None else bytes_per_step / per_step / run.peak_bw,
                    generated_tokens=int(out["response_mask_BxN"].sum()), **memory_fields())

    for variant, dtype, B in run.shapes["decode"]:
        run.measure("decode", variant, lambda dtype=dtype, B=B: fn(dtype, B),
                    note="ms per step includes the prefill, spread over the steps")
    models.clear()


def section_logp(run: Run):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxrlhf.rl.experience import response_logprobs
    from jaxrlhf.rl.rollout import make_sample_fn
    from jaxrlhf.rl.sampling import SamplingConfig
    from jaxrlhf.training.trainable import split_trainable

    spec, P, N, B = run.shapes["small"], run.shapes["prompt"], run.shapes["new"], run.shapes["logp_batch"]
    temperature = 1.0

    def fn(dtype):
        # The PPO actor: compute dtype as named, float32 masters (what the rollout samples from).
        model, _ = build(spec, "causal_lm", dtype, "float32")
        graphdef, trainable, frozen = split_trainable(model, "full")
        sample = make_sample_fn(graphdef, SamplingConfig(max_new_tokens=N, temperature=temperature, eos_ids=(),
                                                         pad_id=0))
        ids, mask = prompts(B, P, spec["vocab_size"])
        rollout = jax.block_until_ready(sample((trainable, frozen), ids, mask, jax.random.key(0)))

        @jax.jit
        def recompute(actor, r):  # what the experience step computes as old_logp (`rl.experience`)
            return response_logprobs(nnx.merge(graphdef, *actor), r["ids_BxT"], r["mask_BxT"], r["response_ids_BxN"],
                                     temperature)

        logp = recompute((trainable, frozen), rollout)
        m = rollout["response_mask_BxN"].astype(jnp.float32)
        diff = jnp.abs(rollout["sample_logp_BxN"] - logp) * m
        n = float(m.sum())
        return dict(dtype=dtype, param_dtype="float32", B=B, P=P, N=N, temperature=temperature, n_tokens=int(n),
                    mean_abs_diff=float(diff.sum()) / max(n, 1.0), max_abs_diff=float(diff.max()),
                    mean_logp=float((logp * m).sum()) / max(n, 1.0),
                    finite=bool(jnp.isfinite(logp).all() & jnp.isfinite(rollout["sample_logp_BxN"]).all()))

    for dtype in ("bfloat16", "float32"):
        run.measure("logp", {"bfloat16": "bf16", "float32": "f32"}[dtype], lambda dtype=dtype: fn(dtype))


def section_profile(run: Run):
    import jax
    from flax import nnx

    from jaxrlhf.rl.sampling import SamplingConfig, generate

    spec, shp = run.shapes["small"], run.shapes["profile"]
    B, P, N = shp["batch"], shp["prompt"], shp["new"]
    trace_dir = run.out / "profile"
    tgz = run.out / "trace.tgz"
    if run.over_budget():
        run.write("profile", "generate", "skipped", reason=f"budget of {run.args.budget_s:.0f} s spent")
        return
    try:
        model, _ = build(spec, "causal_lm", "bfloat16", "bfloat16")
        split = nnx.split(model)
        ids, mask = prompts(B, P, spec["vocab_size"])
        cfg = SamplingConfig(max_new_tokens=N, temperature=1.0, eos_ids=(), pad_id=0)
        jax.block_until_ready(generate(split, ids, mask, jax.random.key(0), cfg))  # compile outside the trace
    except Exception as e:  # noqa: BLE001
        run.write("profile", "generate", "error", **error_fields(e))
        return
    try:
        shutil.rmtree(trace_dir, ignore_errors=True)
        t = time.perf_counter()
        with jax.profiler.trace(str(trace_dir)):
            jax.block_until_ready(generate(split, ids, mask, jax.random.key(1), cfg))
        sec = time.perf_counter() - t
        with tarfile.open(tgz, "w:gz") as tar:
            tar.add(trace_dir, arcname="profile")
        files = sorted(str(p.relative_to(trace_dir)) for p in trace_dir.rglob("*") if p.is_file())
        shutil.rmtree(trace_dir, ignore_errors=True)  # the tarball holds it
    except Exception as e:  # noqa: BLE001 (no profiler in this jaxlib, or it failed: skipped, not an error)
        run.write("profile", "generate", "skipped", reason=f"jax.profiler.trace failed: {type(e).__name__}: {e}"[:2000])
        return
    run.write("profile", "generate", "ok", B=B, P=P, N=N, dtype="bfloat16", ms=sec * 1e3, trace=str(tgz),
              trace_mib=tgz.stat().st_size / 2 ** 20, trace_files=files[:50])


# ----------------------------------------------------------------------------- ppo

def section_ppo(run: Run):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxrlhf.configs.base import constant_optim_block
    from jaxrlhf.ops import whitening
    from jaxrlhf.rl.experience import AdvantageConfig, make_experience_fn
    from jaxrlhf.rl.ppo_step import PPOLossConfig, make_update_step
    from jaxrlhf.rl.rewards import RewardShaping
    from jaxrlhf.training.optim import init_opt_state, make_optimizer
    from jaxrlhf.training.trainable import split_trainable

    spec, shp = run.shapes["small"], run.shapes["ppo"]
    B, P, N, M = shp["batch"], shp["prompt"], shp["new"], shp["minibatch"]
    T = P + N
    dtype = "bfloat16"
    nb, nlm = matmul_params(spec)
    attn_tok = attn_flops_per_token(spec, T)
    s: dict = {}

    def models(layers=None):
        """Actor and critic split (graphdef, trainable, frozen); with `layers`: abstract and unrolled."""
        sp, kw = (spec, {}) if layers is None else (dict(spec, num_hidden_layers=layers), dict(scan=False,
                                                                                             abstract=True))
        actor, _ = build(sp, "causal_lm", dtype, "float32", seed=0, **kw)
        critic, _ = build(sp, "value", dtype, "float32", seed=1, **kw)
        return split_trainable(actor, "full"), split_trainable(critic, "full")

    def rollout_batch():
        rng = np.random.default_rng(2)
        ids, mask = prompts(B, P, spec["vocab_size"])
        resp = rng.integers(1, spec["vocab_size"], (B, N)).astype(np.int32)
        resp_mask = np.ones((B, N), np.int32)
        resp_mask[1::2, N - N // 4:] = 0  # half the rows end early
        resp = resp * resp_mask
        batch = {"ids_BxT": jnp.concatenate([ids, resp], 1), "mask_BxT": jnp.concatenate([mask, resp_mask], 1),
                 "response_ids_BxN": resp, "response_mask_BxN": resp_mask, "ended_B": (resp_mask[:, -1] == 0),
                 "sample_logp_BxN": np.zeros((B, N), np.float32)}
        batch["ended_B"] = batch["ended_B"].astype(np.int32)
        return {k: jnp.asarray(v) for k, v in batch.items()}

    def experience():
        (a_def, a_tr, a_fr), (c_def, c_tr, c_fr) = models()
        s.update(a_def=a_def, a_tr=a_tr, a_fr=a_fr, c_def=c_def, c_tr=c_tr, c_fr=c_fr)
        make = lambda ad, cd: make_experience_fn(ad, ad, cd, temperature=1.0, shaping=RewardShaping(),
                                                 advantages=AdvantageConfig())
        batch = rollout_batch()
        score = jax.random.normal(jax.random.key(3), (B,), jnp.float32)
        args = ((a_tr, a_fr), (a_tr, a_fr), (c_tr, c_fr), batch, score, jnp.float32(0.05),
                whitening.RunningMoments.init())  # the reference shares the actor's arrays (same FLOPs, no copy)
        t = time.perf_counter()
        compiled = jax.jit(make(a_def, c_def)).lower(*args).compile()
        compile_s = time.perf_counter() - t

        def lower_for(n):
            (ua, ua_tr, ua_fr), (uc, uc_tr, uc_fr) = models(n)
            return jax.jit(make(ua, uc)).lower((ua_tr, ua_fr), (ua_tr, ua_fr), (uc_tr, uc_fr), *args[3:])

        flops_unrolled, unrolled_lower_s = unrolled_flops(spec["num_hidden_layers"], lower_for)
        sec, times, (exp, _, metrics) = timed(lambda: compiled(*args), run.shapes["repeats"])
        s["exp"] = exp
        flops = 3 * 2.0 * nb * B * T + 2 * 2.0 * nlm * B * N  # actor, ref, critic forwards; LM head on responses
        flops_attn = 3 * attn_tok * B * T
        return dict(dtype=dtype, param_dtype="float32", B=B, P=P, N=N, ms=sec * 1e3, times_ms=[x * 1e3 for x in times],
                    tokens_per_s=B * T / sec, flops_6n=flops, flops_attn=flops_attn,
                    flops_xla_compiled=cost_flops(compiled), flops_xla_unrolled=flops_unrolled,
                    mfu_6n=mfu(flops, sec, run.peak_flops), mfu_6n_attn=mfu(flops + flops_attn, sec, run.peak_flops),
                    mfu_xla=mfu(flops_unrolled, sec, run.peak_flops), compile_s=compile_s,
                    unrolled_lower_s=unrolled_lower_s, entropy=float(metrics["entropy"]), **memory_fields(compiled))

    def update():
        if "exp" not in s:
            raise RuntimeError("the experience step did not run, so there is no minibatch to update on")
        actor_opt, _ = make_optimizer(constant_optim_block(1e-6), 1000)
        critic_opt, _ = make_optimizer(constant_optim_block(5e-6), 1000)
        state = {"actor": {"params": s["a_tr"], "opt_state": init_opt_state(actor_opt, s["a_tr"])},
                 "critic": {"params": s["c_tr"], "opt_state": init_opt_state(critic_opt, s["c_tr"])},
                 "step": jnp.zeros((), jnp.int32)}
        mb = {k: v[:M] for k, v in s.pop("exp").items()}
        cfg = PPOLossConfig()

        def lower_for(n):
            (ua, ua_tr, ua_fr), (uc, uc_tr, uc_fr) = models(n)
            st = {"actor": {"params": ua_tr, "opt_state": abstract_opt_state(actor_opt, ua_tr)},
                  "critic": {"params": uc_tr, "opt_state": abstract_opt_state(critic_opt, uc_tr)},
                  "step": state["step"]}
            return jax.jit(make_update_step(ua, uc, actor_opt, critic_opt, cfg)).lower(st, ua_fr, uc_fr, mb)

        flops_unrolled, unrolled_lower_s = unrolled_flops(spec["num_hidden_layers"], lower_for)
        t = time.perf_counter()
        compiled = jax.jit(make_update_step(s["a_def"], s["c_def"], actor_opt, critic_opt, cfg),
                           donate_argnums=(0,)).lower(state, s["a_fr"], s["c_fr"], mb).compile()
        compile_s = time.perf_counter() - t
        holder = {"state": state}

        def call():
            holder["state"], metrics = compiled(holder["state"], s["a_fr"], s["c_fr"], mb)
            return metrics

        sec, times, metrics = timed(call, run.shapes["repeats"])
        t = time.perf_counter()
        values = [float(v) for v in metrics.values()]  # what the host loop does with each metric
        float_ms = (time.perf_counter() - t) * 1e3 / max(len(values), 1)
        flops = 2 * 6.0 * nb * M * T + 6.0 * nlm * M * N  # actor and critic fwd+bwd; LM head on responses
        flops_attn = 2 * 3 * attn_tok * M * T
        return dict(dtype=dtype, param_dtype="float32", M=M, P=P, N=N, ms=sec * 1e3, times_ms=[x * 1e3 for x in times],
                    tokens_per_s=M * T / sec, flops_6n=flops, flops_attn=flops_attn,
                    flops_xla_compiled=cost_flops(compiled), flops_xla_unrolled=flops_unrolled,
                    mfu_6n=mfu(flops, sec, run.peak_flops), mfu_6n_attn=mfu(flops + flops_attn, sec, run.peak_flops),
                    mfu_xla=mfu(flops_unrolled, sec, run.peak_flops), compile_s=compile_s,
                    unrolled_lower_s=unrolled_lower_s, float_per_metric_ms=float_ms, n_metrics=len(values),
                    nonfinite=float(metrics["nonfinite"]), policy_loss=float(metrics["policy_loss"]),
                    **memory_fields(compiled))

    run.measure("ppo", f"experience_b{B}_t{T}", experience)
    run.measure("ppo", f"update_m{M}", update)
    s.clear()


# ----------------------------------------------------------------------------- main

RUNNERS = {"env": section_env, "attn": section_attn, "rm": section_rm, "rm1b": section_rm1b,
           "decode": section_decode, "logp": section_logp, "ppo": section_ppo, "compile": section_compile,
           "profile": section_profile}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default="device_check_out", help="folder for results.jsonl (rewritten) and trace.tgz")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated, from {','.join(SECTIONS)} (env always runs first: it finds the peaks)")
    p.add_argument("--budget_s", type=float, default=480.0, help="past this many seconds the rest is skipped")
    p.add_argument("--repeats", type=int, default=0, help="timed calls per measurement (0: 5, or 2 with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes (2 layers, hidden 64, vocab 512): any CPU")
    p.add_argument("--attention", default="", help="build_model's attention= for every model (default: the "
                   "library's default); the attn section times each choice on its own")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {','.join(SECTIONS)}")
    return args


def print_table(rows: list[dict]) -> None:
    lines = benchlib.table(
        ["section", "variant", "status", "measured"],
        [[r["section"], r["variant"], r["status"],
          ", ".join(f"{k} {_fmt(r.get(k))}" for k in SUMMARY.get(r["section"], ()) if k in r)
          or (r.get("error") or r.get("reason") or "")[:120]] for r in rows])
    print("\n" + "\n".join(lines), flush=True)


def smoke_compile_settings() -> None:
    """Fewer XLA optimisations, and (on the jaxlib it was measured on, 0.10) the older CPU fusion emitters:
    an RM step compiled in 1.5 s instead of 8-11 s on a 2-core machine. Only the two together help. The flag is
    set only on jaxlib 0.10.x: XLA refuses to start on a flag it no longer knows."""
    from importlib import metadata

    flag = "--xla_cpu_use_fusion_emitters=false"
    try:
        jaxlib = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        jaxlib = ""
    flags = os.environ.get("XLA_FLAGS", "")
    if jaxlib.startswith("0.10.") and "xla_cpu_use_fusion_emitters" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
    import jax

    jax.config.update("jax_disable_most_optimizations", True)


def main(argv=None) -> int:
    args = parse_args(argv)
    # Before JAX starts: let a GPU's preallocated pool take 92% of HBM instead of 75% (64x512 needs room).
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    shapes = dict(SMOKE if args.smoke else FULL)
    if args.repeats > 0:
        shapes["repeats"] = args.repeats
    if args.smoke:  # it checks this script's paths, not speed: XLA:CPU compiles ~5x faster this way
        smoke_compile_settings()
    import jax

    jax.config.update("jax_enable_compilation_cache", False)  # compile seconds are cold ones, on every rerun
    if args.attention:
        MODEL_KW["attention"] = args.attention
    run = Run(args, shapes)
    sections = ["env", *(s for s in args.sections if s != "env")]  # first: the others need its peak table
    for name in sections:
        if run.over_budget():
            run.write(name, "-", "skipped", reason=f"budget of {args.budget_s:.0f} s spent")
            continue
        try:
            RUNNERS[name](run)
        except Exception as e:  # noqa: BLE001 (a section's setup failed, e.g. an import: the next one runs)
            run.write(name, "-", "error", **error_fields(e))
        gc.collect()
    run.write("end", "-", "ok", total_s=run.elapsed(), sections=sections, out=str(run.path))
    run.file.close()
    print_table(run.rows)
    print(f"\nresults: {run.path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
