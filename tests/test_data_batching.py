"""Batching: masks on both padding sides, coverage, determinism, resume, multi-process, bucketing."""

from __future__ import annotations

import numpy as np
import pytest

from jaxrlhf.data import (
    ListBatcher,
    Pair,
    PairBatcher,
    RankedList,
    Rated,
    RegressionBatcher,
    load_pair_data,
    tokenize_lists,
    tokenize_pairs,
    tokenize_rated,
)
from tests.helpers.tokenizers import WORDS

PAIR_KEYS = {"chosen_ids_BxT", "chosen_mask_BxT", "rejected_ids_BxT", "rejected_mask_BxT", "margin_B",
             "weight_B", "chosen_len_B", "rejected_len_B"}
N, MAX_LEN, MULT = 103, 48, 8


@pytest.fixture(scope="module")
def pair_data(decoder_tokenizer):
    rng = np.random.default_rng(0)
    words = np.array(WORDS[:20])

    def text(lo, hi):
        return " ".join(rng.choice(words, rng.integers(lo, hi)))

    # margin = row index, so each batch row can be traced back to its pair
    pairs = [Pair(text(1, 40), text(1, 30), text(1, 30), margin=float(i)) for i in range(N)]
    return tokenize_pairs(pairs, decoder_tokenizer, MAX_LEN)


def _row_ids(batch) -> list[int]:
    return [int(m) for m in batch["margin_B"]]  # margin i marks row i in `pair_data`


def _check_pair_batch(data, batch, side):
    assert set(batch) == PAIR_KEYS
    width = batch["chosen_ids_BxT"].shape[1]
    assert batch["rejected_ids_BxT"].shape[1] == width
    assert width % MULT == 0 or width == MAX_LEN
    for key in PAIR_KEYS:
        assert batch[key].dtype == (np.float32 if key in ("margin_B", "weight_B") else np.int32), key
    for j, i in enumerate(_row_ids(batch)):
        for enc, name in ((data.chosen, "chosen"), (data.rejected, "rejected")):
            seq, ids, mask = enc.sequence(i), batch[f"{name}_ids_BxT"][j], batch[f"{name}_mask_BxT"][j]
            n = len(seq)
            expect_mask = np.zeros(width, np.int32)
            if side == "right":
                expect_mask[:n] = 1
            else:
                expect_mask[width - n:] = 1
            np.testing.assert_array_equal(mask, expect_mask)
            np.testing.assert_array_equal(ids[mask == 1], seq)
            assert (ids[mask == 0] == data.pad_id).all()
        assert batch["chosen_len_B"][j] == data.chosen.response_len[i]
        assert batch["rejected_len_B"][j] == data.rejected.response_len[i]


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_sides_give_correct_masks(pair_data, side):
    batcher = PairBatcher(pair_data, 8, seed=3, pad_to_multiple=MULT, padding_side=side, bucket_window=4)
    for batch in batcher.epoch(0):
        _check_pair_batch(pair_data, batch, side)
    left = PairBatcher(pair_data, 8, seed=3, pad_to_multiple=MULT, padding_side="left").batch(0, 0)
    right = PairBatcher(pair_data, 8, seed=3, pad_to_multiple=MULT).batch(0, 0)
    # same rows, mirrored placement: the last real token sits at T-1 on the left, at len-1 on the right
    assert (left["chosen_ids_BxT"][:, -1] == right["chosen_ids_BxT"][
        np.arange(8), right["chosen_mask_BxT"].sum(1) - 1]).all()


def test_every_row_exactly_once_per_epoch_and_filler_rows_weigh_zero(pair_data):
    batcher = PairBatcher(pair_data, 16, seed=1, pad_to_multiple=MULT, bucket_window=2)
    assert len(batcher) == 7  # ceil(103 / 16)
    for epoch in (0, 1):
        seen, fillers = [], 0
        for batch in batcher.epoch(epoch):
            assert batch["weight_B"].shape == (16,)
            rows = _row_ids(batch)
            seen += [r for r, w in zip(rows, batch["weight_B"]) if w == 1.0]
            fillers += int((batch["weight_B"] == 0).sum())
        assert sorted(seen) == list(range(N)) and fillers == 7 * 16 - N
    dropped = PairBatcher(pair_data, 16, seed=1, drop_remainder=True)
    assert len(dropped) == 6 and all(b["weight_B"].all() for b in dropped.epoch(0))


def test_order_is_deterministic_per_seed_and_epoch(pair_data):
    def order(seed, epoch):
        return [_row_ids(b) for b in PairBatcher(pair_data, 8, seed=seed).epoch(epoch)]

    assert order(5, 0) == order(5, 0)
    assert order(5, 0) != order(5, 1) and order(5, 0) != order(6, 0)
    unshuffled = [_row_ids(b) for b in PairBatcher(pair_data, 8, shuffle=False, bucket_window=0).epoch(3)]
    assert sum(unshuffled, [])[:N] == list(range(N))


def test_resume_from_epoch_and_step_continues_identically(pair_data):
    full = list(PairBatcher(pair_data, 8, seed=2).epoch(1))
    fresh = PairBatcher(pair_data, 8, seed=2)  # a new process after a restart
    resumed = list(fresh.epoch(1, start_step=5))
    assert len(resumed) == len(full) - 5
    for a, b in zip(full[5:], resumed):
        for key in PAIR_KEYS:
            np.testing.assert_array_equal(a[key], b[key])
    stream = PairBatcher(pair_data, 8, seed=2).from_step(len(full) + 5)
    np.testing.assert_array_equal(next(stream)["chosen_ids_BxT"], full[5]["chosen_ids_BxT"])
    np.testing.assert_array_equal(fresh.batch(1, 7)["margin_B"], full[7]["margin_B"])


def test_two_processes_split_each_global_batch(pair_data):
    kw = dict(seed=4, pad_to_multiple=MULT, bucket_window=3)
    whole = PairBatcher(pair_data, 8, **kw)
    parts = [PairBatcher(pair_data, 8, process_index=p, process_count=2, **kw) for p in (0, 1)]
    assert parts[0].local_batch_size == 4 and len(parts[0]) == len(whole)
    for g, p0, p1 in zip(whole.epoch(0), parts[0].epoch(0), parts[1].epoch(0)):
        for key in PAIR_KEYS:
            np.testing.assert_array_equal(np.concatenate([p0[key], p1[key]]), g[key])
    with pytest.raises(ValueError, match="multiple of process_count"):
        PairBatcher(pair_data, 9, process_count=2)


@pytest.mark.real_model
def test_length_bucketing_on_hh_with_minilm(minilm_tokenizer, tmp_path):
    data, _, _ = load_pair_data("builtin:hh_rlhf_harmless", minilm_tokenizer, 256,
                                cache_dir=str(tmp_path / "c"))
    bucketed = PairBatcher(data, 16, seed=0, pad_to_multiple=32)
    plain = PairBatcher(data, 16, seed=0, pad_to_multiple=32, bucket_window=0)
    eff_b, eff_p = bucketed.padding_efficiency(0), plain.padding_efficiency(0)
    assert eff_b > eff_p + 0.2, (eff_b, eff_p)
    widths = {b["chosen_ids_BxT"].shape[1] for b in bucketed.epoch(0)}
    assert widths <= {32, 64, 96, 128, 160, 192, 224, 256}
    # the reported efficiency is what the batches hold
    real = total = 0
    for b in bucketed.epoch(0):
        for side in ("chosen", "rejected"):
            real += int(b[f"{side}_mask_BxT"][b["weight_B"] == 1].sum())
            total += b[f"{side}_mask_BxT"].size
    assert real / total == pytest.approx(eff_b)


def test_list_batches(decoder_tokenizer):
    lists = [RankedList("one two", ("a", "b c", "d"), (1, 0, 2)), RankedList("three", ("e f g", "a"), (0, 1)),
             RankedList("four", ("b", "c"), (1, 0))]
    data = tokenize_lists(lists, decoder_tokenizer, 16)
    batcher = ListBatcher(data, 4, shuffle=False, bucket_window=0, pad_to_multiple=4)
    batch = batcher.batch(0, 0)
    assert set(batch) == {"ids_BxKxT", "mask_BxKxT", "ranks_BxK", "valid_BxK", "weight_B", "len_BxK"}
    assert batch["ids_BxKxT"].shape == (4, 3, 8)
    np.testing.assert_array_equal(batch["valid_BxK"], [[1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(batch["ranks_BxK"][:3], [[1, 0, 2], [0, 1, 3], [1, 0, 3]])
    np.testing.assert_array_equal(batch["weight_B"], [1, 1, 1, 0])
    tokens = decoder_tokenizer.convert_ids_to_tokens(
        batch["ids_BxKxT"][1, 0][batch["mask_BxKxT"][1, 0] == 1].tolist())
    assert tokens == ["<s>", "three", "e", "f", "g", "</s>"]
    assert batch["len_BxK"][1, 0] == 4  # response tokens e f g </s>: what length normalisation divides by
    # an empty slot repeats the list's first response, so no row is all padding
    np.testing.assert_array_equal(batch["ids_BxKxT"][1, 2], batch["ids_BxKxT"][1, 0])


def test_regression_batches(decoder_tokenizer):
    rated = [Rated("one", "a", 0.5), Rated("two", "b c", -1.0), Rated("one", "d", 2.0)]
    data = tokenize_rated(rated, decoder_tokenizer, 16)
    batch = RegressionBatcher(data, 4, shuffle=False, bucket_window=0, padding_side="left").batch(0, 0)
    assert set(batch) == {"ids_BxT", "mask_BxT", "target_B", "weight_B", "len_B"}
    np.testing.assert_array_equal(batch["len_B"][:3], [2, 3, 2])  # response tokens + </s>
    np.testing.assert_array_equal(batch["target_B"][:3], np.float32([0.5, -1.0, 2.0]))
    np.testing.assert_array_equal(batch["mask_BxT"][1], [0] * 11 + [1] * 5)  # T = max_length


def test_tpu_pads_to_its_128_lanes(decoder_tokenizer, monkeypatch):
    """On TPU pad_to_multiple rounds up to 128s (capped at max_length as ever); elsewhere it is as set."""
    import jax

    from jaxrlhf.data.batching import backend_multiple

    data = tokenize_pairs([Pair(" ".join(WORDS[:5]), WORDS[6], WORDS[7], margin=float(i)) for i in range(16)],
                          decoder_tokenizer, 300)
    width = lambda: {PairBatcher(data, 8, pad_to_multiple=MULT).batch(0, i)["chosen_ids_BxT"].shape[1]  # noqa: E731
                     for i in range(2)}
    assert backend_multiple(32) == 32 and backend_multiple(0) == 1 and width() == {MULT}
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert [backend_multiple(m) for m in (1, 32, 128, 130)] == [128, 128, 128, 256]
    assert width() == {128}
