"""Throughput of the reward-model server (`jaxrlhf.serve`): 32 concurrent clients, with dynamic batching and
with `max_batch=1` (one text per forward pass, as a server without batching scores them).

    python scripts/bench_serve.py                         # the tiny random Llama RM of the tests, 10 s a setting
    python scripts/bench_serve.py --model=DIR --seconds=30 --max_length=256
    python scripts/bench_serve.py --seconds=3             # smoke run

Each setting runs a real uvicorn server on a free 127.0.0.1 port in this process (the app of
`jaxrlhf.rm.serving.create_app`) and `--clients` threads, each posting one-text `/score` requests back to
back over HTTP. A warm-up phase of `--warmup` seconds of the same load comes first, so the width buckets
are compiled before the clock starts; texts/s counts the answered texts of the timed phase. Prints a
markdown table (texts/s, latency percentiles, texts per forward pass from the batcher's counters).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import benchlib  # noqa: F401 - puts this checkout on sys.path (jaxrlhf, tests.helpers), before they are imported
import numpy as np

WORDS = "one two three four five red green blue hello world good bad yes no what why a b c".split()


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24))) for _ in range(n)]


def run_setting(rm, max_batch: int, max_wait_ms: float, args) -> dict:
    import uvicorn

    from jaxrlhf.rm.serving import create_app
    from tests.helpers.processes import free_port

    app = create_app(rm, max_batch=max_batch, max_wait_ms=max_wait_ms, max_length=args.max_length, warmup=True)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/score"
    pool = texts(256)
    phase = {"timed": False, "stop": False}
    latencies: list[float] = []
    done = [0]
    lock = threading.Lock()

    def client(i: int) -> None:
        k = i
        while not phase["stop"]:
            body = json.dumps({"texts": [pool[k % len(pool)]]}).encode()
            start = time.perf_counter()
            with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=120) as response:
                json.loads(response.read())
            if phase["timed"] and not phase["stop"]:
                with lock:
                    latencies.append(time.perf_counter() - start)
                    done[0] += 1
            k += args.clients

    workers = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for w in workers:
        w.start()
    time.sleep(args.warmup)
    before = app.state.batcher.snapshot()
    phase["timed"], t0 = True, time.perf_counter()
    time.sleep(args.seconds)
    phase["stop"], elapsed = True, time.perf_counter() - t0
    after = app.state.batcher.snapshot()
    for w in workers:
        w.join()
    server.should_exit = True
    thread.join(30)
    batches = max(after["batches"] - before["batches"], 1)
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "texts_per_s": done[0] / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "texts_per_pass": (after["rows"] - before["rows"]) / batches}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="", help="an export or train_rm workdir (default: a tiny random Llama RM)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per setting")
    p.add_argument("--warmup", type=float, default=3.0, help="untimed seconds of load first (compilation)")
    p.add_argument("--max_batch", type=int, default=32)
    p.add_argument("--max_wait_ms", type=float, default=10.0)
    p.add_argument("--max_length", type=int, default=128)
    args = p.parse_args()

    from jaxrlhf.rm.load import load_trained_rm

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if not model:
            from tests.helpers.models import make_tiny_llama_dir

            model = str(make_tiny_llama_dir(Path(tmp) / "tiny_rm"))  # random head: speed is what is measured
        rm = load_trained_rm(model)
        rows = [run_setting(rm, args.max_batch, args.max_wait_ms, args), run_setting(rm, 1, 0.0, args)]
    print(f"\nmodel: {args.model or 'tiny random Llama (tests.helpers.models)'}; {args.clients} clients, one text a "
          f"request, max_length {args.max_length}, {args.seconds:g} s timed after {args.warmup:g} s warm-up\n")
    print("| setting | texts/s | p50 latency (ms) | p95 latency (ms) | texts per forward pass |")
    print("|---|---|---|---|---|")
    for row, name in zip(rows, ("batched", "one at a time")):
        print(f"| {name} (max_batch={row['max_batch']}, max_wait_ms={row['max_wait_ms']:g}) | "
              f"{row['texts_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['texts_per_pass']:.1f} |")
    print(f"\nspeed-up from batching: {rows[0]['texts_per_s'] / max(rows[1]['texts_per_s'], 1e-9):.1f}x")


if __name__ == "__main__":
    main()
