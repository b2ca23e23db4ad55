"""jaxrlhf.compare end to end: two tiny random Llama policies, a tiny reward model, the CLI by subprocess.

The reference responses come from `rl.sampling.generate` called directly, on all prompts in one
left-padded batch (the CLI sorts, buckets and fills batches), and the reference rewards from
`jaxrlhf.rm.texts.score_texts`, which tokenises and batches on its own path.
"""

from __future__ import annotations

import gzip
import html
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from jaxrlhf.data.prompts import Prompt
from jaxrlhf.rl.policy_compare import read_prompts
from tests.helpers.models import make_tiny_llama_dir

pytestmark = pytest.mark.slow  # trains, spawns processes or loads a real model

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["hello world", "what is red", "one two three four five six seven eight nine ten",
           "why <b> & \"yes\"", "hi", "green blue good bad", "a b c"]
MAX_NEW_TOKENS = 8


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxrlhf.compare", *args], capture_output=True, text=True,
                          cwd=str(ROOT))


def make_policy_dir(path: Path, seed: int) -> Path:
    """A tiny random Llama whose weights are scaled from HF's std 0.02 up to 0.3: at 0.02 the logits
    are flat and any two such models just echo the last prompt token, so A and B would agree."""
    import torch
    import transformers

    make_tiny_llama_dir(path, seed)
    model = transformers.LlamaForCausalLM.from_pretrained(path)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.mul_(15.0)
    model.save_pretrained(path)
    return path


def export_fresh_rm(model_dir: Path, out_dir: Path) -> Path:
    """A Llama reward model with a random head, scaled up so rewards differ by more than rounding."""
    from jaxrlhf.models.export import export_hf
    from jaxrlhf.models.hub import from_pretrained, load_tokenizer

    loaded = from_pretrained(str(model_dir), "reward", seed=7)
    kernel = loaded.model.head.out.kernel
    kernel.set_value(kernel.get_value() * 100.0)
    return export_hf(loaded.model, loaded.family, loaded.config, "reward", out_dir,
                     tokenizer=load_tokenizer(model_dir))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("compare")
    policy_a = make_policy_dir(d / "policy_sft", seed=0)
    policy_b = make_policy_dir(d / "policy_ppo", seed=1)
    rm = export_fresh_rm(policy_a, d / "rm_export")
    prompts_file = d / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = run_cli(f"--a={policy_a}", f"--b={policy_b}", f"--prompts={prompts_file}", f"--rm={rm}",
                  f"--out={d / 'out'}", f"--max_new_tokens={MAX_NEW_TOKENS}", "--batch_size=4", "--rm_max_length=64")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    pairs = [json.loads(line) for line in (d / "out" / "pairs.jsonl").read_text().splitlines()]
    key = json.loads((d / "out" / "key.json").read_text())
    page = (d / "out" / "index.html").read_text()
    return SimpleNamespace(a=policy_a, b=policy_b, rm=rm, summary=summary, pairs=pairs, key=key, page=page)


def unblind(run, letter: str) -> list[str]:
    """The responses of policy `letter` ("a" or "b") in prompt order, through key.json."""
    labels = {item["id"]: item[letter] for item in run.key["items"]}
    return [row[f"response_{labels[row['id']]}"] for row in run.pairs]


def direct_greedy(model_dir: Path) -> tuple[list[str], list[int]]:
    from jaxrlhf.models.hub import from_pretrained, load_tokenizer
    from jaxrlhf.rl.sampling import SamplingConfig, chat_prompts, generate, left_pad

    model = from_pretrained(str(model_dir), "causal_lm").model
    tok = load_tokenizer(model_dir)
    ids_BxP, mask_BxP = left_pad(chat_prompts(tok, PROMPTS), tok.pad_token_id)
    cfg = SamplingConfig(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, eos_ids=(tok.eos_token_id,),
                         pad_id=tok.pad_token_id)
    out = generate(model, ids_BxP, mask_BxP, None, cfg)
    ids_BxN, mask_BxN = np.asarray(out["response_ids_BxN"]), np.asarray(out["response_mask_BxN"])
    texts = [tok.decode(ids[mask > 0], skip_special_tokens=True) for ids, mask in zip(ids_BxN, mask_BxN)]
    return texts, mask_BxN.sum(-1).tolist()


@pytest.mark.multiprocess
def test_responses_unblinded_through_key_equal_direct_generate(run):
    labels_of_a = [item["a"] for item in run.key["items"]]
    assert set(labels_of_a) == {1, 2}, "the seeded order should put A first for some prompts, second for others"
    for letter, model_dir in (("a", run.a), ("b", run.b)):
        texts, lengths = direct_greedy(model_dir)
        assert unblind(run, letter) == texts
        assert [item[f"length_{letter}"] for item in run.key["items"]] == lengths
    assert unblind(run, "a") != unblind(run, "b")  # else the order could be undone wrongly unnoticed
    assert run.summary["mean_length_a"] == pytest.approx(np.mean(direct_greedy(run.a)[1]))


@pytest.mark.multiprocess
def test_blind_files_show_every_prompt_and_no_key(run):
    assert [row["prompt"] for row in run.pairs] == PROMPTS
    assert all(set(row) == {"id", "prompt", "response_1", "response_2"} for row in run.pairs)
    pairs_text = json.dumps(run.pairs)
    for secret in (str(run.a), str(run.b), str(run.rm), run.a.name, run.b.name, "reward"):
        assert secret not in run.page and secret not in pairs_text
    for row in run.pairs:
        for field in ("prompt", "response_1", "response_2"):
            assert html.escape(row[field]) in run.page
    assert "<b>" not in run.page and "&lt;b&gt; &amp;" in run.page
    # Outside the texts being judged, the page names no letter of the key.
    chrome = run.page
    for row in run.pairs:
        for field in ("prompt", "response_1", "response_2"):
            chrome = chrome.replace(html.escape(row[field]), "")
    assert not re.search(r"\b[AaBb]\b", re.sub(r"<[^>]*>", " ", chrome))
    assert "Response 1" in chrome and "Response 2" in chrome


@pytest.mark.multiprocess
def test_win_rate_and_rewards_match_score_texts(run):
    from jaxrlhf.rm.texts import score_texts

    items = run.key["items"]
    rewards_a = np.array([item["reward_a"] for item in items])
    rewards_b = np.array([item["reward_b"] for item in items])
    assert np.ptp(np.concatenate([rewards_a, rewards_b])) > 1e-2
    hand = sum(1.0 if b > a else 0.5 if b == a else 0.0 for a, b in zip(rewards_a, rewards_b)) / len(items)
    assert run.summary["n"] == len(PROMPTS)
    assert run.summary["rm_win_rate_b"] == pytest.approx(hand)
    assert run.summary["mean_reward_a"] == pytest.approx(rewards_a.mean(), abs=1e-6)
    assert run.summary["mean_reward_b"] == pytest.approx(rewards_b.mean(), abs=1e-6)
    # The reward model reads each response as PPO's scorer formats it: one space, then the stripped text.
    texts = [(p, " " + r.strip()) for side in "ab" for p, r in zip(PROMPTS, unblind(run, side))]
    reference = [row["reward"] for row in score_texts(str(run.rm), texts, max_length=64)]
    np.testing.assert_allclose(np.concatenate([rewards_a, rewards_b]), reference, atol=2e-4)


@pytest.mark.multiprocess
def test_bad_inputs_are_one_line_errors(run, tmp_path):
    prompts_file = tmp_path / "p.txt"
    prompts_file.write_text("hello\n")
    empty_dir = tmp_path / "not_a_model"
    empty_dir.mkdir()
    for args, expected in ([(f"--a={run.a}", f"--b={run.b}", f"--prompts={tmp_path / 'missing.jsonl'}"),
                            "missing.jsonl: prompts file not found"],
                           [(f"--a={empty_dir}", f"--b={run.b}", f"--prompts={prompts_file}"),
                            "not_a_model/config.json: config.json missing"]):
        out = run_cli(*args, f"--out={tmp_path / 'out'}")
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
        assert lines[0].startswith("error: ") and expected in lines[0]
    assert not (tmp_path / "out").exists()


def test_read_prompts_formats(tmp_path):
    # The rows PPO reads, parsed by the same function (jaxrlhf.data.prompts): HH dialogues become messages.
    hh = tmp_path / "hh.jsonl.gz"
    with gzip.open(hh, "wt") as f:
        f.write(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: why?\n\nAssistant: because",
                            "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: why?\n\nAssistant: no"}) + "\n")
        f.write(json.dumps({"chosen": "\n\nHuman: one\n\nAssistant: two"}) + "\n")
    assert read_prompts(hh) == [
        Prompt("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: why?\n\nAssistant:",
               (("user", "hi"), ("assistant", "hello"), ("user", "why?"))),
        Prompt("\n\nHuman: one\n\nAssistant:", (("user", "one"),))]
    text = tmp_path / "p.txt"
    text.write_text("first\\nline\n\nsecond\nthird\n")
    assert read_prompts(text, limit=2) == [Prompt("first\nline", (("user", "first\nline"),)),
                                           Prompt("second", (("user", "second"),))]
    # A prompt that ends with an assistant turn is refused here as PPO refuses it.
    ends_with_assistant = tmp_path / "a.jsonl"
    ends_with_assistant.write_text(json.dumps({"chosen": "\n\nHuman: one\n\nAssistant: two\n\nAssistant: x"}) + "\n")
    with pytest.raises(ValueError, match=r"a.jsonl: line 1: field 'chosen': .*does not end with a Human turn"):
        read_prompts(ends_with_assistant)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"response": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2: field 'chosen': missing"):
        read_prompts(bad)
