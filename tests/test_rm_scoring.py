"""The reward model is read the way it was trained, by every consumer (rm/scoring.py).

- length normalisation: train with loss.length_normalise, export; eval_rm on the held-out file gives
  eval.json's numbers, reward_stats.json describes the quantity PPO's scorer returns;
- prompt rendering: PPO's policy sees chat-template tokens, but its reward model must read the data's
  own text format (or its own chat template for chat-format data), on every path.
"""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.data.prompts import Prompt, prompt_of_text
from jaxrlhf.infra import sharding as shd
from jaxrlhf.rm.load import load_trained_rm
from jaxrlhf.rm.scoring import SPEC_FILE
from tests.helpers.data import write_separable_pairs
from tests.helpers.models import make_tiny_llama_dir
from tests.helpers.runs import tiny_rm_config

pytestmark = pytest.mark.slow  # trains, spawns processes or loads a real model


def _length_varied_pairs(path, n, seed):
    """Separable pairs whose chosen and rejected differ in length, so r and r / length rank apart."""
    import random

    rng = random.Random(seed)
    words = "one two three four five red green blue hello world what why yes no".split()
    with open(path, "w") as f:
        for _ in range(n):
            prompt = " ".join(rng.choice(words) for _ in range(rng.randint(2, 5)))
            chosen = " ".join(["good"] + [rng.choice(words) for _ in range(rng.randint(0, 6))])
            rejected = " ".join(["bad"] + [rng.choice(words) for _ in range(rng.randint(0, 6))])
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    return path


@pytest.fixture(scope="module")
def normalised_run(tmp_path_factory):
    from jaxrlhf.train_rm import train

    root = tmp_path_factory.mktemp("lnorm")
    model = make_tiny_llama_dir(root / "model", seed=3)
    train_file = _length_varied_pairs(root / "train.jsonl", 64, 0)
    held_file = _length_varied_pairs(root / "held.jsonl", 24, 1)
    config = tiny_rm_config(model, train_file, root / "work")
    config.data.eval_source = str(held_file)
    config.loss.length_normalise = True
    config.train.epochs = 2
    config.train.export = True
    summary = train(config)
    return root, summary, held_file, train_file


@pytest.mark.multiprocess
def test_eval_rm_on_the_export_gives_what_eval_json_gave(normalised_run):
    root, summary, held_file, _ = normalised_run
    work = root / "work"
    eval_json = json.loads((work / "eval.json").read_text())
    spec = json.loads((work / "export" / SPEC_FILE).read_text())
    assert spec["length_normalise"] is True and spec["prompt_format"] == "text"
    for model in (work / "export", work):  # the export and the workdir are the same reward model
        out = subprocess.run([sys.executable, "-m", "jaxrlhf.eval_rm", f"--model={model}", f"--data={held_file}",
                              "--max_length=32"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["n"] == eval_json["n"] == 24
        for key in ("accuracy", "mean_margin", "reward_mean", "reward_std"):
            assert result[key] == pytest.approx(eval_json[key], abs=1e-5), key
    # The scorer divides the head's output by the response length; raw outputs are far from that, so a
    # consumer that forgot the switch could not pass the comparisons above.
    rm = load_trained_rm(str(work / "export"))
    scorer = rm.scorer(max_length=32)
    enc = scorer.encode_raw(["a b"], ["good one two three four five"])
    ids = jnp.asarray(enc.ids[None, :])
    head = float(rm.loaded.model(ids, jnp.ones_like(ids))[0])
    assert float(scorer.score_encoded(enc)[0]) == pytest.approx(head / enc.response_len[0], rel=1e-5)
    assert abs(head) > 1.5 * abs(head / enc.response_len[0])


def test_reward_stats_describe_what_ppo_reads(normalised_run):
    root, _, _, train_file = normalised_run
    stats = json.loads((root / "work" / "export" / "reward_stats.json").read_text())
    assert stats["length_normalised"] is True and stats["n_pairs"] == 64 and stats["n_rewards"] == 128
    rm = load_trained_rm(str(root / "work" / "export"))
    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    prompts = [prompt_of_text(r["prompt"]) for r in rows] * 2
    responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    # PPO's path: this process's rows as one global batch on a mesh.
    mesh = shd.make_mesh(devices=jax.devices()[:1])
    rewards = np.asarray(rm.scorer(max_length=32).score_global(prompts, responses, mesh), np.float64)
    assert stats["reward_mean"] == pytest.approx(rewards.mean(), abs=1e-5)
    assert stats["reward_std"] == pytest.approx(rewards.std(), rel=1e-4)


@pytest.mark.parametrize("objective", ["regression", "plackett_luce"])
def test_objectives_without_length_normalisation_refuse_it(tmp_path, objective):
    from jaxrlhf.train_rm import train

    model = make_tiny_llama_dir(tmp_path / "model", seed=3)
    path = tmp_path / "data.jsonl"
    if objective == "regression":
        rows = [{"prompt": f"hi {i % 6}", "response": f"good {i}", "rating": float(i % 3)} for i in range(24)]
    else:
        rows = [{"prompt": f"hi {i}", "responses": ["good", "bad", "red"], "ranks": [0, 2, 1]} for i in range(24)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    config = tiny_rm_config(model, path, tmp_path / "work")
    config.data.eval_size = 4
    config.data.ratings_mode = "regression" if objective == "regression" else "pairs"
    config.data.ranked_mode = "plackett_luce" if objective == "plackett_luce" else "pairs"
    config.loss.length_normalise = True
    with pytest.raises(ValueError, match=f"length_normalise applies to the pairs objective only, not '{objective}'"):
        train(config)


@pytest.fixture(scope="module")
def text_rm(tmp_path_factory):
    """A tiny decoder RM trained on raw "prompt + response" text, sharing the ChatML policy's vocabulary."""
    from jaxrlhf.train_rm import train

    root = tmp_path_factory.mktemp("text_rm")
    model = make_tiny_llama_dir(root / "model", seed=1)
    config = tiny_rm_config(model, write_separable_pairs(root / "pairs.jsonl", 48), root / "work")
    config.train.epochs = 1
    config.train.export = True
    train(config)
    return root / "work" / "export"


def test_ppo_scorer_feeds_the_rm_its_training_format_not_the_policy_chat_tokens(text_rm):
    from transformers import AutoTokenizer

    from jaxrlhf.rl.prompts import render_for_policy

    rm = load_trained_rm(str(text_rm))
    assert rm.spec.prompt_format == "text" and rm.spec.response_prefix == ""
    policy_tok = AutoTokenizer.from_pretrained(text_rm)  # same vocabulary: the old "direct" path applied here
    assert policy_tok.chat_template  # the fixture tokenizer has a ChatML template
    prompts = [prompt_of_text("hello world"), prompt_of_text("what why"), prompt_of_text("red")]
    responses = ["good one", "two bad", "good good"]
    mesh = shd.make_mesh(devices=jax.devices()[:1])
    got = np.asarray(rm.scorer(max_length=32).score_global(prompts, responses, mesh))

    model = rm.loaded.model
    eos = rm.tokenizer.eos_token_id

    def head(ids):
        ids = jnp.asarray([ids])
        return float(model(ids, jnp.ones_like(ids))[0])

    # Reference, written out: as tokenize_pairs tokenised training rows: specials, prompt ids, response ids, EOS.
    tok = rm.tokenizer
    prefix = tok("x", add_special_tokens=True)["input_ids"][:-len(tok("x", add_special_tokens=False)["input_ids"])]
    want = [head(prefix + tok(p.text, add_special_tokens=False)["input_ids"]
                 + tok(r, add_special_tokens=False)["input_ids"] + [eos]) for p, r in zip(prompts, responses)]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # What the old same-vocabulary path scored: the policy's chat-rendered prompt + response tokens.
    chat = [head(ids + tok(r, add_special_tokens=False)["input_ids"] + [eos])
            for ids, r in zip(render_for_policy(policy_tok, prompts), responses)]
    assert np.abs(np.asarray(chat) - np.asarray(want)).max() > 1e-2  # the RM's score depends on the rendering

    # compare's RM win rate scores the same quantity
    from jaxrlhf.rl.policy_compare import reward_model_scores

    np.testing.assert_allclose(reward_model_scores(str(text_rm), prompts, responses, 32), want, atol=1e-5)


def test_chat_format_rm_is_fed_through_its_own_template(tmp_path):
    from jaxrlhf.data import load_pair_data
    from jaxrlhf.train_rm import train

    model = make_tiny_llama_dir(tmp_path / "model", seed=2)
    rows = [{"chosen": [{"role": "user", "content": f"hi {w}"}, {"role": "assistant", "content": f"good {w}"}],
             "rejected": [{"role": "user", "content": f"hi {w}"}, {"role": "assistant", "content": f"bad {w}"}]}
            for w in "one two three four five six seven eight nine ten red green blue yes no why".split()]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    config = tiny_rm_config(model, path, tmp_path / "work")
    config.data.eval_size = 4
    config.train.epochs = 1
    config.train.export = True
    train(config)
    rm = load_trained_rm(str(tmp_path / "work" / "export"))
    assert rm.spec.prompt_format == "chat" and rm.spec.data_format == "chat"
    # The scorer's encoding of a policy's (prompt, response) equals the training tokenisation of that row.
    train_data, _, _ = load_pair_data(str(path), rm.tokenizer, 32, format="chat", append_eos=True)
    scorer = rm.scorer(max_length=32)
    enc = scorer.encode([Prompt("hi one", (("user", "hi one"),))], ["good one"])
    np.testing.assert_array_equal(enc.sequence(0), train_data.chosen.sequence(0))
    assert int(enc.response_len[0]) == int(train_data.chosen.response_len[0])
