"""The least a decode step of SmolLM2-135M can cost here: its dense products alone, jitted, float32.

One step at R rows is 30 layers of [R, 576] products with the q, k, v, o, gate, up and down weights, then the
[576, 49152] LM head: no attention, norms, cache or sampling. Its time bounds the tokens/s any sampler of this
model reaches on this machine (`scripts/bench_rollout.py` measures the real ones).

    python scripts/roof_decode.py --rows 64 8
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

D, F, KV, LAYERS, VOCAB = 576, 1536, 192, 30, 49152  # SmolLM2-135M: hidden, MLP, k/v width (3 heads of 64)


def step_fn():
    def layer(x_RxD, w):
        q, k, v, o, gate, up, down = w
        kv_RxD = jnp.pad(x_RxD @ k + x_RxD @ v, ((0, 0), (0, D - KV)))  # same products, shapes kept simple
        x_RxD = x_RxD + (x_RxD @ q + kv_RxD) @ o
        return x_RxD + (jax.nn.silu(x_RxD @ gate) * (x_RxD @ up)) @ down, None

    @jax.jit
    def step(x_RxD, layers, head_DxV):
        x_RxD, _ = jax.lax.scan(layer, x_RxD, layers)
        return x_RxD @ head_DxV

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[64, 8], help="rows decoded at once")
    p.add_argument("--new", type=int, default=64, help="tokens per row, for the tokens/s bound")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    key = jax.random.key(0)
    shapes = [(D, D), (D, KV), (D, KV), (D, D), (D, F), (D, F), (F, D)]
    layers = tuple(jax.random.normal(jax.random.fold_in(key, i), (LAYERS, *s), jnp.float32) * 0.02
                   for i, s in enumerate(shapes))
    head = jax.random.normal(jax.random.fold_in(key, 99), (D, VOCAB), jnp.float32) * 0.02
    step = step_fn()
    print("| rows | median ms a step | best ms | GFLOP/s | tokens/s at most |\n|---|---|---|---|---|")
    for rows in args.rows:
        x = jax.random.normal(key, (rows, D), jnp.float32)
        jax.block_until_ready(step(x, layers, head))
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            jax.block_until_ready(step(x, layers, head))
            times.append(time.perf_counter() - t)
        med = float(np.median(times))
        flops = 2 * rows * (LAYERS * (2 * D * D + 2 * D * KV + 3 * D * F) + D * VOCAB)
        print(f"| {rows} | {med * 1e3:.1f} | {min(times) * 1e3:.1f} | {flops / med / 1e9:.0f} | {rows / med:.0f} |")


if __name__ == "__main__":
    main()
