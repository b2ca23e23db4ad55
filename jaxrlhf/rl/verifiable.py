"""Programmatic rewards: functions of (prompt, response, row) -> float, scored on the host.

    rewards.functions = "exact_match=1.0,format=0.1,mypkg.rewards:brevity=0.5"

Each entry is a built-in name or an importable `module:function`, with an optional weight (default 1);
the reward is the weighted sum, plus the reward model's score times `rewards.rm_weight` when one is given.
`row` is the prompt's data row (the arithmetic task's rows carry `answer`). A function that cannot be
imported, or raises on a row, is a one-line error naming it and the row.

The functions run in a thread pool: those that wait (a sandbox, a subprocess, an HTTP verifier) overlap;
pure-Python ones hold the GIL and run one after another, which is still only as long as they take.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

RewardFn = Callable[[str, str, dict], float]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def final_number(text: str) -> float | None:
    """The last number written in `text` ("1,234", "-3.5", "#### 12", "\\boxed{7}"), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def exact_match(prompt: str, response: str, row: dict) -> float:
    """1.0 when the response's final number equals the row's `answer`, else 0.0."""
    if "answer" not in row:
        raise KeyError("the row has no 'answer' field for exact_match")
    got = final_number(response)
    return float(got is not None and math.isclose(got, float(row["answer"]), rel_tol=0.0, abs_tol=1e-6))


def format_match(prompt: str, response: str, row: dict, *, pattern: str) -> float:
    """1.0 when `pattern` (a regular expression) matches somewhere in the response."""
    return float(re.search(pattern, response, flags=re.DOTALL) is not None)


def length_penalty(prompt: str, response: str, row: dict, *, target: int) -> float:
    """0 up to `target` characters, then minus the excess in units of `target`."""
    return -max(0, len(response) - target) / target


def builtin_functions(format_regex: str, length_target: int) -> dict[str, RewardFn]:
    return {"exact_match": exact_match,
            "format": functools.partial(format_match, pattern=format_regex),
            "length_penalty": functools.partial(length_penalty, target=length_target)}


def load_function(spec: str) -> RewardFn:
    """`module:function` imported, or a one-line ValueError saying what is wrong."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"rewards.functions: {spec!r} is neither a built-in nor module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's module, said in one line
        raise ValueError(f"rewards.functions: cannot import {module_name!r} for {spec!r} ({type(e).__name__}: {e})"
                         ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"rewards.functions: {module_name} has no function {attr!r}")
    return fn


@dataclasses.dataclass
class RewardFunctions:
    """Named, weighted reward functions and the pool they run in."""

    names: list[str]
    fns: list[RewardFn]
    weights: list[float]
    workers: int = 4

    @classmethod
    def parse(cls, spec: str, *, format_regex: str = "", length_target: int = 400, workers: int = 4):
        builtins = builtin_functions(format_regex, length_target)
        names, fns, weights = [], [], []
        for entry in (e.strip() for e in spec.split(",")):
            if not entry:
                continue
            name, _, weight = entry.partition("=")
            name = name.strip()
            try:
                w = float(weight) if weight else 1.0
            except ValueError:
                raise ValueError(f"rewards.functions: the weight of {name!r} is {weight!r}, not a number") from None
            if name == "format" and not format_regex:
                raise ValueError("rewards.functions uses 'format' but rewards.format_regex is empty")
            fns.append(builtins[name] if name in builtins else load_function(name))
            short = name.rpartition(":")[2]  # the metric's name: the function's, unless two share it
            names.append(short if short not in names else name)
            weights.append(w)
        return cls(names, fns, weights, workers)

    def __bool__(self) -> bool:
        return bool(self.fns)

    def score(self, prompts: Sequence[str], responses: Sequence[str], rows: Sequence[dict]
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(weighted sum [n] float32, each function's values [n]) of every (prompt, response, row)."""
        n = len(responses)
        per: dict[str, np.ndarray] = {}
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            for name, fn in zip(self.names, self.fns):
                futures = [pool.submit(fn, prompts[i], responses[i], rows[i]) for i in range(n)]
                values = np.zeros(n, np.float64)
                for i, f in enumerate(futures):
                    try:
                        values[i] = float(f.result())
                    except Exception as e:  # noqa: BLE001 - the user's function: name it and the row
                        raise ValueError(f"reward function {name!r} failed on row {i} (prompt "
                                         f"{prompts[i][-60:]!r}): {type(e).__name__}: {e}") from None
                    if not math.isfinite(values[i]):
                        raise ValueError(f"reward function {name!r} returned {values[i]} on row {i} (prompt "
                                         f"{prompts[i][-60:]!r}); rewards must be finite")
                per[name] = values.astype(np.float32)
        total = sum((w * per[name].astype(np.float64) for name, w in zip(self.names, self.weights)),
                    np.zeros(n, np.float64))
        return total.astype(np.float32), per
