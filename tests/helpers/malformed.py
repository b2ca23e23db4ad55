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
    command: str         # train_rm | train_sft | train_ppo | train_dpo | train_grpo | eval_rm | score | compare
    #                      | export_gguf | serve
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
    """Cases under `root`, around a good tiny model dir and a good pairs file (the model also stands in for the
    reward model and the policies: each case fails before any of them would be trained or sampled)."""
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
    # Data that leaves nothing sensible to train (jaxrlhf/data/usable.py).
    tied = data("tied", [{"prompt": f"one two {i}", "responses": ["red", "blue", "green"], "ranks": [1, 1, 1]}
                         for i in range(10)])
    agree = data("agree", [{"prompt": f"one {i}", "chosen": "good", "rejected": "bad", "agreement": 0.5}
                           for i in range(20)])
    all_bad = data("allbad", [{"prompt": f"one {i}", "chosen": "good", "rejected": "good"} for i in range(20)])
    rating_ties = data("ratingties", [{"prompt": f"one {i}", "response": r, "reward": 1} for i in range(10)
                                      for r in ("red", "blue")])
    one_rating = data("onerating", [{"prompt": f"one {i}", "response": "red", "reward": i} for i in range(10)])
    few = data("few", [{"prompt": f"one {i}", "chosen": "good", "rejected": "bad"} for i in range(6)])
    one_prompt = data("oneprompt", [{"prompt": "one two", "chosen": f"good {w}", "rejected": f"bad {w}"}
                                    for w in "abcdefghij"])
    lists = data("lists", [{"prompt": f"one two {i}", "responses": ["red green blue", "yes no good bad", "a b c"],
                            "ranks": [0, 1, 2]} for i in range(12)])
    scalar = data("scalar", [{"prompt": f"one {i}", "response": "red green blue yes", "reward": i} for i in range(12)])
    workfile = root / "workfile"
    workfile.write_text("a file, not a folder\n")
    # SFT: (prompt, response) rows
    sft_rows = data("sft", [{"prompt": f"one two {i}", "response": "red green blue yes no good bad"}
                            for i in range(20)])
    sft_empty = data("sftempty", [{"chosen": f"\n\nHuman: hi {i}\n\nAssistant:"} for i in range(10)])
    sft = lambda *extra: (f"--config.model.name={model}", f"--config.data.source={sft_rows}",
                          "--config.data.format=auto", "--config.data.eval_size=4", "--config.data.max_length=32",
                          "--config.data.batch_size=8", "--config.train.export=False") + tuple(extra)
    # PPO: prompts; the tiny model is the policy and (with a fresh head) the reward model
    prompts = data("prompts", [{"prompt": f"one {a} {b}"} for a in "abcdef" for b in "abcdefgh"])  # 48 prompts
    no_prompt = data("noprompt", [{"question": "hi"}] * 10)
    blank_prompt = data("blankprompt", [{"prompt": "one two"}, {"prompt": "  "}])
    ppo = lambda *extra: (f"--config.policy.name={model}", f"--config.reward_model.path={model}",
                          "--config.critic.init=actor", f"--config.data.source={prompts}",
                          "--config.data.max_prompt_length=64", "--config.data.eval_prompts=8",
                          "--config.ppo.rollout_batch_size=8", "--config.ppo.minibatch_size=4",
                          "--config.sampling.max_new_tokens=4", "--config.train.iterations=1",
                          "--config.train.export=False") + tuple(extra)
    # GRPO: the PPO prompts and a reward function; each case fails before or at the first reward
    grpo = lambda *extra: (f"--config.policy.name={model}", "--config.task.name=", f"--config.data.source={prompts}",
                           "--config.data.max_prompt_length=64", "--config.data.eval_prompts=0",
                           "--config.rewards.functions=length_penalty", "--config.grpo.rollout_batch_size=4",
                           "--config.grpo.group_size=2", "--config.grpo.minibatch_size=8",
                           "--config.sampling.max_new_tokens=4", "--config.train.iterations=1",
                           "--config.train.export=False") + tuple(extra)
    # DPO: the comparison file and the tiny model as the policy (its reference: its own starting weights); format
    # auto, as the embedded default says hh
    dpo = lambda *extra: (f"--config.model.name={model}", f"--config.data.source={pairs}",
                          "--config.data.format=auto", "--config.model.train_mode=full", "--config.data.eval_size=8",
                          "--config.data.max_length=32",
                          "--config.data.batch_size=8", "--config.train.export=False") + tuple(extra)
    one_class = data("oneclass", [{"prompt": f"one {i}", "response": r, "reward": 1.0} for i in range(12)
                                  for r in ("red", "blue")])
    texts = root / "texts.txt"
    texts.write_text("one two\n")
    bad_lines = data("badlines", ['{"prompt": "a"', '{"nothing": 1}'])
    no_texts = root / "notexts.txt"
    no_texts.write_text("\n")
    # GGUF export: the word-level tiny model itself has a tokenizer llama.cpp cannot rebuild
    gguf_out = root / "out.gguf"
    as_rm = _model_variant(model, root / "as_rm", config_edit=lambda c: c.update(
        architectures=["LlamaForSequenceClassification"]))
    as_encoder = _model_variant(model, root / "as_encoder", config_edit=lambda c: c.update(
        model_type="bert", architectures=["BertModel"]))
    gg = lambda m, *extra: (f"--model={m}", f"--out={gguf_out}") + tuple(extra)
    cmp = lambda *extra: (f"--a={model}", f"--b={model}", f"--prompts={prompts}", f"--out={root / 'compare_out'}",
                          "--limit=2", "--max_new_tokens=2") + tuple(extra)
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
        Case("every ranked list tied", "data", "train_rm", rm(f"--config.data.source={tied}"),
             "no usable ranked lists left: 10 rows read; 10 ranked lists with every response tied"),
        Case("every pair below data.min_agreement", "data", "train_rm",
             rm(f"--config.data.source={agree}", "--config.data.min_agreement=0.8"),
             "20 comparisons below data.min_agreement=0.8: lower data.min_agreement"),
        Case("every row invalid, skipped (on_invalid=skip)", "data", "train_rm",
             rm(f"--config.data.source={all_bad}", "--config.data.on_invalid=skip"),
             "20 invalid rows skipped (data.on_invalid=skip: 20 identical)"),
        Case("every two ratings of a prompt tied", "data", "train_rm", rm(f"--config.data.source={rating_ties}"),
             "make no pairs: every two responses to the same prompt have the same rating"),
        Case("one rated response per prompt", "data", "train_rm", rm(f"--config.data.source={one_rating}"),
             "has a single rated response"),
        Case("eval size larger than the data", "data", "train_rm", rm(f"--config.data.source={few}"),
             "data.eval_size=8 would hold out all 6 usable comparisons, leaving none to train on"),
        Case("eval size equal to the data left by a filter", "data", "train_rm",
             rm(f"--config.data.source={agree}", "--config.data.min_agreement=0.5", "--config.data.eval_size=20"),
             "data.eval_size=20 would hold out all 20 usable comparisons"),
        Case("every pair shares one prompt: nothing to hold out", "data", "train_rm",
             rm(f"--config.data.source={one_prompt}"), "holds out nothing: all 10 usable comparisons share one prompt"),
        Case("max_length cuts most responses (pairs)", "data", "train_rm", rm("--config.data.max_length=4"),
             "data.max_length=4 cuts"),
        Case("max_length cuts most responses (ranked lists)", "data", "train_rm",
             rm(f"--config.data.source={lists}", "--config.data.ranked_mode=plackett_luce", "--config.data.eval_size=2",
                "--config.data.max_length=4"), "data.max_length=4 cuts 30 of 30 responses"),
        Case("max_length cuts most responses (ratings)", "data", "train_rm",
             rm(f"--config.data.source={scalar}", "--config.data.ratings_mode=regression", "--config.data.eval_size=2",
                "--config.data.max_length=4"), "data.max_length=4 cuts 10 of 10 responses"),
        Case("negative data.limit", "config", "train_rm", rm("--config.data.limit=-1"), "data.limit=-1 must be >= 0"),
        Case("eval_source does not exist", "data", "train_rm",
             rm(f"--config.data.eval_source={root / 'no_eval.jsonl'}"), "no_eval.jsonl"),
        Case("unknown config key", "config", "train_rm", rm("--config.train.epochz=1"), "epochs"),
        Case("wrong value type", "config", "train_rm", rm("--config.train.epochs=abc"), "epochs"),
        Case("unknown train mode", "config", "train_rm", rm("--config.model.train_mode=everything"),
             "model.train_mode='everything' is not one of full, lora"),
        Case("unknown dtype", "config", "train_rm", rm("--config.model.dtype=float8"), "dtype"),
        Case("grad_accum that does not divide the batch", "config", "train_rm",
             rm("--config.optim.grad_accum=3"), "optim.grad_accum=3 must be a positive divisor of data.batch_size"),
        Case("negative learning rate", "config", "train_rm", rm("--config.optim.learning_rate=-1"),
             "optim.learning_rate=-1.0 must be positive"),
        Case("unknown schedule", "config", "train_rm", rm("--config.optim.schedule=zigzag"), "schedule"),
        Case("mesh larger than the devices", "config", "train_rm", rm("--config.mesh.data=3"), "devices"),
        Case("config file does not exist", "config", "train_rm", (f"--config={root / 'no_config.py'}",),
             "no_config.py"),
        Case("workdir is a file", "config", "train_rm", rm(f"--config.workdir={workfile}"),
             "workfile is a file, not a folder"),
        Case("max_length leaves no room for text", "config", "train_rm", rm("--config.data.max_length=1"),
             "max_length=1 leaves no room for text"),
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
        Case("SFT: every response empty", "data", "train_sft", sft(f"--config.data.source={sft_empty}"),
             "no usable examples left: 10 rows read; 10 rows with an empty response"),
        Case("SFT: eval size as large as the data", "data", "train_sft", sft("--config.data.eval_size=20"),
             "data.eval_size=20 would hold out all 20 usable examples"),
        Case("SFT: max_length cuts most responses", "data", "train_sft", sft("--config.data.max_length=4"),
             "data.max_length=4 cuts 16 of 16 responses"),
        Case("SFT: comparison file forced as prompt_response", "data", "train_sft",
             sft(f"--config.data.source={pairs}", "--config.data.format=prompt_response"),
             "field 'response': column missing"),
        Case("SFT: unknown data format", "config", "train_sft", sft("--config.data.format=ranked"),
             "data.format='ranked' is not one of"),
        Case("SFT: wrong value type", "config", "train_sft", sft("--config.data.max_length=abc"),
             "data.max_length=abc"),
        Case("SFT: workdir is a file", "config", "train_sft", sft(f"--config.workdir={workfile}"),
             "is a file, not a folder"),
        Case("reward model to score with does not exist", "model", "eval_rm",
             (f"--model={root / 'no_rm'}", f"--data={pairs}"), "no_rm"),
        Case("eval_rm: a data file as the model", "model", "eval_rm", (f"--model={pairs}", f"--data={pairs}"),
             "neither an exported model"),
        Case("eval_rm: every ranked list tied", "data", "eval_rm", (f"--model={model}", f"--data={tied}"),
             "every response tied"),
        Case("eval_rm: max_length cuts most responses", "data", "eval_rm",
             (f"--model={model}", f"--data={pairs}", "--max_length=4"), "max_length=4 cuts"),
        Case("PPO: reward model path does not exist", "model", "train_ppo",
             (f"--config.policy.name={model}", f"--config.reward_model.path={root / 'no_rm'}"), "no_rm"),
        Case("PPO: unknown critic init", "config", "train_ppo",
             (f"--config.policy.name={model}", "--config.critic.init=random"), "critic.init"),
        Case("PPO: policy does not exist", "model", "train_ppo", ppo(f"--config.policy.name={root / 'nomodel'}"),
             "nomodel: model directory not found"),
        Case("PPO: every prompt too long", "data", "train_ppo", ppo("--config.data.max_prompt_length=4"),
             "48 longer than data.max_prompt_length=4 tokens; set data.max_prompt_length to at least"),
        Case("PPO: eval_prompts takes every prompt", "data", "train_ppo", ppo("--config.data.eval_prompts=48"),
             "data.eval_prompts=48 holds out 48 of the 48 usable prompts"),
        Case("PPO: prompt file without a prompt column", "data", "train_ppo",
             ppo(f"--config.data.source={no_prompt}"), "needs a 'prompt' column"),
        Case("PPO: an empty prompt", "data", "train_ppo", ppo(f"--config.data.source={blank_prompt}"),
             "row 2: field 'prompt': empty"),
        Case("PPO: temperature < 0", "config", "train_ppo", ppo("--config.sampling.temperature=-1"),
             "temperature must be >= 0"),
        Case("PPO: top_p > 1", "config", "train_ppo", ppo("--config.sampling.top_p=1.5"), "top_p must be in (0, 1]"),
        Case("PPO: minibatch larger than the rollout batch", "config", "train_ppo",
             ppo("--config.ppo.minibatch_size=16"), "must be a multiple of ppo.minibatch_size=16"),
        Case("PPO: wrong value type", "config", "train_ppo", ppo("--config.ppo.epochs=abc"), "ppo.epochs=abc"),
        Case("PPO: workdir is a file", "config", "train_ppo", ppo(f"--config.workdir={workfile}"),
             "is a file, not a folder"),
        Case("DPO: beta not positive", "config", "train_dpo", dpo("--config.loss.beta=0"),
             "loss.beta=0.0 must be positive"),
        Case("DPO: unknown loss type", "config", "train_dpo", dpo("--config.loss.type=dpo2"),
             "loss.type='dpo2' is not one of sigmoid, robust"),
        Case("DPO: KTO on comparisons (not ratings)", "data", "train_dpo", dpo("--config.loss.type=kto"),
             "loss.type=kto needs rated responses"),
        Case("DPO: listwise on comparisons (not ranked lists)", "data", "train_dpo", dpo("--config.loss.type=listwise"),
             "loss.type=listwise needs ranked lists"),
        Case("DPO: robust DPO without a label-noise rate", "config", "train_dpo", dpo("--config.loss.type=robust"),
             "loss.type=robust needs loss.label_smoothing > 0"),
        Case("DPO: label smoothing of 0.5 or more", "config", "train_dpo", dpo("--config.loss.label_smoothing=0.5"),
             "loss.label_smoothing=0.5 must be in [0, 0.5)"),
        Case("DPO: KTO ratings all above the threshold", "data", "train_dpo",
             dpo("--config.loss.type=kto", f"--config.data.source={one_class}"),
             "every training rating is above loss.kto_threshold=0.5 (ratings 1 to 1)"),
        Case("DPO: an SFT term on KTO", "config", "train_dpo",
             dpo("--config.loss.type=kto", "--config.loss.sft_weight=1"), "loss.sft_weight is an extra term on pairs"),
        Case("DPO: unknown reference_logps", "config", "train_dpo", dpo("--config.loss.reference_logps=always"),
             "loss.reference_logps='always' is not one of auto, cached, online"),
        Case("DPO: reference does not exist", "model", "train_dpo", dpo(f"--config.reference={root / 'noref'}"),
             "noref"),
        Case("DPO: unknown data format", "config", "train_dpo", dpo("--config.data.format=prompt_response"),
             "data.format='prompt_response' is not one of"),
        Case("eval_rm: implicit reward of a model without beta", "config", "eval_rm",
             (f"--model={model}", f"--reference={model}", f"--data={pairs}"), "does not say which beta"),
        Case("eval_rm: implicit reward with beta <= 0", "config", "eval_rm",
             (f"--model={model}", f"--reference={model}", f"--data={pairs}", "--beta=0"), "--beta=0.0 must be > 0"),
        Case("score: model does not exist", "model", "score", (f"--model={root / 'nomodel'}", f"--input={texts}"),
             "nomodel"),
        Case("score: input file does not exist", "data", "score", (f"--model={model}", f"--input={root / 'no.txt'}"),
             "no.txt"),
        Case("score: a line is not JSON", "data", "score", (f"--model={model}", f"--input={bad_lines}"),
             "line 1: invalid JSON"),
        Case("score: no texts", "data", "score", (f"--model={model}", f"--input={no_texts}"), "no texts to score"),
        Case("serve: model does not exist", "model", "serve", (f"--model={root / 'nomodel'}",), "nomodel"),
        Case("serve: port out of range", "config", "serve", (f"--model={model}", "--port=70000"),
             "--port=70000 must be in 1..65535"),
        Case("GRPO: unknown algorithm", "config", "train_grpo", grpo("--config.grpo.algorithm=ppo2"),
             "grpo.algorithm='ppo2' is not one of"),
        Case("GRPO: one sample per prompt", "config", "train_grpo",
             grpo("--config.grpo.group_size=1", "--config.grpo.minibatch_size=4"),
             "grpo needs at least 2 samples per prompt"),
        Case("GRPO: reward function cannot be imported", "config", "train_grpo",
             grpo("--config.rewards.functions=no_such_module:score"), "cannot import 'no_such_module'"),
        Case("GRPO: reward function fails on a row", "data", "train_grpo",
             grpo("--config.rewards.functions=exact_match"),
             "reward function 'exact_match' failed on row 0 (prompt"),
        Case("GRPO: no reward at all", "config", "train_grpo", grpo("--config.rewards.functions="), "no reward"),
        Case("GRPO: minibatch that splits a group", "config", "train_grpo", grpo("--config.grpo.minibatch_size=1"),
             "with grpo.shared_prompt a minibatch holds whole groups"),
        Case("compare: policy does not exist", "model", "compare", cmp(f"--b={root / 'nomodel'}"),
             "nomodel: model directory not found"),
        Case("compare: prompts file does not exist", "data", "compare", cmp(f"--prompts={root / 'no_prompts.jsonl'}"),
             "prompts file not found"),
        Case("compare: empty prompts file", "data", "compare", cmp(f"--prompts={no_texts}"), "no prompts"),
        Case("compare: a prompt line is not JSON", "data", "compare", cmp(f"--prompts={bad_lines}"),
             "line 1: invalid JSON"),
        Case("compare: temperature < 0", "config", "compare", cmp("--temperature=-1"), "temperature must be >= 0"),
        Case("compare: top_p > 1", "config", "compare", cmp("--top_p=1.5"), "top_p must be in (0, 1]"),
        Case("compare: reward model does not exist", "model", "compare", cmp(f"--rm={root / 'no_rm'}"),
             "reward model not found"),
        Case("export_gguf: unknown --type", "config", "export_gguf", gg(model, "--type=q4_k"),
             "unknown --type 'q4_k'; choose one of f32, f16"),
        Case("export_gguf: a reward model", "model", "export_gguf", gg(as_rm, "--type=q8_0"),
             "is a reward model or critic (LlamaForSequenceClassification)"),
        Case("export_gguf: an encoder", "model", "export_gguf", gg(as_encoder), "is a bert encoder"),
        Case("export_gguf: a tokenizer llama.cpp cannot rebuild", "model", "export_gguf", gg(model),
             "tokenizer cannot be written to GGUF: WordLevel model"),
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
