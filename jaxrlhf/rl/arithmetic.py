"""A verifiable task that needs no download: arithmetic word problems from a seeded generator.

Each row is {"prompt", "answer"}; the answer is exact (integers), so `verifiable.exact_match` can reward a
response. Problems come from templates (a bare sum or a short story) over operands in [min_value,
max_value] with the operations asked for; subtraction never goes below zero. Two seeds give two disjoint-
in-practice problem sets (training and held-out); the same seed always gives the same problems.
"""

from __future__ import annotations

import numpy as np

OPS = ("+", "-", "*")
STYLES = ("plain", "story")
_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jia")
_ITEMS = ("apples", "books", "coins", "pencils", "stickers", "marbles", "cards", "shells")
_STORY = {
    "+": "{name} has {a} {item}. A friend gives {name} {b} more. How many {item} does {name} have now?",
    "-": "{name} has {a} {item} and gives {b} of them away. How many {item} does {name} have left?",
    "*": "{name} has {a} bags with {b} {item} in each bag. How many {item} does {name} have in total?",
}
_PLAIN = {"+": "What is {a} + {b}?", "-": "What is {a} - {b}?", "*": "What is {a} * {b}?"}
INSTRUCTION = " Answer with the number only."


def _answer(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def problems(n: int, seed: int, *, min_value: int = 1, max_value: int = 20, ops: str = "+,-",
             styles: str = "plain,story") -> list[dict]:
    """`n` problems as rows {"prompt", "answer", "op"}; a one-line ValueError for an unknown op or style."""
    op_list = [o.strip() for o in ops.split(",") if o.strip()]
    style_list = [s.strip() for s in styles.split(",") if s.strip()]
    for value, allowed, key in ((op_list, OPS, "task.ops"), (style_list, STYLES, "task.styles")):
        bad = [v for v in value if v not in allowed]
        if bad or not value:
            raise ValueError(f"{key}={','.join(value)!r}: choose from {', '.join(allowed)}")
    if not 0 <= min_value <= max_value:
        raise ValueError(f"task.min_value={min_value}, task.max_value={max_value}: need 0 <= min <= max")
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        op = op_list[rng.integers(len(op_list))]
        style = style_list[rng.integers(len(style_list))]
        a, b = (int(x) for x in rng.integers(min_value, max_value + 1, size=2))
        if op == "-" and b > a:
            a, b = b, a
        template = (_STORY if style == "story" else _PLAIN)[op]
        text = template.format(a=a, b=b, name=_NAMES[rng.integers(len(_NAMES))],
                               item=_ITEMS[rng.integers(len(_ITEMS))]) + INSTRUCTION
        rows.append({"prompt": text, "answer": _answer(op, a, b), "op": op})
    return rows
