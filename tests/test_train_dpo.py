"""train_dpo end to end on a tiny random Llama: it learns, exports an HF causal LM, resumes exactly with its
cached reference, agrees with itself across reference modes and accumulation, listwise DPO on two-response
lists is DPO, and KTO learns from ratings."""

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from jaxrlhf.po.reference import FILE
from jaxrlhf.train_dpo import train
from tests.helpers import runs
from tests.helpers.models import make_tiny_llama_dir
from tests.helpers.runs import complete_steps
from tests.helpers.tokenizers import WORDS

pytestmark = pytest.mark.slow  # trains

GOOD, BAD = "yes good one", "no bad red green"


def _prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(n)]


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    prompts = _prompts(64)
    return {
        "root": root,
        "model": make_tiny_llama_dir(root / "model"),
        "pairs": _write(root / "pairs.jsonl", [{"prompt": p, "chosen": GOOD, "rejected": BAD} for p in prompts]),
        "ranked": _write(root / "ranked.jsonl", [{"prompt": p, "responses": [BAD, GOOD], "ranks": [1, 0]}
                                                 for p in prompts]),
        "rated": _write(root / "rated.jsonl", [{"prompt": p, "response": GOOD if i % 2 else BAD,
                                                "rating": float(i % 2)} for i, p in enumerate(prompts)]),
    }


def tiny_dpo_config(files, workdir: Path, data: str = "pairs", loss: str = "sigmoid"):
    return runs.tiny_dpo_config(files["model"], files[data], workdir, loss)


@pytest.fixture(scope="module")
def straight(files):
    config = tiny_dpo_config(files, files["root"] / "straight")
    config.train.export = True
    return {"config": config, "summary": train(config)}


def test_dpo_learns_the_preference_and_exports_an_hf_causal_lm(files, straight):
    s, workdir = straight["summary"], Path(straight["config"].workdir)
    assert s["accuracy"] == 1.0 and s["n"] == 8
    assert s["loss"] < math.log(2) - 0.1 and s["reward_chosen"] > 0 > s["reward_rejected"]
    assert json.loads((workdir / "eval.json").read_text())["accuracy"] == 1.0
    export = workdir / "export"
    assert json.loads((export / "preference.json").read_text()) == {
        "loss_type": "sigmoid", "beta": 0.1, "reference": str(files["model"]), "reference_free": False,
        "append_eos": True}
    # The export is the trained policy: its log-prob of GOOD after a prompt rose against the starting model's.
    tok = transformers.AutoTokenizer.from_pretrained(export)
    ids = tok("hello two three " + GOOD)["input_ids"] + [tok.eos_token_id]
    n = len(tok(GOOD, add_special_tokens=False)["input_ids"]) + 1

    def logp(model_dir):
        tm = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
        with torch.no_grad():
            lp = torch.log_softmax(tm(torch.tensor([ids])).logits[0].double(), -1)
        return float(sum(lp[t - 1, ids[t]] for t in range(len(ids) - n, len(ids))))

    assert logp(export) > logp(files["model"]) + 1.0


def test_online_reference_and_accumulation_give_the_cached_run(files, straight):
    """The reference computed in every step, and each step in two micro-batches: the same run."""
    config = tiny_dpo_config(files, files["root"] / "online")
    config.loss.reference_logps = "online"
    config.optim.grad_accum = 2
    s = train(config)
    assert not (Path(config.workdir) / FILE).exists()
    for key in ("loss", "mean_margin", "logp_chosen", "reward_rejected"):
        assert s[key] == pytest.approx(straight["summary"][key], abs=2e-4), key


def test_resume_is_exact_and_reads_the_cached_reference_back(files, straight, capsys):
    config = tiny_dpo_config(files, files["root"] / "resumed")
    config.train.stop_after = 10
    assert train(config) == {"stopped_at": 10}
    assert 10 in complete_steps(Path(config.workdir) / "checkpoints")
    cache = Path(config.workdir) / FILE
    written = cache.stat().st_mtime_ns
    capsys.readouterr()
    config.train.stop_after = 0
    s = train(config)
    assert "reference log-probs: read from" in capsys.readouterr().out
    assert cache.stat().st_mtime_ns == written
    for key in ("loss", "accuracy", "mean_margin", "logp_chosen"):
        assert s[key] == pytest.approx(straight["summary"][key], abs=1e-5), key


def test_a_stale_reference_cache_is_recomputed_not_reused(files, capsys):
    """The cache's fingerprint covers the data: a max_length that cuts prompts (other token ids) recomputes it."""
    config = tiny_dpo_config(files, files["root"] / "stale")
    config.train.max_steps = 2
    config.train.epochs = 1
    config.loss.reference_logps = "cached"
    train(config)
    before = np.load(Path(config.workdir) / FILE)["fingerprint"]
    config.data.max_length = 10
    config.train.resume = False
    capsys.readouterr()
    train(config)
    assert "read from" not in capsys.readouterr().out
    assert np.load(Path(config.workdir) / FILE)["fingerprint"] != before


def test_listwise_dpo_on_two_response_lists_is_dpo(files, straight):
    """Plackett-Luce over two responses is the sigmoid loss: the same pairs as ranked lists train alike."""
    config = tiny_dpo_config(files, files["root"] / "listwise", data="ranked", loss="listwise")
    s = train(config)
    assert s["loss"] == pytest.approx(straight["summary"]["loss"], abs=2e-4)
    assert s["accuracy"] == 1.0 and s["kendall_tau"] == 1.0 and s["n_lists"] == 8


def test_kto_learns_desirable_from_undesirable_ratings(files):
    config = tiny_dpo_config(files, files["root"] / "kto", data="rated", loss="kto")
    s = train(config)
    assert s["n"] == 8 and s["accuracy"] == 1.0
    assert s["reward_desirable"] > 0 > s["reward_undesirable"]
    assert s["loss"] < 0.5  # 1 - sigmoid(0) = 0.5 per response at the start


def test_lora_reference_is_the_policy_with_adapters_off(files, capsys):
    """Under LoRA no second model loads, and the starting policy equals its reference: loss log 2 exactly."""
    config = tiny_dpo_config(files, files["root"] / "lora")
    config.model.train_mode = "lora"
    config.model.lora_targets = "q_proj|v_proj"
    config.train.eval_at_start = True
    config.train.max_steps = 3
    config.loss.reference_logps = "online"
    train(config)
    out = capsys.readouterr().out
    assert "(the policy, LoRA adapters off)" in out
    first = next(json.loads(line) for line in (Path(config.workdir) / "metrics.jsonl").read_text().splitlines()
                 if "eval/loss" in line)
    assert first["eval/loss"] == pytest.approx(math.log(2), abs=1e-6) and first["eval/accuracy"] == 0.0


def test_eval_rm_scores_the_policy_as_an_implicit_reward_model(files, straight, tmp_path):
    """eval_rm on the export (beta and reference from its preference.json) and on the workdir: the RM summary
    of beta * (log p - log p_ref), checked against PyTorch's log-probs of both models."""
    import subprocess
    import sys

    from jaxrlhf.po.implicit import evaluate_implicit

    workdir = Path(straight["config"].workdir)
    rows = [{"prompt": p, "chosen": GOOD, "rejected": BAD} for p in _prompts(3, seed=9)]
    rows.append({"prompt": "hello", "chosen": BAD, "rejected": GOOD})  # one the policy gets wrong
    data = _write(tmp_path / "four.jsonl", rows)
    tok = transformers.AutoTokenizer.from_pretrained(workdir / "export")

    def logp(model_dir, prompt, response):
        tm = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
        ids = tok(prompt)["input_ids"] + tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(ids) - len(tok(prompt)["input_ids"])
        with torch.no_grad():
            lp = torch.log_softmax(tm(torch.tensor([ids])).logits[0].double(), -1)
        return float(sum(lp[t - 1, ids[t]] for t in range(len(ids) - n, len(ids))))

    reward = {(r["prompt"], side): 0.1 * (logp(workdir / "export", r["prompt"], r[side])
                                          - logp(files["model"], r["prompt"], r[side]))
              for r in rows for side in ("chosen", "rejected")}
    margins = [reward[(r["prompt"], "chosen")] - reward[(r["prompt"], "rejected")] for r in rows]
    from_export = evaluate_implicit(str(workdir / "export"), str(data))
    from_workdir = evaluate_implicit(str(workdir), str(data))
    assert from_export["accuracy"] == 0.75 and from_export["n"] == 4
    assert from_export["mean_margin"] == pytest.approx(np.mean(margins), abs=1e-4)
    assert from_export["implicit_reward"] == {"beta": 0.1, "reference": str(files["model"])}
    for key in ("accuracy", "mean_margin", "reward_mean", "reward_std"):
        assert from_workdir[key] == pytest.approx(from_export[key], abs=1e-5), key
    out = subprocess.run([sys.executable, "-m", "jaxrlhf.eval_rm", f"--model={workdir / 'export'}", f"--data={data}",
                          "--beta=0.2"], capture_output=True, text=True, check=True, env=_cpu_env())
    cli = json.loads(out.stdout.strip().splitlines()[-1])
    assert cli["mean_margin"] == pytest.approx(2 * from_export["mean_margin"], abs=1e-4)  # scaled by beta
    assert {"accuracy", "n", "n_rewards", "mean_margin", "reward_mean", "reward_std", "length_correlation"} <= set(cli)


def _cpu_env():
    import os

    return dict(os.environ, JAX_PLATFORMS="cpu")
