"""Data that leaves nothing sensible to train: one line naming the cause in the user's terms (data.usable),
through the data pipeline, the RM and SFT `prepare` (config key names) and PPO's prompt set."""

from __future__ import annotations

import pytest

from jaxrlhf.data import load_list_data, load_pair_data, load_rated_data, load_table
from jaxrlhf.data.errors import DataReport
from jaxrlhf.data.usable import losses, require_records
from jaxrlhf.rm.data import NAMES
from tests.helpers.data import write_jsonl


def _one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def _pairs(n, prompt="p{i}", **extra):
    return [{"prompt": prompt.format(i=i), "chosen": "good", "rejected": "bad", **extra} for i in range(n)]


def test_every_ranked_list_tied(decoder_tokenizer):
    rows = [{"prompt": f"p{i}", "responses": ["a", "b", "c"], "ranks": [1, 1, 1]} for i in range(5)]
    for load in (load_pair_data, load_list_data):
        msg = _one_line_error(load, rows, decoder_tokenizer, 32, held_out=2, name="ranked.jsonl", names=NAMES)
        assert msg == ("ranked.jsonl: no usable ranked lists left: 5 rows read; 5 ranked lists with every response "
                       "tied: a ranked list needs at least two different ranks (or scores)")


def test_every_pair_below_min_agreement(decoder_tokenizer):
    rows = _pairs(6, agreement=0.5)
    msg = _one_line_error(load_pair_data, rows, decoder_tokenizer, 32, held_out=2, min_agreement=0.8,
                          name="agree.jsonl", names=NAMES)
    assert msg == ("agree.jsonl: no usable comparisons left: 6 rows read; 6 comparisons below "
                   "data.min_agreement=0.8: lower data.min_agreement")


def test_every_row_skipped_as_invalid_counts_each_reason(decoder_tokenizer):
    rows = [{"prompt": "p", "chosen": "same", "rejected": "same"}] * 3 + [{"prompt": "p", "chosen": " ",
                                                                         "rejected": "b"}]
    msg = _one_line_error(load_pair_data, rows, decoder_tokenizer, 32, on_invalid="skip", name="bad.jsonl",
                          names=NAMES)
    assert msg == ("bad.jsonl: no usable comparisons left: 4 rows read; 4 invalid rows skipped "
                   "(data.on_invalid=skip: 3 identical, 1 empty): set data.on_invalid=error to see the first bad row")
    # Without a caller's names the library's own argument names and values appear.
    msg = _one_line_error(load_pair_data, rows, decoder_tokenizer, 32, on_invalid="skip", name="bad.jsonl")
    assert "(on_invalid=skip: 3 identical, 1 empty): set on_invalid=raise" in msg


def test_ratings_that_make_no_pairs(decoder_tokenizer):
    tied = [{"prompt": f"p{i}", "response": r, "reward": 1.0} for i in range(4) for r in ("a", "b")]
    msg = _one_line_error(load_pair_data, tied, decoder_tokenizer, 32, name="tied.csv", names=NAMES)
    assert msg == ("tied.csv: the 8 usable rated responses make no pairs: every two responses to the same prompt "
                   "have the same rating (or the same text); or fit the ratings directly with "
                   "data.ratings_mode=regression")
    single = [{"prompt": f"p{i}", "response": "a", "reward": float(i)} for i in range(5)]
    msg = _one_line_error(load_pair_data, single, decoder_tokenizer, 32, held_out=2, name="one.csv", names=NAMES)
    assert msg.startswith("one.csv: the 3 training rated responses make no pairs: each of their 3 prompts has a "
                          "single rated response, and a pair needs two responses to one prompt with different ratings")
    # Training pairs, but the held-out prompt has one rated response only: no held-out pairs.
    mixed = [{"prompt": "p0", "response": r, "reward": v} for r, v in (("a", 1), ("b", 2))] + [
        {"prompt": "p1", "response": "c", "reward": 3.0}]
    msg = _one_line_error(load_pair_data, mixed, decoder_tokenizer, 32, held_out=1, name="m.csv", names=NAMES)
    assert msg.startswith("m.csv: the 1 held-out rated responses make no pairs: each of their 1 prompts has a single")
    assert "set data.eval_size larger, or 0" in msg
    assert load_rated_data(single, decoder_tokenizer, 32)[0].target.tolist() == [0, 1, 2, 3, 4]  # regression: fine


def test_eval_size_that_holds_out_every_usable_record(decoder_tokenizer):
    rows = _pairs(6) + _pairs(4, prompt="q{i}", agreement=0.1)
    for i in range(6):
        rows[i]["agreement"] = 0.9
    msg = _one_line_error(load_pair_data, rows, decoder_tokenizer, 32, held_out=6, min_agreement=0.5,
                          name="few.jsonl", names=NAMES)
    assert msg == ("few.jsonl: data.eval_size=6 would hold out all 6 usable comparisons, leaving none to train on "
                   "(10 rows read; 4 comparisons below data.min_agreement=0.5): set data.eval_size below 6 "
                   "(0: no held-out set)")
    train, held, _ = load_pair_data(rows, decoder_tokenizer, 32, held_out=5, min_agreement=0.5, names=NAMES)
    assert (len(train), len(held)) == (1, 5)


def test_rm_prepare_names_the_config_keys(tmp_path, decoder_tokenizer):
    from jaxrlhf.configs.base import rm_defaults
    from jaxrlhf.rm.data import prepare

    config = rm_defaults()
    config.data.source = write_jsonl(tmp_path / "few.jsonl", _pairs(6))
    config.data.eval_size = 8
    msg = _one_line_error(prepare, config, decoder_tokenizer, is_decoder=True)
    assert msg == (f"{config.data.source}: data.eval_size=8 would hold out all 6 usable comparisons, leaving none "
                   f"to train on (6 rows read): set data.eval_size below 6 (0: no held-out set)")
    config.data.eval_size, config.data.max_length = 2, 4  # "<s> <last 2 response tokens> </s>", no prompt
    config.data.source = write_jsonl(tmp_path / "long.jsonl", [
        {"prompt": f"one two three {w}", "chosen": "good red green", "rejected": "bad red green"} for w in "abcdef"])
    msg = _one_line_error(prepare, config, decoder_tokenizer, is_decoder=True)
    assert msg == (f"{config.data.source}: data.max_length=4 cuts 8 of 8 responses (100%) to their last 3 tokens, "
                   f"with none of the prompt left; the median prompt + response is 9 tokens: set data.max_length to "
                   f"at least 9")
    config.data.limit = -1
    assert _one_line_error(prepare, config, decoder_tokenizer, is_decoder=True) == \
        "data.limit=-1 must be >= 0 (0: every row)"
    with pytest.raises(ValueError, match="must be a count >= 0"):
        load_table(_pairs(2), max_rows=-1)


def _sft_config(source: str):
    from jaxrlhf.configs.base import sft_defaults

    config = sft_defaults()
    config.data.source, config.data.format, config.data.eval_size = source, "auto", 2
    return config


def test_sft_prepare_nothing_to_imitate_eval_size_and_max_length(tmp_path, decoder_tokenizer):
    from jaxrlhf.sft.data import prepare

    empty = [{"chosen": f"\n\nHuman: hi {i}\n\nAssistant:"} for i in range(3)]
    config = _sft_config(write_jsonl(tmp_path / "empty.jsonl", empty))
    assert _one_line_error(prepare, config, decoder_tokenizer) == (
        f"{config.data.source}: no usable examples left: 3 rows read; 3 rows with an empty response: every "
        f"response is empty, there is nothing to imitate")
    rows = [{"prompt": f"one two {w}", "response": "red green blue yes no"} for w in ("a", "b", "c")]
    config = _sft_config(write_jsonl(tmp_path / "sft.jsonl", rows))
    config.data.eval_size = 3
    assert _one_line_error(prepare, config, decoder_tokenizer) == (
        f"{config.data.source}: data.eval_size=3 would hold out all 3 usable examples, leaving none to train on "
        f"(3 rows read): set data.eval_size below 3 (0: no held-out set)")
    config.data.eval_size, config.data.max_length = 1, 5  # budget 3 of 5 response tokens; the whole row is 10
    assert _one_line_error(prepare, config, decoder_tokenizer) == (
        f"{config.data.source}: data.max_length=5 cuts 2 of 2 responses (100%) to their last 4 tokens, with none "
        f"of the prompt left; the median prompt + response is 10 tokens: set data.max_length to at least 10")
    config.data.max_length = 10
    assert len(prepare(config, decoder_tokenizer).train) == 2


def _prompt_set(rows, tok, **kw):
    from jaxrlhf.rl.prompts import build_prompt_set

    return build_prompt_set(load_table(rows, name="prompts.jsonl"), tok, **kw)


def test_ppo_prompts_all_too_long_or_too_few(decoder_tokenizer):
    # ChatML renders n words as n + 6 tokens: <s> <|im_start|> user ... <|im_end|> <|im_start|> assistant
    rows = [{"prompt": " ".join(["one"] * n)} for n in (4, 9, 5, 8, 6, 7)]  # 10 to 15 tokens
    msg = _one_line_error(_prompt_set, rows, decoder_tokenizer, batch_size=4, max_prompt_length=9)
    assert msg == ("prompts.jsonl: 0 usable prompts make no batch of ppo.rollout_batch_size=4: 6 rows read; 6 longer "
                   "than data.max_prompt_length=9 tokens; set data.max_prompt_length to at least 13 for one batch "
                   "(the median prompt is 13 tokens)")
    assert len(_prompt_set(rows, decoder_tokenizer, batch_size=4, max_prompt_length=13).prompts) == 4
    rows = [{"prompt": "one two"}, {"prompt": "one two"}, {"prompt": "red"}]
    msg = _one_line_error(_prompt_set, rows, decoder_tokenizer, batch_size=4, max_prompt_length=32)
    assert msg == ("prompts.jsonl: 2 usable prompts make no batch of ppo.rollout_batch_size=4: 3 rows read; "
                   "1 duplicate prompts; set ppo.rollout_batch_size to at most 2, or give more prompts")
    rows = [{"prompt": " "}] * 3
    msg = _one_line_error(_prompt_set, rows, decoder_tokenizer, batch_size=2, max_prompt_length=32,
                          on_invalid="skip")
    assert msg.endswith("3 invalid rows skipped (data.on_invalid=skip: 3 empty); set data.on_invalid=error to see "
                        "the first bad row")


def test_ppo_eval_prompts_leaving_less_than_one_batch(decoder_tokenizer):
    ps = _prompt_set([{"prompt": f"one {w}"} for w in "abcdefghij"], decoder_tokenizer, batch_size=4,
                     max_prompt_length=32)
    train, held = ps.hold_out(6)  # rounded down to one batch of 4, 6 left
    assert (len(train.prompts), len(held.prompts)) == (6, 4)
    assert ps.hold_out(3) == (ps, None)  # less than a batch: no evaluation set
    msg = _one_line_error(ps.hold_out, 8)
    assert msg == ("prompts.jsonl: data.eval_prompts=8 holds out 8 of the 10 usable prompts (whole batches of "
                   "ppo.rollout_batch_size=4), leaving 2, less than one rollout batch: set data.eval_prompts to at "
                   "most 4 (or 0)")
    msg = _one_line_error(_prompt_set([{"prompt": f"one {w}"} for w in "abcde"], decoder_tokenizer, batch_size=4,
                                      max_prompt_length=32).hold_out, 4)
    assert msg.endswith("leaving 1, less than one rollout batch: set data.eval_prompts=0, or give more prompts")


def test_losses_lists_each_step_once():
    report = DataReport(source="s", rows=9)
    report.invalid.update({"empty": 1, "identical": 2})
    report.filtered.update({"low_agreement": 3, "tie": 0, "duplicate": 0})
    assert losses(report, "comparisons", {"min_agreement": "data.min_agreement"}, {"min_agreement": 0.5}) == (
        "9 rows read; 3 invalid rows skipped (on_invalid=skip: 2 identical, 1 empty); 3 comparisons below "
        "data.min_agreement=0.5")
    with pytest.raises(ValueError, match=r"^s: no rows to read \(is data.limit or the split empty\?\)$"):
        require_records([], DataReport(source="s"), names=NAMES)
