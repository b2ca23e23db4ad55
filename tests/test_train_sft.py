"""SFT end to end on a tiny random Llama: masked loss vs PyTorch, learning, export, resume, bad rows."""

import json
import random
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.configs.base import sft_defaults
from jaxrlhf.data.errors import DataError
from jaxrlhf.data.sources import load_table
from jaxrlhf.infra.checkpoint import Checkpointer
from jaxrlhf.models.hub import from_pretrained, load_tokenizer
from jaxrlhf.sft.data import Example, SFTBatcher, parse_sft_table, tokenize_examples
from jaxrlhf.sft.step import response_nll
from jaxrlhf.train_sft import train
from jaxrlhf.training.run_setup import load_model
from jaxrlhf.training.trainable import split_trainable
from tests.helpers.models import make_tiny_llama_dir
from tests.helpers.tokenizers import WORDS

pytestmark = pytest.mark.slow  # trains, spawns processes or loads a real model

FILLER = [w for w in WORDS if w not in ("yes", "no", "good", "bad")]


def write_memorisable(path: Path, n: int, seed: int = 0) -> Path:
    """Random prompts; the answer is one of two fixed phrases, picked by whether the prompt says "hello"."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
            response = "yes good one two" if "hello" in words else "no bad red green blue"
            f.write(json.dumps({"prompt": " ".join(words), "response": response}) + "\n")
    return path


def tiny_sft_config(model_dir: Path, data_file: Path, workdir: Path):
    config = sft_defaults()
    config.workdir = str(workdir)
    config.model.name = str(model_dir)
    config.model.train_mode = "full"
    config.model.lora_targets = "q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"
    config.data.source = str(data_file)
    config.data.eval_size = 8
    config.data.max_length = 32
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.data.pad_to_multiple = 16
    config.loss.chunk_size = 8
    config.optim.learning_rate = 1e-2
    config.optim.warmup_steps = 1
    config.train.epochs = 8
    config.train.log_every = 5
    config.train.checkpoint_every = 5
    config.train.export = False
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One full run with export, shared by the learning, export and resume tests."""
    root = tmp_path_factory.mktemp("sft")
    model_dir = make_tiny_llama_dir(root / "model")
    data = write_memorisable(root / "rows.jsonl", 48)
    config = tiny_sft_config(model_dir, data, root / "straight")
    config.train.export = True
    summary = train(config)
    return {"root": root, "model_dir": model_dir, "data": data, "config": config, "summary": summary}


def checkpoint_model(config, workdir: Path):
    """The model with the trainable parameters of the newest checkpoint in `workdir`."""
    loaded = load_model(config, None, "causal_lm")
    graphdef, trainable, frozen = split_trainable(loaded.model, config.model.train_mode)
    ckpt = Checkpointer(workdir / "checkpoints")
    params, _, _ = ckpt.restore_params(trainable)
    ckpt.close()
    return nnx.merge(graphdef, params, frozen), params


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_loss_sums_response_tokens_only_like_pytorch(tmp_path, padding_side):
    import torch
    import transformers

    model_dir = make_tiny_llama_dir(tmp_path / "model", seed=1)
    tok = load_tokenizer(model_dir)
    examples = [Example("hello world what", "good yes", 1), Example("hi", "red green blue one two three", 2),
                Example("a b c d e f g", "no", 3)]
    data = tokenize_examples(examples, tok, max_length=32)
    # 4 rows for 3 examples: the 4th is a weight-0 filler that must not count.
    batch = SFTBatcher(data, 4, shuffle=False, padding_side=padding_side, pad_to_multiple=16).batch(0, 0)
    assert batch["weight_B"].tolist() == [1, 1, 1, 0] and (batch["mask_BxT"] == 0).any()
    loaded = from_pretrained(str(model_dir), "causal_lm")
    nll, tokens = response_nll(loaded.model, {k: jnp.asarray(v) for k, v in batch.items()}, chunk_size=4)

    # Reference: each example alone (no padding) through transformers, cross-entropy summed over the
    # response tokens and the EOS, located by tokenising prompt and response independently.
    torch_lm = transformers.LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    ref_sum, ref_count, all_sum = 0.0, 0, 0.0
    for ex in examples:
        prompt_ids = tok(ex.prompt)["input_ids"]
        ids = prompt_ids + tok(ex.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logits = torch_lm(torch.tensor([ids])).logits[0].double()
        nll_t = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none").numpy()
        ref_sum += nll_t[len(prompt_ids) - 1:].sum()
        ref_count += len(ids) - len(prompt_ids)
        all_sum += nll_t.sum()
    assert int(tokens) == ref_count == 2 + 6 + 1 + 3
    np.testing.assert_allclose(float(nll), ref_sum, rtol=1e-5)
    assert all_sum > ref_sum + 1.0  # prompt tokens would have changed the sum


def test_held_out_nll_falls_on_memorisable_data(trained):
    summary = trained["summary"]
    records = [json.loads(l) for l in (Path(trained["config"].workdir) / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["step"] == 0 and "eval/nll" in r)
    assert start["eval/nll"] > 2.0  # a random model: near log(vocab)
    assert summary["nll"] < 0.25 * start["eval/nll"] and summary["tokens"] > 0
    assert summary["perplexity"] == pytest.approx(np.exp(summary["nll"]), rel=1e-6)
    assert any("train/tokens_per_s" in r for r in records)
    assert json.loads((Path(trained["config"].workdir) / "eval.json").read_text())["nll"] == summary["nll"]


@pytest.mark.parametrize("train_mode", ["full", "lora"])
def test_export_loads_in_transformers_with_same_logits(trained, train_mode):
    import torch
    import transformers

    config = trained["config"]
    if train_mode == "lora":  # a short extra run: the adapters must be merged into the export
        config = tiny_sft_config(trained["model_dir"], trained["data"], trained["root"] / "lora")
        config.model.train_mode, config.train.export, config.train.max_steps = "lora", True, 3
        config.train.eval_at_start = False
        train(config)
    workdir = Path(config.workdir)
    tok = transformers.AutoTokenizer.from_pretrained(workdir / "export")
    torch_lm = transformers.AutoModelForCausalLM.from_pretrained(workdir / "export", torch_dtype=torch.float32).eval()
    enc = tok(["hello one two yes good", "red"], return_tensors="pt", padding=True)
    with torch.no_grad():
        theirs = torch_lm(**enc).logits.numpy()
    ours_model, _ = checkpoint_model(config, workdir)
    ids, mask = enc["input_ids"].numpy(), enc["attention_mask"].numpy()
    ours, _ = ours_model(ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(ours)[real], theirs[real], atol=1e-4)
    base, _ = from_pretrained(str(trained["model_dir"]), "causal_lm").model(ids, mask)
    assert np.abs(np.asarray(base)[real] - theirs[real]).max() > 1e-3  # the training is in the export


def test_stop_and_resume_matches_uninterrupted_run(trained):
    config = tiny_sft_config(trained["model_dir"], trained["data"], trained["root"] / "interrupted")
    config.train.stop_after = 17  # mid-epoch (5 steps an epoch), between checkpoints
    assert train(config) == {"stopped_at": 17}
    config.train.stop_after = 0
    train(config)
    _, resumed = checkpoint_model(config, trained["root"] / "interrupted")
    _, straight = checkpoint_model(trained["config"], Path(trained["config"].workdir))
    leaves = jax.tree_util.tree_leaves(straight)
    assert leaves and any(np.abs(np.asarray(x)).max() > 0 for x in leaves)
    for a, b in zip(leaves, jax.tree_util.tree_leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.multiprocess
def test_bad_row_is_one_line_error_naming_file_row_field(trained, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "response": "yes"}) + "\n" + json.dumps({"prompt": "hi there",
                                                                                          "response": " "}) + "\n")
    out = subprocess.run([sys.executable, "-m", "jaxrlhf.train_sft", "--config=configs/sft.py",
                          f"--config.model.name={trained['model_dir']}", f"--config.data.source={bad}",
                          "--config.data.format=auto", f"--config.workdir={tmp_path / 'w'}"],
                         capture_output=True, text=True,
                         cwd=str(Path(__file__).parents[1]))
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "bad.jsonl: row 2: field 'response': empty" in last

    # With on_invalid=skip the row is dropped and counted instead.
    examples, report = parse_sft_table(load_table(str(bad)), on_invalid="skip")
    assert [e.row for e in examples] == [1] and report.invalid["empty"] == 1
    with pytest.raises(DataError, match="row 2: field 'response'"):
        parse_sft_table(load_table(str(bad)))


def test_hh_and_chat_rows_become_prompt_and_last_response(trained):
    tok = load_tokenizer(trained["model_dir"])
    hh = {"chosen": ["\n\nHuman: hi\n\nAssistant: hello\n\nHuman: why\n\nAssistant: yes good"],
          "rejected": ["\n\nHuman: hi\n\nAssistant: hello\n\nHuman: why\n\nAssistant: no"]}
    (ex,), _ = parse_sft_table(load_table(hh), tokenizer=tok)
    assert ex.prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: why\n\nAssistant:" and ex.response == " yes good"
    chat = {"messages": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": "why"}, {"role": "assistant", "content": "yes good"}]]}
    (ex,), _ = parse_sft_table(load_table(chat), tokenizer=tok)
    assert ex.prompt.endswith("<|im_start|>user\nwhy<|im_end|>\n<|im_start|>assistant\n")
    assert ex.response == "yes good<|im_end|>"
    batch = SFTBatcher(tokenize_examples([ex], tok, 64), 1, shuffle=False).batch(0, 0)
    scored = batch["ids_BxT"][0][batch["loss_mask_BxT"][0] == 1]
    assert tok.convert_ids_to_tokens(scored.tolist()) == ["yes", "good", "<|im_end|>", "</s>"]
    bad_chat = {"messages": [[{"role": "user", "content": "hi"}]]}
    with pytest.raises(DataError, match="row 1: field 'messages'"):
        parse_sft_table(load_table(bad_chat), tokenizer=tok)
