"""Compile time and forward+backward step time of the backbones on this machine.

    python scripts/bench_models.py [--models minilm,smollm2] [--batch 8] [--seq 128] [--steps 5]

For each model and for scanned vs unrolled layers: the seconds of the first call (tracing +
compilation + one step) and the median of the following steps, for a scalar loss on the reward head
(what reward-model training runs). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import benchlib  # first: puts this checkout on sys.path
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.models.hub import from_pretrained


def bench(name: str, scan: bool, batch: int, seq: int, steps: int) -> dict:
    loaded = from_pretrained(name, "reward", scan_layers=scan)
    graphdef, params = nnx.split(loaded.model)
    vocab = loaded.hf_config["vocab_size"]
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(5, vocab, (batch, seq)), jnp.int32)
    mask = jnp.ones((batch, seq), jnp.int32)

    @jax.jit
    def step(p):
        def loss(p):
            return jnp.mean(nnx.merge(graphdef, p)(ids, mask) ** 2)

        return jax.value_and_grad(loss)(p)

    t0 = time.perf_counter()
    jax.block_until_ready(step(params))
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(step(params))
        times.append(time.perf_counter() - t0)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    return {"model": name, "layers": "scanned" if scan else "unrolled", "params_M": n_params / 1e6,
            "first_call_s": first, "step_s": statistics.median(times),
            "tokens_per_s": batch * seq / statistics.median(times)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    rows = [bench(m, scan, args.batch, args.seq, args.steps) for m in args.models.split(",") for scan in (True, False)]
    print(f"\nforward+backward, batch {args.batch} x {args.seq} tokens, float32, {jax.devices()[0].platform}, "
          f"jax {jax.__version__}\n")
    print("\n".join(benchlib.table(
        ["model", "layers", "params (M)", "first call (s)", "step (s)", "tokens/s"],
        [[r["model"], r["layers"], f"{r['params_M']:.1f}", f"{r['first_call_s']:.2f}", f"{r['step_s']:.3f}",
          f"{r['tokens_per_s']:.0f}"] for r in rows])))


if __name__ == "__main__":
    main()
