"""Train / held-out split by prompt group: deterministic, sized by count or fraction, no shared prompt."""

from __future__ import annotations

import numpy as np
import pytest

from jaxrlhf.data import Pair, load_pair_data, load_records, split_by_prompt
from jaxrlhf.data.errors import DataReport
from jaxrlhf.data.usable import split_for_training


@pytest.fixture(scope="module")
def grouped():
    rng = np.random.default_rng(0)
    return [Pair(f"prompt {g}", f"good {g}.{k}", f"bad {g}.{k}")
            for g in range(40) for k in range(int(rng.integers(1, 5)))]


@pytest.mark.parametrize("held_out", [20, 0.25])
def test_split_keeps_prompts_apart_and_covers_everything(grouped, held_out):
    train, held = split_by_prompt(grouped, held_out, seed=7)
    target = held_out if isinstance(held_out, int) else round(0.25 * len(grouped))
    assert len(held) == target  # singletons and pairs of rows make the size exact here
    assert not {r.prompt for r in train} & {r.prompt for r in held}
    assert sorted(train + held, key=grouped.index) == grouped
    assert train == [r for r in grouped if r in train]  # input order kept
    assert split_by_prompt(grouped, held_out, seed=7) == (train, held)
    assert split_by_prompt(grouped, held_out, seed=8)[1] != held


def test_split_never_exceeds_the_request_with_big_groups():
    records = [Pair("a", f"x{i}", f"y{i}") for i in range(5)] + [Pair("b", "x", "y")]
    train, held = split_by_prompt(records, 3, seed=0)
    assert [r.prompt for r in held] == ["b"] and len(train) == 5
    with pytest.raises(ValueError):
        split_by_prompt(records, 1.5)


def test_hh_held_out_by_count(tmp_path):
    records = load_records("builtin:hh_rlhf_harmless", cache_dir=str(tmp_path / "c")).records
    train, held = split_by_prompt(records, 256, seed=0)
    assert len(held) == 256 and len(train) == 2048 - 256
    assert not {r.prompt for r in train} & {r.prompt for r in held}


def test_ratings_split_before_pairing(tmp_path, decoder_tokenizer):
    path = tmp_path / "ratings.csv"
    prompts = "one two three four five six seven eight nine ten".split()
    lines = ["prompt,response,reward"] + [f"{p},{r},{v}" for p in prompts
                                         for r, v in (("a", 1), ("b", 2), ("c", 2))]
    path.write_text("\n".join(lines) + "\n")
    train, held, report = load_pair_data(str(path), decoder_tokenizer, 16, held_out=6, seed=1,
                                         cache_dir=str(tmp_path / "c"))
    # each prompt gives 2 pairs (b>a, c>a) and one tie (b=c)
    assert (len(train), len(held)) == (16, 4)
    assert report.filtered["tie"] == 10 and report.kept == 20

    def prompt_words(data):  # sequences are "<s> PROMPT RESPONSE </s>"
        return {decoder_tokenizer.convert_ids_to_tokens(int(data.chosen.sequence(i)[1]))
                for i in range(len(data))}

    assert len(prompt_words(held)) == 2 and len(prompt_words(train)) == 8
    assert not prompt_words(train) & prompt_words(held)


def test_held_out_sizes_that_leave_nothing_to_train_on():
    records = [Pair(f"p{i}", "a", "b") for i in range(6)]
    with pytest.raises(ValueError, match=r"^held_out=6 would hold out all 6 records, leaving none to train on"):
        split_by_prompt(records, 6)
    with pytest.raises(ValueError, match=r"^held_out=-1 must be >= 0$"):
        split_by_prompt(records, -1)
    report = DataReport(source="few.jsonl", rows=6)
    names = {"held_out": "data.eval_size"}
    with pytest.raises(ValueError) as info:
        split_for_training(records, 0.95, report=report, names=names)  # rounds to all 6
    assert str(info.value) == ("few.jsonl: data.eval_size=0.95 would hold out all 6 usable comparisons, leaving none "
                               "to train on (6 rows read): use a smaller fraction, or a count below 6")
    with pytest.raises(ValueError, match=r"^data.eval_size=1.0: a held-out fraction must be in \[0, 1\)$"):
        split_for_training(records, 1.0, report=report, names=names)
    assert split_for_training(records, 0, report=report) == (records, [])
    train, held = split_for_training(records, 5, seed=3, report=report)
    assert (len(train), len(held)) == (1, 5) and (train, held) == split_by_prompt(records, 5, seed=3)


def test_held_out_size_that_holds_out_nothing_names_the_prompt_groups():
    report = DataReport(source="groups.jsonl", rows=9)
    one_prompt = [Pair("same", f"a{i}", f"b{i}") for i in range(5)]
    with pytest.raises(ValueError) as info:
        split_for_training(one_prompt, 2, report=report, names={"held_out": "data.eval_size",
                                                                 "eval_source": "data.eval_source"})
    assert str(info.value) == ("groups.jsonl: data.eval_size=2 holds out nothing: all 5 usable comparisons share one "
                               "prompt, and a prompt's comparisons are never split between training and held-out; set "
                               "data.eval_size=0, and evaluate on another file with data.eval_source")
    groups = [Pair(f"p{g}", f"a{i}", f"b{i}") for g in range(3) for i in range(3)]  # 3 prompts of 3 records
    with pytest.raises(ValueError, match=r"^groups.jsonl: held_out=2 holds out nothing: comparisons sharing a prompt "
                                         r"stay on one side and the smallest prompt group has 3; set held_out to at "
                                         r"least 3 \(below 9\)$"):
        split_for_training(groups, 2, report=report)
    assert [len(side) for side in split_for_training(groups, 3, report=report)] == [6, 3]
