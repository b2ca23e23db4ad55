"""Reward-model training end to end on a tiny Llama: learning, resume, export, eval_rm and score CLIs."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.rm.load import load_trained_rm
from jaxrlhf.train_rm import train
from tests.helpers.data import write_separable_pairs
from tests.helpers.models import make_tiny_llama_dir
from tests.helpers.runs import tiny_rm_config

pytestmark = pytest.mark.slow  # trains, spawns processes or loads a real model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("rm")
    return make_tiny_llama_dir(d / "model"), write_separable_pairs(d / "pairs.jsonl", 96), d


def params_of(workdir):
    loaded = load_trained_rm(str(workdir)).loaded
    return jax.tree_util.tree_leaves(nnx.state(loaded.model, nnx.Param))


@pytest.mark.multiprocess
def test_learns_separable_pairs_and_exports(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    model_dir, data, _ = setup
    config = tiny_rm_config(model_dir, data, tmp_path / "work")
    config.train.export = True
    config.train.histogram = True
    summary = train(config)
    assert summary["accuracy"] == 1.0 and summary["n"] == 16
    work = tmp_path / "work"
    assert (work / "reward_histogram.png").stat().st_size > 1000
    assert json.loads((work / "eval.json").read_text())["accuracy"] == 1.0
    records = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in records) and any("eval/accuracy" in r for r in records)
    stats = json.loads((work / "export" / "reward_stats.json").read_text())
    assert stats["n_pairs"] == 80 and stats["reward_std"] > 0

    # The export loads in transformers and gives the rewards our model gives.
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(work / "export")
    torch_rm = transformers.AutoModelForSequenceClassification.from_pretrained(work / "export").eval()
    texts = ["hello good </s>", "hello bad </s>"]
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        theirs = torch_rm(**enc).logits[:, 0].numpy()
    loaded = load_trained_rm(str(work / "export")).loaded
    ours = np.asarray(loaded.model(enc["input_ids"].numpy(), enc["attention_mask"].numpy()))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert ours[0] > ours[1]

    # eval_rm and score from the command line: one JSON object / one JSON line per text.
    out = subprocess.run([sys.executable, "-m", "jaxrlhf.eval_rm", f"--model={work / 'export'}", f"--data={data}",
                          "--max_length=32"], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["n"] == 96 and result["accuracy"] == 1.0 and "length_correlation" in result
    lines = '{"prompt": "hello", "response": "good"}\n{"prompt": "hello", "response": "bad"}\n'
    out = subprocess.run([sys.executable, "-m", "jaxrlhf.score", f"--model={work / 'export'}"], input=lines,
                         capture_output=True, text=True, check=True)
    scored = [json.loads(l) for l in out.stdout.strip().splitlines()]
    assert len(scored) == 2 and scored[0]["reward"] > scored[1]["reward"] and "normalised" in scored[0]


def test_resume_after_stop_gives_identical_parameters(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    model_dir, data, _ = setup
    straight = tiny_rm_config(model_dir, data, tmp_path / "straight")
    straight.train.epochs = 2
    train(straight)

    interrupted = tiny_rm_config(model_dir, data, tmp_path / "interrupted")
    interrupted.train.epochs = 2
    interrupted.train.stop_after = 13  # mid-epoch, between checkpoints
    assert train(interrupted) == {"stopped_at": 13}
    interrupted.train.stop_after = 0
    train(interrupted)

    for a, b in zip(params_of(tmp_path / "straight"), params_of(tmp_path / "interrupted")):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.multiprocess
def test_eval_rm_reports_kendall_tau_for_ranked_lists(setup, tmp_path):
    model_dir, _, _ = setup
    # Two lists of 4 responses, ranks untied: 6 pairs each, 12 in all. On a list without ties tau-b is
    # (C - D) / 6 with D = 6 - C, i.e. 2 * (its pair accuracy) - 1; with 6 pairs per list the mean tau is
    # 2 * (the pair accuracy over the 12 pairs) - 1, which eval_rm computes on a separate path.
    rows = [{"prompt": "hello", "responses": ["good good", "good", "bad", "bad bad"], "ranks": [0, 1, 2, 3]},
            {"prompt": "hi there", "responses": ["bad", "good", "red", "blue two"], "ranks": [3, 0, 1, 2]}]
    path = tmp_path / "lists.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = subprocess.run([sys.executable, "-m", "jaxrlhf.eval_rm", f"--model={model_dir}", f"--data={path}",
                          "--max_length=32"], capture_output=True, text=True, env={**__import__("os").environ,
                          "HF_DATASETS_CACHE": str(tmp_path / "hf")})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["n"] == 12
    assert result["kendall_tau"] == pytest.approx(2 * result["accuracy"] - 1, abs=1e-6)


@pytest.mark.multiprocess
def test_bad_input_is_one_line_error(setup, tmp_path):
    model_dir, _, _ = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "chosen": "same", "rejected": "same"}) + "\n")
    out = subprocess.run([sys.executable, "-m", "jaxrlhf.eval_rm", f"--model={model_dir}", f"--data={bad}"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "bad.jsonl: row 1: field 'rejected'" in last
    assert "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "jaxrlhf.eval_rm", f"--model={tmp_path / 'nope'}", f"--data={bad}"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "nope" in out.stderr


def write_ranked_lists(path, n, seed=0):
    """Lists of 3-4 responses ranked by how many times they say "good" (more is better)."""
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            counts = rng.sample(range(4), rng.randint(3, 4))
            responses = [" ".join(["good"] * c + ["bad"] * (3 - c) + [rng.choice(["red", "blue"])]) for c in counts]
            ranks = [sorted(counts, reverse=True).index(c) for c in counts]
            f.write(json.dumps({"prompt": f"hello {rng.choice(['one', 'two', 'three'])} {i % 7}",
                                "responses": responses, "ranks": ranks}) + "\n")
    return path


@pytest.mark.parametrize("mode", ["pairs", "plackett_luce"])
def test_ranked_lists_train_and_report_kendall_tau(setup, tmp_path, monkeypatch, mode):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    model_dir, _, _ = setup
    data = write_ranked_lists(tmp_path / "lists.jsonl", 64)
    config = tiny_rm_config(model_dir, data, tmp_path / "work")
    config.data.ranked_mode = mode
    config.data.eval_size = 12
    config.data.batch_size = 4 if mode == "plackett_luce" else 8
    config.data.eval_batch_size = 4
    config.train.epochs = 3
    summary = train(config)
    assert summary["kendall_tau"] > 0.9 and summary["accuracy"] > 0.9


def test_ratings_regression(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    model_dir, _, _ = setup
    import random

    rng = random.Random(0)
    path = tmp_path / "ratings.jsonl"
    with open(path, "w") as f:
        for i in range(96):
            goods = rng.randint(0, 3)
            f.write(json.dumps({"prompt": f"hi {i}", "response": " ".join(["good"] * goods + ["bad"] * (3 - goods)),
                                "reward": float(goods)}) + "\n")
    config = tiny_rm_config(model_dir, path, tmp_path / "work")
    config.data.ratings_mode = "regression"
    config.train.epochs = 6
    summary = train(config)
    assert summary["pearson"] > 0.9 and summary["mse"] < 0.3


def _final_params(workdir):
    loaded = load_trained_rm(str(workdir)).loaded
    from jaxrlhf.infra.sharding import path_str

    return {path_str(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(loaded.model, nnx.Param))}


@pytest.mark.parametrize("mode", ["lora", "frozen_backbone"])
def test_parameter_efficient_modes_touch_only_their_parameters(setup, tmp_path, monkeypatch, mode):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    model_dir, data, _ = setup
    config = tiny_rm_config(model_dir, data, tmp_path / "work")
    config.model.train_mode = mode
    config.model.lora_targets = "q_proj|v_proj"
    config.train.epochs = 1
    train(config)
    after = _final_params(tmp_path / "work")
    from jaxrlhf.models.hub import from_pretrained
    from jaxrlhf.training.run_setup import lora_from_config

    base = from_pretrained(str(model_dir), "reward", lora=lora_from_config(config.model))
    from jaxrlhf.infra.sharding import path_str

    before = {path_str(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(base.model, nnx.Param))}
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert "head/out/kernel" in changed
    if mode == "lora":
        assert any("lora_b" in k for k in changed)
        assert changed <= {k for k in before if "lora_" in k or k.startswith("head/")}
    else:
        assert changed == {"head/out/kernel"}


def test_gradient_accumulation_matches_one_big_batch(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    model_dir, data, _ = setup
    results = []
    for accum in (1, 4):
        config = tiny_rm_config(model_dir, data, tmp_path / f"accum{accum}")
        config.optim.grad_accum = accum
        config.train.max_steps = 3
        config.train.log_every = 1
        train(config)
        results.append(_final_params(tmp_path / f"accum{accum}"))
    for key in results[0]:
        np.testing.assert_allclose(results[0][key], results[1][key], atol=2e-6, err_msg=key)


def test_bfloat16_compute_trains(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    model_dir, data, _ = setup
    config = tiny_rm_config(model_dir, data, tmp_path / "work")
    config.model.dtype = "bfloat16"
    config.train.epochs = 2
    summary = train(config)
    assert summary["accuracy"] >= 0.9


@pytest.mark.multiprocess
@pytest.mark.parametrize("args,expected", [
    (["--config.train.epochz=1"], 'Did you mean "epochs"'),
    (["--config.train.epochs=abc"], "invalid literal"),
    (["--config.model.name=/no/such/model"], "model directory not found"),
    pytest.param(["--config.data.on_invalid=ignore"], "data.on_invalid",
                 marks=pytest.mark.real_model),  # checked after the default model (MiniLM) loads
    pytest.param(["--config.model.name=smollm2", "--config.model.dropout=0.1"], "BERT family only",
                 marks=pytest.mark.real_model),  # reads the fetched SmolLM2's config
])
def test_train_rm_bad_config_is_one_line_error(tmp_path, args, expected):
    out = subprocess.run([sys.executable, "-m", "jaxrlhf.train_rm", "--config=configs/rm.py",
                          f"--config.workdir={tmp_path / 'w'}", *args], capture_output=True, text=True,
                         cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and expected in lines[-1]
    assert "Traceback" not in out.stderr


def test_seed_changes_order_not_the_held_out_split(setup, tmp_path, monkeypatch):
    """`seed` draws init and batch order; `data.split_seed` alone draws the held-out pairs, so runs with
    different seeds are scored on the same pairs; `data.bucket_window` reaches the training batcher."""
    from jaxrlhf.models.hub import load_tokenizer
    from jaxrlhf.rm.data import prepare

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    model_dir, data, _ = setup
    tokenizer = load_tokenizer(model_dir)

    def prepared(seed, split_seed, bucket_window=64):
        config = tiny_rm_config(model_dir, data, tmp_path / "work")
        config.seed, config.data.split_seed, config.data.bucket_window = seed, split_seed, bucket_window
        return prepare(config, tokenizer, is_decoder=True)

    base, other_seed, other_split = prepared(0, 0), prepared(1, 0), prepared(0, 1)
    held = lambda d: d.held_out.chosen.ids.tolist()
    assert held(other_seed) == held(base)
    assert held(other_split) != held(base)
    assert not np.array_equal(other_seed.train_batcher.plan(0), base.train_batcher.plan(0))
    unsorted = prepared(0, 0, bucket_window=0).train_batcher.plan(0)  # same permutation, no length sort
    assert not np.array_equal(unsorted, base.train_batcher.plan(0))
