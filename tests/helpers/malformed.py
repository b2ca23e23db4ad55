"""Malformed inputs (data files, configs, model directories) and the one-line error each must produce.

Shared by tests/test_malformed_inputs.py (every case: exit 2, one `error:` line naming the problem, no
traceback, no output mistaken for a good one) and `python -m tests.tools.malformed_table` (the table in
docs/malformed_inputs.md).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Case:
    name: str            # what is wrong, for the table
    kind: str            # data | config | model
    command: str         # train_rm | train_ppo | train_sft | eval_rm | score
    args: tuple[str, ...]
    expected: str        # a substring of the error line


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _model_variant(src: Path, dst: Path, *, config_edit=None, weights: bytes | None = None,
                   drop=()) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name in drop:
            continue
        data = f.read_bytes()
        if f.name == "config.json" and config_edit:
            cfg = json.loads(data)
            config_edit(cfg)
            data = json.dumps(cfg).encode()
        if f.name == "model.safetensors" and weights is not None:
            data = weights
        (dst / f.name).write_bytes(data)
    return dst


def build_cases(root: Path, model: Path, pairs: Path) -> list[Case]:
    """Cases under `root`, around a good tiny model dir and a good pairs file."""
    root.mkdir(parents=True, exist_ok=True)
    good = (f"--config.model.name={model}", f"--config.data.source={pairs}", "--config.data.eval_size=8",
            "--config.data.max_length=32", "--config.data.batch_size=8", "--config.train.export=False")
    rm = lambda *extra: good + tuple(extra)
    data = lambda name, rows, suffix=".jsonl": _jsonl(root / f"{name}{suffix}", rows)
    bad_json = data("badjson", ['{"prompt": "a", "chosen": "b"', "{"])
    no_column = data("nocol", [{"prompt": "a", "chosen": "b"}] * 20)
    empty_text = data("emptytext", [{"prompt": "a", "chosen": " ", "rejected": "c"}])
    identical = data("same", [{"prompt": "a", "chosen": "b", "rejected": "b"}])
    number = data("number", [{"prompt": "a", "chosen": 3, "rejected": "b"}])
    ranks = data("ranks", [{"prompt": "a", "responses": ["x", "y"], "ranks": [0]}])
    hh = data("hh", [{"chosen": "Human: a", "rejected": "Other: b"}])
    empty = data("empty", [])
    (root / "ratings.csv").write_text("prompt,response,reward\na,b,1\na,c,high\n")
    no_config = _model_variant(model, root / "noconfig", drop=("config.json",))
    arch = _model_variant(model, root / "arch", config_edit=lambda c: c.update(model_type="mamba"))
    shape = _model_variant(model, root / "shape", config_edit=lambda c: c.update(intermediate_size=72))
    corrupt = _model_variant(model, root / "corrupt", weights=b"not a safetensors file")
    gz = root / "truncated.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n' * 50)[:60])
    cases = [
        Case("data file does not exist", "data", "train_rm", rm(f"--config.data.source={root / 'nope.jsonl'}"),
             "nope.jsonl"),
        Case("empty data file", "data", "train_rm", rm(f"--config.data.source={empty}"), "empty"),
        Case("a line is not JSON", "data", "train_rm",
             rm(f"--config.data.source={bad_json}"),
             "badjson.jsonl"),
        Case("column `rejected` missing", "data", "train_rm",
             rm(f"--config.data.source={no_column}"), "cannot detect the data format"),
        Case("empty chosen text", "data", "train_rm",
             rm(f"--config.data.source={empty_text}"),
             "row 1: field 'chosen'"),
        Case("chosen identical to rejected", "data", "train_rm",
             rm(f"--config.data.source={identical}"),
             "identical"),
        Case("chosen is a number", "data", "train_rm",
             rm(f"--config.data.source={number}"),
             "field 'chosen'"),
        Case("ranks do not match responses", "data", "train_rm",
             rm(f"--config.data.source={ranks}"),
             "row 1"),
        Case("rating is not numeric (csv)", "data", "train_rm",
             rm(f"--config.data.source={(root / 'ratings.csv')}"), "field 'reward'"),
        Case("HH dialogues share no prompt", "data", "train_rm",
             rm(f"--config.data.source={hh}"),
             "row 1"),
        Case("truncated gzip file", "data", "train_rm", rm(f"--config.data.source={gz}"), "truncated.jsonl.gz"),
        Case("unknown config key", "config", "train_rm", rm("--config.train.epochz=1"), "epochs"),
        Case("wrong value type", "config", "train_rm", rm("--config.train.epochs=abc"), "epochs"),
        Case("unknown train mode", "config", "train_rm", rm("--config.model.train_mode=everything"),
             "model.train_mode='everything' is not one of full, lora"),
        Case("unknown dtype", "config", "train_rm", rm("--config.model.dtype=float8"), "dtype"),
        Case("unknown schedule", "config", "train_rm", rm("--config.optim.schedule=zigzag"), "schedule"),
        Case("mesh larger than the devices", "config", "train_rm", rm("--config.mesh.data=3"), "devices"),
        Case("config file does not exist", "config", "train_rm", (f"--config={root / 'no_config.py'}",),
             "no_config.py"),
        Case("model directory does not exist", "model", "train_rm", rm(f"--config.model.name={root / 'nomodel'}"),
             "nomodel"),
        Case("model dir without config.json", "model", "train_rm",
             rm(f"--config.model.name={no_config}"),
             "config.json"),
        Case("unknown architecture", "model", "train_rm",
             rm(f"--config.model.name={arch}"),
             "mamba"),
        Case("config does not match the weights", "model", "train_rm",
             rm(f"--config.model.name={shape}"),
             "shape"),
        Case("corrupt safetensors file", "model", "train_rm",
             rm(f"--config.model.name={corrupt}"),
             "model.safetensors"),
        Case("reward model to score with does not exist", "model", "eval_rm",
             (f"--model={root / 'no_rm'}", f"--data={pairs}"), "no_rm"),
        Case("PPO: reward model path does not exist", "model", "train_ppo",
             (f"--config.policy.name={model}", f"--config.reward_model.path={root / 'no_rm'}"), "no_rm"),
        Case("PPO: unknown critic init", "config", "train_ppo",
             (f"--config.policy.name={model}", "--config.critic.init=random"), "critic.init"),
    ]
    return cases


def run_case(case: Case, cwd: Path, env: dict | None = None, timeout: float = 300):
    """(exit code, last stderr line, stderr) of the case's command run in `cwd`."""
    out = subprocess.run([sys.executable, "-m", f"jaxrlhf.{case.command}", *case.args], cwd=str(cwd),
                         capture_output=True, text=True, timeout=timeout, env=env or dict(os.environ))
    lines = [line for line in out.stderr.replace("\r", "\n").splitlines() if line.strip()]
    return out.returncode, (lines[-1] if lines else ""), out.stderr


def run_all_cases(root: Path) -> list[tuple[Case, tuple[int, str, str]]]:
    """Every case around a fresh tiny model and pairs file under `root`, each with what `run_case` gives."""
    from tests.helpers.data import write_separable_pairs
    from tests.helpers.models import make_tiny_llama_dir

    model = make_tiny_llama_dir(root / "model")
    pairs = write_separable_pairs(root / "pairs.jsonl", 32)
    cases = build_cases(root / "cases", model, pairs)
    env = dict(os.environ, HF_DATASETS_CACHE=str(root / "hf"), JAX_PLATFORMS="cpu")

    def run_in_own_folder(numbered):  # two at once must not share the default workdir (and its lock)
        i, case = numbered
        cwd = root / "runs" / str(i)
        cwd.mkdir(parents=True)
        return run_case(case, cwd, env)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # the CLIs mostly wait on imports
        outcomes = list(pool.map(run_in_own_folder, enumerate(cases, 1)))
    return list(zip(cases, outcomes))
