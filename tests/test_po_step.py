"""Preference-optimisation steps and data on a tiny Llama: response log-probs of chosen and rejected against
PyTorch (both padding sides), the DPO loss against the paper's formula on PyTorch's log-probs, the three
references agreeing, the reference cache placing each value at its row, KTO's mismatched sequences."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.data.records import Pair, RankedList
from jaxrlhf.data.tokenize import special_tokens, tokenize_lists, tokenize_pairs, tokenize_rated
from jaxrlhf.infra.sharding import make_mesh
from jaxrlhf.models.hub import from_pretrained, load_tokenizer
from jaxrlhf.models.layers import LoRAConfig
from jaxrlhf.po import reference as po_reference
from jaxrlhf.po.data import KTOBatcher, PrefListBatcher, PrefPairBatcher, kto_data, mismatched
from jaxrlhf.po.step import LossSpec, group_logprobs, make_eval_step, make_train_step, reference_logprobs
from jaxrlhf.training.optim import make_optimizer
from jaxrlhf.training.run_setup import init_train_state
from jaxrlhf.training.trainable import split_trainable
from tests.helpers.models import make_tiny_llama_dir, torch_response_logp

PAIRS = [Pair("hello there what", "yes good one two", "no"), Pair("one two", "red", "bad bad green blue world"),
         Pair("why", "a b c d e f g", "hi"), Pair("seven eight nine ten", "good", "bad")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two tiny Llamas (policy, reference) with weights large enough for log-probs to differ by token."""
    root = tmp_path_factory.mktemp("po")
    dirs = [make_tiny_llama_dir(root / f"m{s}", seed=s, initializer_range=0.3) for s in (0, 1)]
    return {"dirs": dirs, "tokenizer": load_tokenizer(dirs[0])}


def _spec(objective="pairs", **kw) -> LossSpec:
    return LossSpec(objective, kw.pop("type", "sigmoid"), kw.pop("beta", 0.5), chunk_size=5, **kw)


@pytest.mark.parametrize("side", ["right", "left"])
def test_chosen_and_rejected_logprobs_match_torch_with_either_padding(tiny, side):
    tok = tiny["tokenizer"]
    data = tokenize_pairs(PAIRS, tok, max_length=16)
    batch = PrefPairBatcher(data, 4, shuffle=False, bucket_window=0, pad_to_multiple=8, padding_side=side).batch(0, 0)
    model = from_pretrained(tiny["dirs"][0], "causal_lm").model
    logps, tokens = group_logprobs(model, {k: jnp.asarray(v) for k, v in batch.items()}, "pairs", _spec())
    for side_name, enc in (("chosen", data.chosen), ("rejected", data.rejected)):
        want = [torch_response_logp(tiny["dirs"][0], enc.sequence(i), int(enc.response_len[i])) for i in range(4)]
        np.testing.assert_array_equal(np.asarray(tokens[side_name]), enc.response_len)  # the EOS is scored too
        np.testing.assert_allclose(np.asarray(logps[side_name]), want, atol=2e-4, rtol=0)
    assert np.ptp(np.asarray(logps["rejected"])) > 1.0  # rows differ: the check can see a wrong row


def test_dpo_step_loss_is_the_papers_formula_on_torch_logprobs(tiny):
    """The train step's loss with a separate reference model: -mean log sigmoid(beta * ((pc - rc) - (pr - rr)))
    written out on PyTorch's float64 log-probs of both models; after one step the loss is lower."""
    tok, (policy_dir, ref_dir) = tiny["tokenizer"], tiny["dirs"]
    data = tokenize_pairs(PAIRS, tok, max_length=16)
    batch = PrefPairBatcher(data, 4, shuffle=False, pad_to_multiple=8).batch(0, 0)
    beta = 0.5

    def seq_logps(model_dir, enc):
        return np.array([torch_response_logp(model_dir, enc.sequence(i), int(enc.response_len[i])) for i in range(4)])

    pc, pr = seq_logps(policy_dir, data.chosen), seq_logps(policy_dir, data.rejected)
    rc, rr = seq_logps(ref_dir, data.chosen), seq_logps(ref_dir, data.rejected)
    h = beta * ((pc - rc) - (pr - rr))
    want = float(np.mean(np.log1p(np.exp(-h))))
    assert abs(want - math.log(2)) > 0.05  # the models differ, so the loss is not log 2

    policy = from_pretrained(policy_dir, "causal_lm").model
    ref_def, ref_state = nnx.split(from_pretrained(ref_dir, "causal_lm").model)
    graphdef, trainable, frozen = split_trainable(policy, "full")
    optimizer, schedule = make_optimizer(ml_collections.ConfigDict(dict(
        learning_rate=1e-2, schedule="constant", warmup_steps=0, warmup_ratio=0.0, weight_decay=0.0,
        max_grad_norm=1.0, b1=0.9, b2=0.999, eps=1e-8)), 10)
    spec = _spec(beta=beta)
    step = jax.jit(make_train_step(graphdef, ref_def, spec, "model", optimizer, schedule))
    state = init_train_state(trainable, optimizer)
    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    state, m = step(state, (frozen, ref_state), jb, jax.random.key(0))
    assert float(m["loss_sum"] / m["denom"]) == pytest.approx(want, abs=1e-4)
    assert float(m["correct_sum"]) == float(np.sum(h > 0))
    loss_after, _, _ = jax.jit(make_eval_step(graphdef, ref_def, spec, "model"))(state["params"], (frozen, ref_state),
                                                                                 jb)
    assert float(loss_after) / 4 < want


def test_the_references_agree_adapters_off_cached_and_a_frozen_copy(tiny):
    """The LoRA policy with nonzero adapters, adapters off, gives the base model's log-probs (a separate
    copy without LoRA); the cached path returns what the batch carries."""
    tok, model_dir = tiny["tokenizer"], tiny["dirs"][0]
    data = tokenize_pairs(PAIRS, tok, max_length=16)
    batch = {k: jnp.asarray(v) for k, v in PrefPairBatcher(data, 4, shuffle=False).batch(0, 0).items()}
    lora = from_pretrained(model_dir, "causal_lm", lora=LoRAConfig(rank=2, alpha=4.0, targets="q_proj|v_proj")).model
    for path, v in nnx.to_flat_state(nnx.state(lora, nnx.Param)):
        if "lora_b" in path:
            v.set_value(jnp.full(v.get_value().shape, 0.3))
    base = from_pretrained(model_dir, "causal_lm").model
    spec = _spec()
    with_adapters, _ = group_logprobs(lora, batch, "pairs", spec)
    off = jax.jit(lambda b: reference_logprobs("adapters_off", lora, None, b, "pairs", spec))(batch)
    copy = reference_logprobs("model", lora, base, batch, "pairs", spec)
    for side in ("chosen", "rejected"):
        np.testing.assert_allclose(np.asarray(off[side]), np.asarray(copy[side]), atol=1e-5)
        assert np.max(np.abs(np.asarray(with_adapters[side]) - np.asarray(off[side]))) > 1e-2
    cached = reference_logprobs("cached", lora, None, dict(batch, ref_chosen_B=jnp.arange(4.0),
                                                           ref_rejected_B=-jnp.arange(4.0)), "pairs", spec)
    np.testing.assert_array_equal(np.asarray(cached["rejected"]), -np.arange(4.0))
    assert reference_logprobs("none", lora, None, batch, "pairs", spec) is None


def _id_sum(ids, mask):
    return jnp.sum(ids * mask, axis=-1).astype(jnp.float32)


def test_reference_cache_puts_each_value_at_its_row_for_pairs_lists_and_kto(tiny):
    """A stand-in reference (the sum of each sequence's ids) cached over shuffled, bucketed batches with a
    filler row: every row (list slot) gets its own sequence's value, and batches then carry them."""
    tok = tiny["tokenizer"]
    mesh = make_mesh(-1, 1, 1)
    pairs = tokenize_pairs(PAIRS * 3 + PAIRS[:1], tok, max_length=16)  # 13 rows: a filler in the last batch
    pb = PrefPairBatcher(pairs, 4, shuffle=True, seed=3, bucket_window=2, pad_to_multiple=4)
    got = po_reference.compute(pb, lambda b: {"chosen": _id_sum(b["chosen_ids_BxT"], b["chosen_mask_BxT"]),
                                              "rejected": _id_sum(b["rejected_ids_BxT"], b["rejected_mask_BxT"])},
                               mesh, "test")
    for side in ("chosen", "rejected"):
        enc = getattr(pairs, side)
        np.testing.assert_array_equal(got[side], [enc.sequence(i).sum() for i in range(len(enc))])
    pb.reference = got
    b = pb.batch(1, 2)
    np.testing.assert_array_equal(b["ref_chosen_B"], np.sum(b["chosen_ids_BxT"] * b["chosen_mask_BxT"], -1))

    lists = tokenize_lists([RankedList("hi there", ("yes", "no bad", "good one"), (1, 0, 2)),
                            RankedList("one", ("red", "blue"), (0, 1))] * 3, tok, max_length=16)
    lb = PrefListBatcher(lists, 4, shuffle=True, seed=1, pad_to_multiple=4)
    got = po_reference.compute(lb, lambda b: {"seqs": _id_sum(b["ids_BxKxT"], b["mask_BxKxT"])}, mesh, "test")
    np.testing.assert_array_equal(got["seqs"], [lists.seqs.sequence(i).sum() for i in range(len(lists.seqs))])

    from jaxrlhf.data.records import Rated

    rated = tokenize_rated([Rated(p.prompt, p.chosen, float(i % 2)) for i, p in enumerate(PAIRS * 2)], tok, 16)
    kd = kto_data(rated, 0.5, prefix_len=1, seed=0, where="training")
    kb = KTOBatcher(kd, 4, shuffle=False, pad_to_multiple=4)
    got = po_reference.compute(kb, lambda b: {"seqs": _id_sum(b["ids_BxT"], b["mask_BxT"]),
                                              "kl": _id_sum(b["kl_ids_BxT"], b["kl_mask_BxT"])}, mesh, "test")
    np.testing.assert_array_equal(got["kl"], [kd.kl.sequence(i).sum() for i in range(len(kd))])


def test_kto_mismatched_sequences_pair_each_prompt_with_another_rows_response(tiny):
    tok = tiny["tokenizer"]
    from jaxrlhf.data.records import Rated

    rows = [Rated(f"{w} two three", r, 1.0) for w, r in zip(("one", "red", "hi", "why", "a"),
                                                            ("yes", "no bad", "good one two", "c d", "e f g"))]
    seqs = tokenize_rated(rows, tok, max_length=16).seqs
    prefix = len(special_tokens(tok, True).prefix)
    kl = mismatched(seqs, prefix, max_length=16, seed=0)
    partners = []
    for i in range(len(rows)):
        own, got = seqs.sequence(i), kl.sequence(i)
        np.testing.assert_array_equal(got[:seqs.prompt_len[i]], own[:seqs.prompt_len[i]])  # BOS + this prompt
        tail = got[kl.prompt_len[i]:]
        j = next(j for j in range(len(rows)) if np.array_equal(seqs.sequence(j)[seqs.prompt_len[j]:], tail))
        assert kl.response_len[i] == seqs.response_len[j]
        partners.append(j)
    assert sorted(partners) == list(range(len(rows))) and all(j != i for i, j in enumerate(partners))
    short = mismatched(seqs, prefix, max_length=6, seed=0)  # too long: the prompt loses its start, not the response
    for i in range(len(rows)):
        s = short.sequence(i)
        assert len(s) <= 6 and s[0] == tok.bos_token_id and s[-1] == tok.eos_token_id
        assert short.response_len[i] == kl.response_len[i]


def test_kto_needs_both_classes(tiny):
    from jaxrlhf.data.records import Rated

    rated = tokenize_rated([Rated("one", "yes", 3.0), Rated("two", "no", 4.0)], tiny["tokenizer"], 16)
    with pytest.raises(ValueError, match=r"every training rating is above loss.kto_threshold=0.5 \(ratings 3 to 4\)"):
        kto_data(rated, 0.5, prefix_len=1, seed=0, where="training")
