"""PPO end to end on tiny models: the reward rises, resume is exact, 8 sharded devices equal one, export."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.helpers.data import write_prompts
from tests.helpers.models import make_tiny_llama_dir
from tests.helpers.processes import run_worker
from tests.helpers.runs import make_tiny_rm_export, tiny_ppo_config

pytestmark = pytest.mark.slow  # trains, spawns processes or loads a real model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo")
    policy = make_tiny_llama_dir(root / "policy", seed=0)
    return policy, make_tiny_rm_export(root), write_prompts(root / "prompts.jsonl"), root


def records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


ITERATIONS = 24


@pytest.fixture(scope="module")
def whole_run(setup):
    """24 uninterrupted iterations (the resume test replays them with a stop in the middle)."""
    from jaxrlhf.train_ppo import train

    policy, rm, prompts, root = setup
    config = tiny_ppo_config(policy, rm, prompts, root / "whole")
    config.train.iterations = ITERATIONS
    config.train.sample_every = 12
    config.train.eval_every = 6
    config.train.checkpoint_every = 0
    config.train.export = True
    train(config)
    return root / "whole"


def test_ppo_raises_the_reward_and_exports(setup, whole_run):
    policy = setup[0]
    work = whole_run
    rows = [r for r in records(work) if "ppo/score_mean" in r]
    scores = np.array([r["ppo/score_mean"] for r in rows])
    assert len(scores) == 24
    # The RM prefers "good" over "bad"; the policy learns to say it.
    assert scores[-6:].mean() > scores[:6].mean() + 0.3, scores
    assert max(r["ppo/kl_k1_per_seq"] for r in rows) < 10.0
    # The held-out prompts, sampled with the same keys at each evaluation, show the same rise.
    evals = {r["step"]: r["eval/score_mean"] for r in records(work) if "eval/score_mean" in r}
    assert sorted(evals) == [0, 6, 12, 18, 24]
    assert np.mean([evals[18], evals[24]]) > evals[0] + 0.3, evals
    for key in ("reward_mean", "reward_std", "kl_per_seq", "entropy", "clip_frac", "approx_kl", "value_loss",
                "value_clip_frac", "explained_variance", "response_length", "ended_frac", "ref_perplexity"):
        assert np.isfinite(rows[-1][f"ppo/{key}"]), key
    samples = [json.loads(l) for l in (work / "samples.jsonl").read_text().splitlines()]
    assert {s["iteration"] for s in samples} == {1, 12, 24} and all("response" in s for s in samples)

    # The exported policy loads in transformers and computes the logits our trained actor computes.
    import torch
    import transformers

    from jaxrlhf.models.hub import from_pretrained

    export = work / "export"
    ours = from_pretrained(str(export), "causal_lm").model
    ids = np.array([[1, 7, 8, 9, 10]], np.int32)
    with torch.no_grad():
        theirs = transformers.AutoModelForCausalLM.from_pretrained(export).eval()(torch.tensor(ids)).logits.numpy()
    logits, _ = ours(ids, np.ones_like(ids))
    np.testing.assert_allclose(np.asarray(logits), theirs, atol=1e-4)
    base, _ = from_pretrained(str(policy), "causal_lm").model(ids, np.ones_like(ids))
    assert np.abs(np.asarray(base) - theirs).max() > 1e-3  # the export holds the trained weights


def final_params(workdir: Path):
    from jaxrlhf.infra.checkpoint import Checkpointer

    ckpt = Checkpointer(workdir / "checkpoints")
    step = ckpt.latest_step()
    restored = ckpt._manager.restore(step)  # raw restore: whatever was saved, as numpy
    ckpt.close()
    return step, jax.tree_util.tree_leaves(restored["state"]["actor"]["params"]) + \
        jax.tree_util.tree_leaves(restored["state"]["critic"]["params"])


def test_stop_and_resume_equals_uninterrupted(setup, whole_run, tmp_path):
    """Stopped after iteration 9 (as SIGTERM would), resumed: every parameter equal bit for bit."""
    from jaxrlhf.train_ppo import train

    policy, rm, prompts, _ = setup
    split = tiny_ppo_config(policy, rm, prompts, tmp_path / "split")
    split.train.iterations = ITERATIONS
    split.train.checkpoint_every = 0
    split.train.stop_after = 9
    assert train(split) == {"stopped_at": 9}
    split.train.stop_after = 0
    train(split)
    (s1, a), (s2, b) = final_params(whole_run), final_params(tmp_path / "split")
    assert s1 == s2 == ITERATIONS and len(a) == len(b) > 0
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    last = lambda w: [r for r in records(w) if r["step"] == ITERATIONS and "ppo/score_mean" in r][-1]
    assert last(whole_run)["ppo/score_mean"] == last(tmp_path / "split")["ppo/score_mean"]


def run_sharded(setup, tmp_path, name, mesh, devices):
    policy, rm, prompts, _ = setup
    work = tmp_path / name
    out = run_worker("sharded_ppo", "--policy", policy, "--rm", rm, "--prompts", prompts, "--work", work,
                     "--mesh", ",".join(map(str, mesh)), devices=devices,
                     env={"HF_DATASETS_CACHE": str(tmp_path / "hf")})
    assert f"DEVICES {devices}" in out.stdout
    return records(work)


@pytest.fixture(scope="module")
def one_device(setup, tmp_path_factory):
    return run_sharded(setup, tmp_path_factory.mktemp("ppo_one"), "one", (1, 1, 1), 1)


@pytest.mark.multiprocess
@pytest.mark.parametrize("name,mesh", [("mixed", (2, 2, 2)), ("data", (8, 1, 1)), ("fsdp", (1, 8, 1)),
                                       ("tensor", (1, 1, 8))])
def test_sharded_ppo_iterations_match_one_device(setup, one_device, tmp_path, name, mesh):
    sharded = run_sharded(setup, tmp_path, name, mesh, 8)
    assert len(one_device) == len(sharded) == 2
    for key in ("score_mean", "kl_per_seq", "policy_loss", "value_loss", "approx_kl", "response_length"):
        for a, b in zip(one_device, sharded):
            assert abs(a[f"ppo/{key}"] - b[f"ppo/{key}"]) < 1e-5, (key, a[f"ppo/{key}"], b[f"ppo/{key}"])
