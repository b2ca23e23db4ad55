"""PPO pieces against independent references: reward shaping by hand, log-prob alignment vs PyTorch,
sampler log-probs vs recomputed ones, prompt parsing and batching."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.ops import whitening
from jaxrlhf.rl.rewards import RewardShaping, process_scores, token_rewards


def test_token_rewards_by_hand():
    # Two responses: 3 real tokens, and 1 real token then padding.
    logp = np.array([[-1.0, -2.0, -0.5, 0.0], [-0.3, 9.0, 9.0, 9.0]], np.float32)
    ref = np.array([[-1.5, -1.0, -0.5, 0.0], [-0.1, 0.0, 0.0, 0.0]], np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.int32)
    rewards, kl = token_rewards(np.array([2.0, -1.0]), logp, ref, mask, kl_coef=0.1, estimator="k1")
    # k1 = logp - ref: [0.5, -1, 0], [-0.2]; reward = -0.1 * k1, score on the last real token.
    expected = np.array([[-0.05, 0.1, 2.0, 0.0], [0.02 - 1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(rewards, expected, atol=1e-6)
    np.testing.assert_allclose(kl, [[0.5, -1.0, 0.0, 0.0], [-0.2, 0, 0, 0]], atol=1e-6)
    assert rewards.dtype == jnp.float32


def test_token_rewards_k3_is_nonnegative_and_matches_formula():
    rng = np.random.default_rng(0)
    logp, ref = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    mask = np.ones((3, 5), np.int32)
    _, kl = token_rewards(np.zeros(3), logp, ref, mask, 0.1, "k3")
    x = ref - logp
    np.testing.assert_allclose(kl, np.exp(x) - 1 - x, rtol=1e-5, atol=1e-6)


def test_process_scores_penalty_running_normalisation_and_clip():
    scores = np.array([1.0, 3.0, -2.0, 10.0], np.float32)
    ended = np.array([1, 0, 1, 1])
    shaping = RewardShaping(normalise=True, clip=1.5, scale=2.0, missing_eos_penalty=0.5)
    out, moments = process_scores(scores, ended, whitening.RunningMoments.init(), shaping)
    penalised = np.array([1.0, 2.5, -2.0, 10.0])
    mean, var = penalised.mean(), penalised.var()
    expected = 2.0 * np.clip((penalised - mean) / np.sqrt(var + 1e-8), -1.5, 1.5)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    np.testing.assert_allclose([moments.mean, moments.var, moments.count], [mean, var, 4], rtol=1e-5)
    # A second batch merges into the running moments: the statistics of all 8 scores.
    out2, moments2 = process_scores(scores, np.ones(4), moments, shaping)
    both = np.concatenate([penalised, scores])
    np.testing.assert_allclose([moments2.mean, moments2.var], [both.mean(), both.var()], rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from jaxrlhf.models.hub import from_pretrained, load_tokenizer
    from tests.helpers.models import make_tiny_llama_dir

    path = make_tiny_llama_dir(tmp_path_factory.mktemp("policy") / "p", seed=3)
    return path, from_pretrained(str(path), "causal_lm").model, load_tokenizer(path)


def test_response_logprobs_match_pytorch_on_left_padded_prompts(tiny_policy):
    import torch
    import transformers

    from jaxrlhf.rl.experience import response_logprobs

    path, model, _ = tiny_policy
    rng = np.random.default_rng(0)
    P, N, temperature = 6, 5, 0.7
    prompt = rng.integers(6, 30, size=(2, P))
    prompt_mask = np.ones((2, P), np.int32)
    prompt_mask[1, :3] = 0  # left padding
    response = rng.integers(6, 30, size=(2, N))
    response_mask = np.ones((2, N), np.int32)
    response_mask[0, 3:] = 0  # ended early: right padding
    ids = np.concatenate([prompt, response], 1).astype(np.int32)
    mask = np.concatenate([prompt_mask, response_mask], 1).astype(np.int32)
    ours = np.asarray(response_logprobs(model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(response),
                                        temperature))
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    for b in range(2):  # the reference sees each row without any padding
        real = ids[b][mask[b] > 0]
        n_prompt = int(prompt_mask[b].sum())
        with torch.no_grad():
            logits = torch_model(torch.tensor(real[None])).logits[0].double().numpy() / temperature
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        n_resp = int(response_mask[b].sum())
        want = [logp[n_prompt - 1 + t, response[b, t]] for t in range(n_resp)]
        np.testing.assert_allclose(ours[b, :n_resp], want, atol=1e-4)


def test_sampler_logprobs_equal_recomputed_ones(tiny_policy):
    """The KV-cache sampler and the full-sequence recomputation agree on the sampled tokens' log-probs."""
    from flax import nnx

    from jaxrlhf.rl.experience import response_logprobs
    from jaxrlhf.rl.rollout import make_sample_fn
    from jaxrlhf.rl.sampling import SamplingConfig, left_pad

    _, model, tok = tiny_policy
    cfg = SamplingConfig(max_new_tokens=6, temperature=0.8, eos_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id)
    graphdef, state = nnx.split(model)
    sample = make_sample_fn(graphdef, cfg)
    ids, mask = left_pad([[7, 8, 9], [10, 11, 12, 13, 14]], tok.pad_token_id)
    out = sample((state,), jnp.asarray(ids), jnp.asarray(mask), jax.random.key(1))
    recomputed = response_logprobs(model, out["ids_BxT"], out["mask_BxT"], out["response_ids_BxN"], 0.8)
    m = np.asarray(out["response_mask_BxN"])
    np.testing.assert_allclose(np.asarray(recomputed) * m, np.asarray(out["sample_logp_BxN"]) * m, atol=1e-4)
    assert m.sum() > 4


def test_prompts_from_hh_dialogues_and_batches(tiny_policy):
    from jaxrlhf.data.prompts import hh_messages
    from jaxrlhf.data.sources import load_table
    from jaxrlhf.rl.prompts import build_prompt_set, parse_prompts

    assert hh_messages("\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: why\n\nAssistant:") == [
        ("user", "hi there"), ("assistant", "hello"), ("user", "why")]
    table = load_table("builtin:hh_rlhf_harmless", max_rows=64)
    prompts, report = parse_prompts(table)
    assert len(prompts) >= 50 and all(p.text.endswith("\n\nAssistant:") for p in prompts)
    assert all(p.messages[-1][0] == "user" for p in prompts)
    first = table.columns["chosen"][0]
    assert first.startswith(prompts[0].text)

    _, _, tok = tiny_policy
    rows = [{"prompt": "one two"}, {"prompt": "red green blue"}, {"prompt": "one " * 40}, {"prompt": "hello"}]
    ps = build_prompt_set(load_table(rows), tok, batch_size=2, max_prompt_length=30, pad_to_multiple=8)
    assert ps.report.filtered["too_long"] == 1 and len(ps.prompts) == 3
    b = ps.batch(0)
    assert b["ids_BxP"].shape[1] % 8 == 0
    assert (b["mask_BxP"][:, -1] == 1).all()  # left-padded: every prompt ends at the right edge
    again = ps.batch(0)
    np.testing.assert_array_equal(b["ids_BxP"], again["ids_BxP"])
    with pytest.raises(ValueError, match="usable prompts"):
        build_prompt_set(load_table(rows[:1]), tok, batch_size=2, max_prompt_length=30)


def test_bad_prompt_row_names_row_and_field(tmp_path):
    from jaxrlhf.data.errors import DataError
    from jaxrlhf.data.sources import load_table
    from jaxrlhf.rl.prompts import parse_prompts

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"prompt": "  "}) + "\n")
    with pytest.raises(DataError, match=r"row 2: field 'prompt': empty"):
        parse_prompts(load_table(str(path)))
    prompts, report = parse_prompts(load_table(str(path)), on_invalid="skip")
    assert len(prompts) == 1 and report.invalid["empty"] == 1
