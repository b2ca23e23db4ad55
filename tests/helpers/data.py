"""Data files for the trainers: JSONL writers, separable preference pairs, PPO prompts, the shipped HH rows."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from tests.helpers import REPO_ROOT
from tests.helpers.tokenizers import WORDS

HH_ROWS_PATH = REPO_ROOT / "jaxrlhf/data/builtin/hh_rlhf_harmless_2048.jsonl.gz"


def read_hh_rows() -> list[dict]:
    """The 2,048 HH-RLHF harmless comparisons shipped in the package, as raw rows."""
    with gzip.open(HH_ROWS_PATH, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def write_separable_pairs(path: Path, n: int, seed: int = 0) -> Path:
    """Pairs whose chosen response says "good" and rejected says "bad"; everything else is random words."""
    rng = random.Random(seed)
    filler = [w for w in WORDS if w not in ("good", "bad")]
    with open(path, "w") as f:
        for _ in range(n):
            prompt = " ".join(rng.choice(filler) for _ in range(rng.randint(2, 6)))
            body = [rng.choice(filler) for _ in range(rng.randint(1, 5))]
            pos = rng.randint(0, len(body))
            chosen = " ".join(body[:pos] + ["good"] + body[pos:])
            rejected = " ".join(body[:pos] + ["bad"] + body[pos:])
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    return path


def write_prompts(path: Path, n: int = 48) -> Path:
    """PPO prompts of 2-6 words, one JSON object per line."""
    rng = random.Random(0)
    words = "one two three four five red green blue hello world what why yes no".split()
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"prompt": " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))}) + "\n")
    return path
