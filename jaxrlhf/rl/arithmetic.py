"""A verifiable task that needs no download: arithmetic word problems from a seeded generator.

Each row is {"prompt", "answer"}; the answer is exact (integers), so `verifiable.exact_match` can reward a
response. Problems come from templates (a bare sum or a short story) over operands in [min_value,
max_value] with the operations asked for; subtraction never goes below zero. The same seed always gives
the same problems. Small ranges repeat problems (a bare "What is 3 + 4?" often), so a training set is drawn
with `exclude=` the held-out prompts: no held-out problem is ever trained on.
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
             styles: str = "plain,story", exclude=()) -> list[dict]:
    """`n` distinct problems as rows {"prompt", "answer", "op"}, none whose prompt is in `exclude`; a one-line
    ValueError for an unknown op or style."""
    op_list = [o.strip() for o in ops.split(",") if o.strip()]
    style_list = [s.strip() for s in styles.split(",") if s.strip()]
    for value, allowed, key in ((op_list, OPS, "task.ops"), (style_list, STYLES, "task.styles")):
        bad = [v for v in value if v not in allowed]
        if bad or not value:
            raise ValueError(f"{key}={','.join(value)!r}: choose from {', '.join(allowed)}")
    if not 0 <= min_value <= max_value:
        raise ValueError(f"task.min_value={min_value}, task.max_value={max_value}: need 0 <= min <= max")
    rng = np.random.default_rng(seed)
    rows, excluded, draws = [], set(exclude), 0
    while len(rows) < n:
        draws += 1
        if draws > 100 * n + 1000:
            raise ValueError(f"task: cannot draw {n} problems outside the {len(excluded)} held out from these "
                             f"ranges and templates (widen task.min_value/max_value or lower task.n_eval)")
        op = op_list[rng.integers(len(op_list))]
        style = style_list[rng.integers(len(style_list))]
        a, b = (int(x) for x in rng.integers(min_value, max_value + 1, size=2))
        if op == "-" and b > a:
            a, b = b, a
        template = (_STORY if style == "story" else _PLAIN)[op]
        text = template.format(a=a, b=b, name=_NAMES[rng.integers(len(_NAMES))],
                               item=_ITEMS[rng.integers(len(_ITEMS))]) + INSTRUCTION
        if text in excluded:
            continue
        excluded.add(text)  # each problem once
        rows.append({"prompt": text, "answer": _answer(op, a, b), "op": op})
    return rows
