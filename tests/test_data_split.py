"""Train / held-out split by prompt group: deterministic, sized by count or fraction, no shared prompt."""

from __future__ import annotations

import numpy as np
import pytest

from jaxrlhf.data import Pair, load_pair_data, load_records, split_by_prompt


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
