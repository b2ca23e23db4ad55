"""train_grpo end to end on the tiny Llama with a verifiable reward: the held-out reward rises and the run
exports; a stop and resume is exact; each algorithm runs with a KL; `python -m jaxrlhf.sample` writes K
responses per prompt."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.helpers.data import write_prompts
from tests.helpers.models import make_tiny_llama_dir
from tests.helpers.processes import gloo_available, run_results, run_worker
from tests.helpers.runs import tiny_grpo_config

pytestmark = pytest.mark.slow  # trains and spawns processes

ITERATIONS = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    return make_tiny_llama_dir(root / "policy", seed=0), write_prompts(root / "prompts.jsonl"), root


def records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def whole_run(setup):
    from jaxrlhf.train_grpo import train

    policy, prompts, root = setup
    config = tiny_grpo_config(policy, prompts, root / "whole")
    config.train.iterations = ITERATIONS
    config.train.eval_every = 4
    config.train.sample_every = 4
    config.train.export = True
    config.train.checkpoint_every = 0
    train(config)
    return root / "whole"


def test_grpo_raises_the_held_out_reward_and_exports(setup, whole_run):
    rows = [r for r in records(whole_run) if "grpo/reward_mean" in r]
    assert len(rows) == ITERATIONS
    evals = {r["step"]: r["eval/reward/yes_fraction"] for r in records(whole_run) if "eval/reward/yes_fraction" in r}
    assert sorted(evals) == [0, 4, 8]
    assert evals[8] > evals[0] + 0.3, evals
    for key in ("reward_mean", "group_reward_std", "groups_dropped_frac", "response_length", "policy_loss",
                "clip_frac", "approx_kl", "reward/yes_fraction"):
        assert np.isfinite(rows[-1][f"grpo/{key}"]), key
    assert 0.0 <= rows[0]["grpo/groups_dropped_frac"] <= 1.0
    samples = [json.loads(line) for line in (whole_run / "samples.jsonl").read_text().splitlines()]
    assert {s["iteration"] for s in samples} == {1, 4, 8}
    # The sample table shows one prompt's group: its first rows share the prompt.
    first = [s for s in samples if s["iteration"] == 1]
    assert len({s["prompt"] for s in first[:4]}) == 1

    import torch
    import transformers

    from jaxrlhf.models.hub import from_pretrained

    export = whole_run / "export"
    ids = np.array([[1, 7, 8, 9]], np.int32)
    with torch.no_grad():
        theirs = transformers.AutoModelForCausalLM.from_pretrained(export).eval()(torch.tensor(ids)).logits.numpy()
    ours, _ = from_pretrained(str(export), "causal_lm").model(ids, np.ones_like(ids))
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)
    base, _ = from_pretrained(str(setup[0]), "causal_lm").model(ids, np.ones_like(ids))
    assert np.abs(np.asarray(base) - theirs).max() > 1e-3


def _params(workdir: Path):
    from jaxrlhf.infra.checkpoint import Checkpointer

    ckpt = Checkpointer(workdir / "checkpoints")
    step = ckpt.latest_step()
    restored = ckpt._manager.restore(step)
    ckpt.close()
    return step, jax.tree_util.tree_leaves(restored["state"]["actor"]["params"])


def test_stop_and_resume_equals_uninterrupted(setup, whole_run, tmp_path):
    from jaxrlhf.train_grpo import train

    policy, prompts, _ = setup
    split = tiny_grpo_config(policy, prompts, tmp_path / "split")
    split.train.iterations = ITERATIONS
    split.train.eval_every = 4
    split.train.checkpoint_every = 0
    split.train.stop_after = 3
    assert train(split) == {"stopped_at": 3}
    split.train.stop_after = 0
    train(split)
    (s1, a), (s2, b) = _params(whole_run), _params(tmp_path / "split")
    assert s1 == s2 == ITERATIONS and len(a) == len(b) > 0
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("algorithm", ["rloo", "reinforce_pp", "reinforce_pp_baseline"])
def test_each_algorithm_learns_with_a_kl_to_the_reference(setup, tmp_path, algorithm):
    from jaxrlhf.train_grpo import train

    policy, prompts, _ = setup
    config = tiny_grpo_config(policy, prompts, tmp_path / algorithm, algorithm)
    config.grpo.kl_coef = 0.05
    config.train.iterations = 6
    config.train.eval_every = 6
    train(config)
    rows = records(tmp_path / algorithm)
    evals = [r["eval/reward/yes_fraction"] for r in rows if "eval/reward/yes_fraction" in r]
    train_rows = [r for r in rows if "grpo/kl_per_seq" in r]
    assert evals[-1] > evals[0] + 0.3, evals
    assert train_rows[0]["grpo/kl_k1_per_seq"] == pytest.approx(0.0, abs=1e-5)  # starts at the reference
    assert train_rows[-1]["grpo/kl_k1_per_seq"] > 0.0
    assert ("grpo/kl_loss" in train_rows[-1]) == (algorithm != "reinforce_pp")  # REINFORCE++: KL in the reward
    from jaxrlhf.rl.frontier import kl_reward_points

    png = (tmp_path / algorithm / "kl_reward_frontier.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert kl_reward_points(tmp_path / algorithm / "metrics.jsonl", "grpo/", "reward_mean") == [
        (r["step"], r["grpo/kl_k1_per_seq"], r["grpo/reward_mean"]) for r in train_rows]


def test_lora_grpo_uses_the_adapters_off_base_as_reference(setup, tmp_path):
    from jaxrlhf.train_grpo import train

    policy, prompts, _ = setup
    config = tiny_grpo_config(policy, prompts, tmp_path / "lora")
    config.policy.train_mode = "lora"
    config.grpo.kl_coef = 0.1
    config.train.iterations = 2
    out = train(config)
    assert out["kl_k1_per_seq"] == pytest.approx(0.0, abs=0.5) and np.isfinite(out["kl_loss"])
    first = [r for r in records(tmp_path / "lora") if "grpo/kl_k1_per_seq" in r][0]
    assert first["grpo/kl_k1_per_seq"] == 0.0  # LoRA B starts at zero: the policy is its base


def test_sample_cli_writes_k_responses_per_prompt(setup, tmp_path):
    policy, prompts, _ = setup
    out = tmp_path / "samples.jsonl"
    env = dict(__import__("os").environ, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-m", "jaxrlhf.sample", f"--policy={policy}", f"--prompts={prompts}", "--k=3",
                    "--limit=5", "--temperature=1.0", "--max_new_tokens=5", f"--out={out}"], check=True, env=env,
                   capture_output=True, text=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and all(len(r["responses"]) == 3 and len(r["lengths"]) == 3 for r in rows)
    assert rows[0]["settings"]["temperature"] == 1.0 and rows[0]["model"] == str(policy) and rows[0]["k"] == 3
    assert any(len(set(r["responses"])) > 1 for r in rows)  # sampled: a prompt's responses differ
    greedy = subprocess.run([sys.executable, "-m", "jaxrlhf.sample", f"--policy={policy}", f"--prompts={prompts}",
                             "--k=2", "--limit=3", "--max_new_tokens=5"], check=True, env=env, capture_output=True,
                            text=True)
    rows = [json.loads(line) for line in greedy.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 3 and all(r["responses"][0] == r["responses"][1] for r in rows)
    from jaxrlhf.rl.policy_compare import GenerationSettings, generate_responses, read_prompts

    single, _ = generate_responses(str(policy), read_prompts(prompts, 3), GenerationSettings(max_new_tokens=5))
    assert [r["responses"][0] for r in rows] == single  # the K-sample path greedy-decodes what compare does


def test_a_kl_bound_stops_the_run_with_a_checkpoint_or_warns(setup, tmp_path, capfd):
    from jaxrlhf.train_grpo import train
    from tests.helpers.runs import complete_steps

    policy, prompts, _ = setup
    config = tiny_grpo_config(policy, prompts, tmp_path / "kl")
    config.grpo.kl_coef = 0.01
    config.train.iterations = 8
    config.train.checkpoint_every = 0
    config.train.max_kl_per_seq = 0.05  # iteration 1 samples the reference (KL 0); the updates move it past this
    out = train(config)
    stopped = out["stopped_at"]
    assert 1 < stopped < 8 and complete_steps(tmp_path / "kl" / "checkpoints") == [stopped]
    last = [r for r in records(tmp_path / "kl") if "grpo/kl_k1_per_seq" in r][-1]
    assert last["step"] == stopped and last["grpo/kl_k1_per_seq"] > 0.05
    assert "passed train.max_kl_per_seq=0.05" in capfd.readouterr().err
    config.workdir = str(tmp_path / "warn")
    config.train.on_max_kl = "warn"
    assert "stopped_at" not in train(config)
    assert capfd.readouterr().err.count("train.on_max_kl=warn") == 1


def _sharded(setup, tmp_path, name, mesh, devices):
    policy, prompts, _ = setup
    out = run_worker("sharded_grpo", "--policy", policy, "--prompts", prompts, "--work", tmp_path / name,
                     "--mesh", ",".join(map(str, mesh)), devices=devices,
                     env={"HF_DATASETS_CACHE": str(tmp_path / "hf")})
    assert f"DEVICES {devices}" in out.stdout
    return [r for r in records(tmp_path / name) if "grpo/reward_mean" in r]


@pytest.mark.multiprocess
def test_sharded_grpo_iterations_match_one_device(setup, tmp_path):
    """A 2x2x2 mesh over 8 fake devices (data, FSDP, tensor at once) computes the iterations one device does."""
    one, mixed = _sharded(setup, tmp_path, "one", (1, 1, 1), 1), _sharded(setup, tmp_path, "mixed", (2, 2, 2), 8)
    assert len(one) == len(mixed) == 2
    for key in ("reward_mean", "kl_per_seq", "policy_loss", "kl_loss", "approx_kl", "response_length"):
        for a, b in zip(one, mixed):
            assert abs(a[f"grpo/{key}"] - b[f"grpo/{key}"]) < 1e-5, (key, a[f"grpo/{key}"], b[f"grpo/{key}"])


@pytest.mark.multiprocess
def test_two_process_grpo_equals_one_process(setup, tmp_path):
    """Two processes on 127.0.0.1 (two CPU devices each) against one process with four: the same iteration
    metrics, one metrics file and export written by process 0, the same final actor on both processes."""
    if not gloo_available():
        pytest.skip("this jaxlib has no gloo CPU collectives, so two CPU processes cannot run one computation")
    policy, prompts, _ = setup

    def launch(name, processes, devices):
        args = ["--policy", policy, "--prompts", prompts, "--work", tmp_path / name]
        return run_results("multihost_grpo", args, processes, devices, {"HF_DATASETS_CACHE": str(tmp_path / "hf")})

    launch("one", 1, 4)
    two = launch("two", 2, 2)
    assert two[0]["checksum"] == two[1]["checksum"]
    a, b = ([r for r in records(tmp_path / n) if "grpo/reward_mean" in r] for n in ("one", "two"))
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]  # one writer: no line twice
    for key in ("reward_mean", "kl_per_seq", "policy_loss", "kl_loss", "approx_kl", "response_length"):
        np.testing.assert_allclose([r[f"grpo/{key}"] for r in b], [r[f"grpo/{key}"] for r in a], atol=1e-5,
                                   err_msg=key)
    assert (tmp_path / "two" / "export" / "config.json").exists()


def test_a_gold_reward_model_scores_the_rollouts_every_n_iterations(setup, tmp_path):
    """reward_model.gold: every train.gold_every iterations the gold RM's mean score of that iteration's
    responses is logged; checked against the gold scorer on the last iteration's prompts and texts."""
    from jaxrlhf.infra import sharding as shd
    from jaxrlhf.rm.load import load_trained_rm
    from jaxrlhf.train_grpo import train
    from tests.helpers.runs import tiny_grpo_config

    policy, prompts, root = setup
    gold = make_tiny_llama_dir(root / "gold", seed=5)
    config = tiny_grpo_config(policy, prompts, tmp_path / "gold")
    config.reward_model.gold = str(gold)
    config.reward_model.max_length = 64
    config.train.gold_every = 2
    config.train.iterations = 4
    config.train.sample_every = 4
    config.train.samples_shown = 16  # the table then holds all 4 x 4 responses of iteration 4
    train(config)
    rows = {r["step"]: r for r in records(tmp_path / "gold") if "gold/score_mean" in r}
    assert sorted(rows) == [2, 4]
    from jaxrlhf.data.prompts import prompt_of_text

    samples = [json.loads(line) for line in (tmp_path / "gold" / "samples.jsonl").read_text().splitlines()]
    last = [s for s in samples if s["iteration"] == 4]
    assert len(last) == 16
    scorer = load_trained_rm(str(gold), shd.make_mesh()).scorer(max_length=64)
    # One-message prompts: the table's prompt is the prompt text itself.
    mine = scorer.score_texts([prompt_of_text(s["prompt"]) for s in last], [s["response"] for s in last])
    assert rows[4]["gold/score_mean"] == pytest.approx(float(np.mean(mine)), abs=1e-4)
