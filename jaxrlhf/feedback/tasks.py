"""Annotation tasks read from the files the other tools write, validated whole before anything is stored.

- Ranking tasks: a JSONL file with `prompt` (a string, HH dialogue text or a message list) and `responses`
  (2 to 8 non-empty texts), as `python -m jaxrlhf.sample` writes (other fields are ignored). A sampler
  often says the same thing twice: a repeated response is shown once, and a row left with fewer than two
  distinct responses has nothing to rank and is left out (`read_tasks` counts both).
- A/B tasks: the output directory of `python -m jaxrlhf.compare` (`pairs.jsonl` with id, prompt,
  response_1, response_2, and `key.json`). The key (which label is A) is kept with the task on the server
  as its `secret`, and never sent to a browser.

Every problem raises `TaskFileError` naming the file, the 1-based line and the field.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
from pathlib import Path

from jaxrlhf.data.errors import RowInvalid
from jaxrlhf.data.prompts import prompt_of_row

MAX_RESPONSES = 8
MAX_TEXT_CHARS = 100_000


class TaskFileError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Task:
    kind: str  # "rank" or "ab"
    prompt: str  # the prompt text as the data gives it (what a reward model reads before a response)
    turns: tuple[tuple[str, str], ...]  # (role, text) for display
    responses: tuple[str, ...]
    secret: dict | None = None  # A/B: {"a": label of A (1 or 2), ...}; never leaves the server

    @property
    def fingerprint(self) -> str:
        """Identifies the task, so loading one file twice stores each task once."""
        blob = json.dumps([self.kind, self.prompt, self.responses, self.secret], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def payload(self) -> dict:
        return {"prompt": self.prompt, "turns": [list(t) for t in self.turns], "responses": list(self.responses)}


def read_tasks(path: str | Path, counts: collections.Counter | None = None) -> list[Task]:
    """The tasks of a ranking JSONL file or of a `compare` output directory. `counts` gets
    `repeated_responses` (dropped repeats) and `nothing_to_rank` (rows left out)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _read_ab(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: task file not found")
    counts = collections.Counter() if counts is None else counts
    tasks = [t for t in (_rank_task(path, line, row, counts) for line, row in _jsonl(path)) if t is not None]
    if not tasks:
        raise TaskFileError(f"{path}: no row has two different responses to rank")
    return tasks


def _jsonl(path: Path):
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as e:
        raise TaskFileError(f"{path}: not UTF-8 text ({e.reason})") from None
    rows = []
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise TaskFileError(f"{path}:{line}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise TaskFileError(f"{path}:{line}: expected a JSON object, got {type(row).__name__}")
        rows.append((line, row))
    if not rows:
        raise TaskFileError(f"{path}: no tasks in the file")
    return rows


def _response(path: Path, line: int, value, field: str) -> str:
    if not isinstance(value, str):
        raise TaskFileError(f"{path}:{line}: {field}: " + ("missing" if value is None else "not a string"))
    if not value.strip():
        raise TaskFileError(f"{path}:{line}: {field}: empty")
    if len(value) > MAX_TEXT_CHARS:
        raise TaskFileError(f"{path}:{line}: {field}: longer than {MAX_TEXT_CHARS} characters")
    return value


def _prompt(path: Path, line: int, row: dict):
    if "prompt" not in row:
        raise TaskFileError(f"{path}:{line}: prompt: missing")
    try:
        return prompt_of_row({"prompt": row["prompt"]})
    except RowInvalid as e:
        raise TaskFileError(f"{path}:{line}: {e.field}: {e.message()}") from None


def _rank_task(path: Path, line: int, row: dict, counts: collections.Counter) -> Task | None:
    prompt = _prompt(path, line, row)
    responses = row.get("responses")
    if not isinstance(responses, list) or not 2 <= len(responses) <= MAX_RESPONSES:
        raise TaskFileError(f"{path}:{line}: responses: expected a list of 2 to {MAX_RESPONSES} texts")
    texts = tuple(dict.fromkeys(_response(path, line, r, f"responses[{k}]") for k, r in enumerate(responses)))
    if len(texts) < len(responses):
        counts["repeated_responses"] += len(responses) - len(texts)
    if len(texts) < 2:
        counts["nothing_to_rank"] += 1
        return None
    return Task("rank", prompt.text, prompt.messages, texts)


def _read_ab(folder: Path) -> list[Task]:
    pairs_path, key_path = folder / "pairs.jsonl", folder / "key.json"
    for p in (pairs_path, key_path):
        if not p.is_file():
            raise TaskFileError(f"{folder}: not a `jaxrlhf.compare` output: {p.name} missing")
    try:
        key = json.loads(key_path.read_text("utf-8"))
        key_items = {item["id"]: item for item in key["items"]}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise TaskFileError(f"{key_path}: not a compare key ({type(e).__name__}: {e})") from None
    models = {name: key.get(name) for name in ("a", "b") if isinstance(key.get(name), str)}
    tasks = []
    for line, row in _jsonl(pairs_path):
        prompt = _prompt(pairs_path, line, row)
        texts = tuple(_response(pairs_path, line, row.get(f), f) for f in ("response_1", "response_2"))
        item = key_items.get(row.get("id"))
        if item is None or item.get("a") not in (1, 2):
            raise TaskFileError(f"{pairs_path}:{line}: id: {row.get('id')!r} has no entry in {key_path.name}")
        secret = {"id": row["id"], "a": item["a"], **{k: v for k, v in item.items() if k.startswith("reward_")},
                  "models": models}
        tasks.append(Task("ab", prompt.text, prompt.messages, texts, secret))
    return tasks
