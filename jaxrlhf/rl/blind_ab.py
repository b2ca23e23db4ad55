"""Blind A/B material for people: two policies' responses under the neutral labels 1 and 2.

`pairs.jsonl` (id, prompt, response_1, response_2) and `index.html` show nothing else; `key.json`,
kept apart, says per id which label is A and which is B, with the model paths and any scores, so the
people judging never see which model wrote what.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Blind comparison</title>
<style>
body {{ font-family: sans-serif; max-width: 1200px; margin: 2em auto; }}
pre {{ white-space: pre-wrap; font-family: inherit; margin: 0; }}
.prompt {{ background: #f2f2f2; padding: .8em; }}
.pair {{ display: grid; grid-template-columns: 1fr 1fr; gap: 1em; margin: .8em 0 2.5em; }}
.response {{ border: 1px solid #ccc; padding: .8em; }}
</style></head><body>
<h1>Blind comparison</h1>
<p>{count} prompts. For each one, note which response is better: 1 or 2 (or equal).</p>
{items}
</body></html>
"""

_ITEM = """<section id="p{id}"><h2>Prompt {id}</h2><pre class="prompt">{prompt}</pre>
<div class="pair"><div class="response"><h3>Response 1</h3><pre>{r1}</pre></div>
<div class="response"><h3>Response 2</h3><pre>{r2}</pre></div></div></section>"""


def blind_labels(n: int, seed: int) -> np.ndarray:
    """int [n]: the label (1 or 2) that A's response gets for each prompt, a coin flip per prompt."""
    return np.where(np.random.default_rng([seed, 1]).random(n) < 0.5, 1, 2)


def write_blind_ab(out_dir: str | Path, prompts: Sequence[str], responses_a: Sequence[str],
                     responses_b: Sequence[str], label_of_a: np.ndarray, key_meta: dict,
                     key_per_item: dict[str, Sequence]) -> Path:
    """Writes pairs.jsonl, index.html and key.json into out_dir.

    `key_per_item` holds per-prompt values for the key only (e.g. reward_a, length_b): never shown.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, items = [], []
    for i, (prompt, a, b) in enumerate(zip(prompts, responses_a, responses_b)):
        first, second = (a, b) if label_of_a[i] == 1 else (b, a)
        rows.append({"id": i, "prompt": prompt, "response_1": first, "response_2": second})
        items.append({"id": i, "a": int(label_of_a[i]), "b": 3 - int(label_of_a[i]),
                      **{name: values[i] for name, values in key_per_item.items()}})
    (out / "pairs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    sections = "\n".join(_ITEM.format(id=r["id"], prompt=html.escape(r["prompt"]), r1=html.escape(r["response_1"]),
                                      r2=html.escape(r["response_2"])) for r in rows)
    (out / "index.html").write_text(_PAGE.format(count=len(rows), items=sections), "utf-8")
    (out / "key.json").write_text(json.dumps({**key_meta, "items": items}, indent=1, ensure_ascii=False), "utf-8")
    return out
