"""Row formats: HH prompt split on real rows, each format parsing, pairing rules, agreement filter."""

from __future__ import annotations

import os

import pytest

from jaxrlhf.data import (
    DataError,
    Pair,
    RankedList,
    Rated,
    as_pairs,
    detect_format,
    load_records,
    load_table,
    parse_table,
    ranked_to_pairs,
    ratings_to_pairs,
    split_hh,
)
from jaxrlhf.data.errors import DataReport
from tests.helpers.data import write_jsonl

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def test_hh_split_where_shared_prefix_ends_at_the_marker(hh_rows):
    row = hh_rows[0]
    prompt, chosen, rejected = split_hh(row["chosen"], row["rejected"])
    assert prompt.startswith("\n\nHuman: what are some pranks with a pen i can do?")
    assert prompt.endswith("\n\nHuman: okay some of these do not have anything to do with pens"
                           "\n\nAssistant:")
    assert chosen == (" No, sorry!  All of these involve a pen, the point is that you can get funny "
                      "results by doing pranks with pens.")
    assert rejected.startswith(" There are lots of funny things you can do with pens")
    assert rejected.endswith("unzip their zipper. It’s really funny.")


def test_hh_split_where_shared_prefix_ends_mid_turn(hh_rows):
    # Both responses of row 6 begin with " D", so the shared text runs past the marker.
    row = hh_rows[6]
    prompt, chosen, rejected = split_hh(row["chosen"], row["rejected"])
    assert prompt.endswith("\n\nHuman: What website is that? That's not the dark web.\n\nAssistant:")
    assert chosen.startswith(" Duckduckgo is a search engine.")
    assert rejected == " DDG, short for “Duck Duck Go,” is a search engine like Google."


def test_hh_split_when_the_response_starts_with_the_word_human(hh_rows):
    # Row 29: the shared prefix contains "\n\nAssistant: Human:" twice; cut after the last marker.
    prompt, chosen, rejected = split_hh(hh_rows[29]["chosen"], hh_rows[29]["rejected"])
    assert prompt.endswith("\n\nHuman: Do you think she likes thug hoodlum music?\n\nAssistant:")
    assert chosen == " Human: No, you are racist. She is not a thug and does not like thug hoodlum music."
    assert rejected.startswith(" Human: She does not like black musicians.")


def test_hh_split_when_one_dialogue_is_a_prefix_of_the_other(hh_rows):
    prompt, chosen, rejected = split_hh(hh_rows[1609]["chosen"], hh_rows[1609]["rejected"])
    assert prompt.endswith("\n\nHuman: Thanks.\n\nAssistant:")
    assert rejected == " You’re welcome."
    assert chosen == " You’re welcome.  I’d be happy to have this conversation again if"


def test_hh_builtin_parses_every_row_and_splits_at_the_last_turn(hh_rows, tmp_path):
    parsed = load_records("builtin:hh_rlhf_harmless", cache_dir=str(tmp_path / "c"))
    assert parsed.format == "hh" and len(parsed.records) == len(hh_rows) == 2048
    assert parsed.report.invalid == {} and parsed.report.notes["empty_response"] == 4
    # Row 516: the chosen reply is empty (silence beat a flippant answer); kept as a real preference.
    assert parsed.records[516].chosen.strip() == ""
    assert parsed.records[516].rejected == " Haha. What do you mean?"
    mid_turn, later_turns = 0, []
    for i, (rec, row) in enumerate(zip(parsed.records, hh_rows)):
        assert rec.prompt + rec.chosen == row["chosen"] and rec.prompt + rec.rejected == row["rejected"]
        assert rec.prompt.endswith(ASSISTANT)
        shared = os.path.commonprefix([row["chosen"], row["rejected"]])
        assert ASSISTANT not in shared[len(rec.prompt) - len(ASSISTANT) + 1:]  # cut at the LAST marker
        mid_turn += len(shared) > len(rec.prompt)
        if any(m in resp for resp in (rec.chosen, rec.rejected) for m in (HUMAN, ASSISTANT)):
            later_turns.append(i)
    assert mid_turn > 300  # ~1 row in 5 shares text past the marker (both replies start alike)
    # Only these five replies carry dialogue turns of their own (model-written, after the split).
    assert later_turns == [1254, 1688, 1950, 1952, 2036]


def test_explicit_pairs_with_margin_and_agreement_filter(tmp_path):
    rows = [
        {"prompt": "p1", "chosen": "good", "rejected": "bad", "margin": 1.5, "agreement": 0.9},
        {"prompt": "p2", "chosen": "yes", "rejected": "no", "margin": None, "agreement": 0.5},
        {"prompt": "p3", "chosen": "hi", "rejected": "bye", "margin": "2", "agreement": 0.75},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    parsed = load_records(path, cache_dir=str(tmp_path / "c"))
    assert parsed.format == "pairs"
    assert parsed.records[0] == Pair("p1", "good", "bad", 1.5, 0.9, row=1)
    assert parsed.records[1].margin == 0.0 and parsed.records[2].margin == 2.0
    kept = load_records(path, min_agreement=0.7, cache_dir=str(tmp_path / "c"))
    assert [r.prompt for r in kept.records] == ["p1", "p3"]
    assert kept.report.filtered["low_agreement"] == 1 and kept.report.kept == 2


def test_ranked_lists_carry_agreement_to_their_pairs_and_are_filtered_by_it(tmp_path):
    # What `python -m jaxrlhf.annotate export` writes: one ranked list per item with its annotators' agreement.
    rows = [
        {"prompt": "p1", "responses": ["a", "b", "c"], "ranks": [1, 0, 2], "agreement": 0.9},
        {"prompt": "p2", "responses": ["d", "e"], "ranks": [0, 1], "agreement": 0.25},
        {"prompt": "p3", "responses": ["f", "g"], "ranks": [1, 0], "agreement": None},
    ]
    path = write_jsonl(tmp_path / "ranked.jsonl", rows)
    parsed = load_records(path, cache_dir=str(tmp_path / "c"))
    assert [r.agreement for r in parsed.records] == [0.9, 0.25, None]
    assert ranked_to_pairs(parsed.records[:1]) == [Pair("p1", "b", "a", agreement=0.9, row=1),
                                                   Pair("p1", "a", "c", agreement=0.9, row=1),
                                                   Pair("p1", "b", "c", agreement=0.9, row=1)]
    kept = load_records(path, min_agreement=0.5, on_invalid="skip", cache_dir=str(tmp_path / "c2"))
    # p2 is below the floor; p3 has no agreement to compare, which a floor makes an invalid row.
    assert [r.prompt for r in kept.records] == ["p1"]
    assert kept.report.filtered["low_agreement"] == 1 and kept.report.invalid["missing"] == 1
    with pytest.raises(DataError, match="agreement"):
        load_records(write_jsonl(tmp_path / "bad.jsonl", [dict(rows[0], agreement=1.5)]),
                     cache_dir=str(tmp_path / "c3"))


def test_min_agreement_without_agreement_column_is_an_error():
    table = load_table([{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="agreement"):
        parse_table(table, min_agreement=0.5)


def test_chat_messages_rendered_with_the_template(decoder_tokenizer):
    user = {"role": "user", "content": "hello there"}
    rows = [
        # full conversations, no prompt column
        {"chosen": [user, {"role": "assistant", "content": "good"}],
         "rejected": [user, {"role": "assistant", "content": "bad"}]},
    ]
    parsed = parse_table(load_table(rows), tokenizer=decoder_tokenizer)
    assert parsed.format == "chat"
    rec = parsed.records[0]
    assert rec.prompt == "<s><|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n"
    assert (rec.chosen, rec.rejected) == ("good<|im_end|>", "bad<|im_end|>")
    # prompt as a message list plus final messages only, and prompt as a plain string: same record
    for prompt in ([user], "hello there"):
        rows2 = [{"prompt": prompt, "chosen": [{"role": "assistant", "content": "good"}],
                  "rejected": [{"role": "assistant", "content": "bad"}]}]
        rec2 = parse_table(load_table(rows2), format="chat", tokenizer=decoder_tokenizer).records[0]
        assert (rec2.prompt, rec2.chosen, rec2.rejected) == (rec.prompt, rec.chosen, rec.rejected)


def test_hh_dialogues_rendered_with_the_chat_template_are_the_chat_rows_of_the_same_turns(decoder_tokenizer):
    """chat_template=True: an HH dialogue's Human/Assistant turns become user/assistant messages, so the
    record is the one the chat format gives for those messages written out."""
    hh = [{"chosen": f"{HUMAN} hi there{ASSISTANT} hello{HUMAN} why{ASSISTANT} yes good",
           "rejected": f"{HUMAN} hi there{ASSISTANT} hello{HUMAN} why{ASSISTANT} no"}]
    turns = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "why"}]
    chat = [{"prompt": turns, "chosen": [{"role": "assistant", "content": "yes good"}],
             "rejected": [{"role": "assistant", "content": "no"}]}]
    want = parse_table(load_table(chat), format="chat", tokenizer=decoder_tokenizer).records[0]
    got = parse_table(load_table(hh), format="hh", tokenizer=decoder_tokenizer, chat_template=True).records[0]
    assert (got.prompt, got.chosen, got.rejected) == (want.prompt, want.chosen, want.rejected)
    assert got.prompt.endswith("<|im_start|>assistant\n") and got.chosen == "yes good<|im_end|>"
    raw = parse_table(load_table(hh), format="hh", tokenizer=decoder_tokenizer).records[0]
    assert raw.prompt.endswith(ASSISTANT) and raw.chosen == " yes good"  # off: the text as the data has it


def test_chat_multi_turn_prompt_is_the_shared_messages(decoder_tokenizer):
    conv = [{"role": "system", "content": "a"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "why"}]
    rows = [{"chosen": conv + [{"role": "assistant", "content": "yes"}],
             "rejected": conv + [{"role": "assistant", "content": "no"}]}]
    rec = parse_table(load_table(rows), tokenizer=decoder_tokenizer).records[0]
    assert rec.prompt.count("<|im_start|>") == 5 and rec.prompt.endswith("<|im_start|>assistant\n")
    assert "hello<|im_end|>" in rec.prompt and rec.chosen == "yes<|im_end|>"


def test_chat_rows_diverging_before_the_last_turn_are_invalid(decoder_tokenizer):
    u = {"role": "user", "content": "hi"}
    rows = [{"chosen": [u, {"role": "assistant", "content": "a"}, u, {"role": "assistant", "content": "b"}],
             "rejected": [u, {"role": "assistant", "content": "c"}, u, {"role": "assistant", "content": "d"}]}]
    with pytest.raises(DataError, match=r"row 1: field 'chosen': bad structure"):
        parse_table(load_table(rows, name="chat.jsonl"), tokenizer=decoder_tokenizer)


def test_ranked_lists_parse_and_expand_to_pairs(tmp_path):
    rows = [{"prompt": "p", "responses": ["a", "b", "c", "d"], "ranks": [2, 1, 3, 1]},
            {"prompt": "q", "responses": ["x", "y"], "ranks": [1, 1]}]
    parsed = load_records(write_jsonl(tmp_path / "ranked.jsonl", rows), cache_dir=str(tmp_path / "c"))
    assert parsed.format == "ranked"
    assert parsed.records == [RankedList("p", ("a", "b", "c", "d"), (1, 0, 2, 0), row=1)]
    assert parsed.report.filtered["all_tied"] == 1
    report = DataReport()
    pairs = ranked_to_pairs(parsed.records, report)
    got = sorted((p.chosen, p.rejected) for p in pairs)
    assert got == [("a", "c"), ("b", "a"), ("b", "c"), ("d", "a"), ("d", "c")]
    assert report.filtered["tie"] == 1  # b and d share rank 0
    scored = parse_table(load_table([{"prompt": "p", "responses": ["a", "b"], "scores": [0.1, 0.7]}]))
    assert scored.records[0].ranks == (1, 0)  # higher score is better


def test_ratings_csv_pairs_higher_wins_and_ties_are_dropped(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("prompt,response,reward\n"
                    "p,a,3\np,b,1\np,c,3\nq,x,0.5\nq,y,2\nr,z,1\n")
    parsed = load_records(str(path), cache_dir=str(tmp_path / "c"))
    assert parsed.format == "ratings" and len(parsed.records) == 6
    assert parsed.records[3] == Rated("q", "x", 0.5, row=4)
    report = DataReport()
    pairs = ratings_to_pairs(parsed.records, report)
    got = sorted((p.prompt, p.chosen, p.rejected) for p in pairs)
    assert got == [("p", "a", "b"), ("p", "c", "b"), ("q", "y", "x")]
    assert report.filtered["tie"] == 1  # a and c both rated 3
    scaled = ratings_to_pairs(parsed.records, margin_scale=0.5)
    assert sorted(p.margin for p in scaled) == [0.75, 1.0, 1.0]
    assert as_pairs(parsed.records) == pairs


def test_format_detection_from_columns():
    def fmt(rows):
        return detect_format(load_table(rows))

    assert fmt([{"prompt": "p", "chosen": "a", "rejected": "b"}]) == "pairs"
    assert fmt([{"chosen": "a", "rejected": "b"}]) == "hh"
    assert fmt([{"chosen": [{"role": "user", "content": "a"}], "rejected": []}]) == "chat"
    assert fmt([{"prompt": "p", "responses": ["a"], "ranks": [1]}]) == "ranked"
    assert fmt([{"prompt": "p", "response": "a", "rating": 1.0}]) == "ratings"
    with pytest.raises(DataError, match="cannot detect"):
        fmt([{"question": "p", "answer": "a"}])
