"""Tokenising: special tokens from the tokenizer, EOS for decoders, truncation keeps the response end."""

from __future__ import annotations

import numpy as np
import pytest

from jaxrlhf.data import Pair, load_records, load_table, parse_table, special_tokens, tokenize_pairs
from jaxrlhf.data.tokenize import TextEncoder
from tests.helpers.tokenizers import ids_of, make_decoder_tokenizer


def _tokens(tok, ids) -> str:
    return " ".join(tok.convert_ids_to_tokens([int(i) for i in ids]))


@pytest.mark.real_model
def test_bert_frame_and_layout(minilm_tokenizer):
    tok = minilm_tokenizer
    sp = special_tokens(tok)
    assert (sp.prefix, sp.suffix, sp.eos_id, sp.pad_id) == ((tok.cls_token_id,), (tok.sep_token_id,),
                                                             None, tok.pad_token_id)
    enc = TextEncoder(tok, 64).encode(["one two three"], [" red green"])
    assert _tokens(tok, enc.sequence(0)) == "[CLS] one two three red green [SEP]"
    assert (enc.prompt_len[0], enc.response_len[0], enc.truncated[0]) == (4, 2, False)


@pytest.mark.real_model
def test_bert_truncation_cuts_prompt_left_then_response_start(minilm_tokenizer):
    tok = minilm_tokenizer
    prompt, response = "one two three four five six", " red green blue"
    enc = TextEncoder(tok, 7).encode([prompt], [response])
    assert _tokens(tok, enc.sequence(0)) == "[CLS] five six red green blue [SEP]"
    assert (enc.prompt_len[0], enc.response_len[0], enc.truncated[0]) == (3, 3, True)
    enc = TextEncoder(tok, 4).encode([prompt], [response])
    assert _tokens(tok, enc.sequence(0)) == "[CLS] green blue [SEP]"
    assert (enc.prompt_len[0], enc.response_len[0]) == (1, 2)


@pytest.mark.real_model
def test_hh_with_minilm_matches_joint_tokenisation_and_keeps_response_end(minilm_tokenizer, tmp_path):
    tok = minilm_tokenizer
    pairs = load_records("builtin:hh_rlhf_harmless", cache_dir=str(tmp_path / "c")).records[:300]
    data = tokenize_pairs(pairs, tok, max_length=256)
    n_trunc = 0
    for i, pair in enumerate(pairs):
        for enc, resp in ((data.chosen, pair.chosen), (data.rejected, pair.rejected)):
            seq = enc.sequence(i).tolist()
            assert seq[0] == tok.cls_token_id and seq[-1] == tok.sep_token_id and len(seq) <= 256
            assert enc.prompt_len[i] + enc.response_len[i] + 1 == len(seq)
            if not enc.truncated[i]:  # reference: the tokenizer on the joined text
                assert seq == tok(pair.prompt + resp, verbose=False)["input_ids"]
            else:
                n_trunc += 1
                assert len(seq) == 256
                resp_ids = tok(resp, add_special_tokens=False, verbose=False)["input_ids"]
                kept = seq[enc.prompt_len[i]:-1]
                assert kept == resp_ids[len(resp_ids) - len(kept):]  # the END of the response
                prompt_ids = tok(pair.prompt, add_special_tokens=False, verbose=False)["input_ids"]
                cut = seq[1:enc.prompt_len[i]]
                assert cut == (prompt_ids[len(prompt_ids) - len(cut):] if cut else [])
    assert n_trunc > 20


def test_decoder_bos_eos_and_truncation(decoder_tokenizer):
    tok = decoder_tokenizer
    sp = special_tokens(tok)
    assert (sp.prefix, sp.suffix, sp.eos_id) == ((tok.bos_token_id,), (), tok.eos_token_id)
    enc = TextEncoder(tok, 32).encode(["one two three four"], ["red green"])
    assert _tokens(tok, enc.sequence(0)) == "<s> one two three four red green </s>"
    assert (enc.prompt_len[0], enc.response_len[0]) == (5, 3)
    enc = TextEncoder(tok, 6).encode(["one two three four"], ["red green"])
    assert _tokens(tok, enc.sequence(0)) == "<s> three four red green </s>"
    enc = TextEncoder(tok, 5).encode(["one two"], ["a b c d e f"])
    assert _tokens(tok, enc.sequence(0)) == "<s> d e f </s>"
    assert (enc.prompt_len[0], enc.response_len[0], enc.truncated[0]) == (1, 4, True)
    enc = TextEncoder(tok, 6, append_eos=False).encode(["one two"], ["a b c d e f"])
    assert _tokens(tok, enc.sequence(0)) == "<s> b c d e f"


def test_decoder_without_bos_gets_only_eos():
    tok = make_decoder_tokenizer(bos=False)
    enc = TextEncoder(tok, 4).encode(["one two"], ["red green"])
    assert _tokens(tok, enc.sequence(0)) == "two red green </s>"


def test_chat_template_bos_is_not_doubled_and_eos_turn_end_not_repeated(decoder_tokenizer):
    rows = [{"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "good"}],
             "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "bad"}]}]
    tok = decoder_tokenizer  # template starts with "{{ bos_token }}"; eos is </s>
    pairs = parse_table(load_table(rows), tokenizer=tok).records
    data = tokenize_pairs(pairs, tok, 64)
    assert _tokens(tok, data.chosen.sequence(0)) == (
        "<s> <|im_start|> user hi <|im_end|> <|im_start|> assistant good <|im_end|> </s>")
    # A ChatML model whose eos IS <|im_end|>: the rendered turn end is the EOS, not appended twice.
    tok2 = make_decoder_tokenizer()
    tok2.eos_token = "<|im_end|>"
    pairs = parse_table(load_table(rows), tokenizer=tok2).records
    data = tokenize_pairs(pairs, tok2, 64)
    assert _tokens(tok2, data.rejected.sequence(0)) == (
        "<s> <|im_start|> user hi <|im_end|> <|im_start|> assistant bad <|im_end|>")
    data = tokenize_pairs(pairs, tok2, 7)  # truncated: the prompt loses its start, BOS and EOS stay
    assert _tokens(tok2, data.rejected.sequence(0)) == (
        "<s> hi <|im_end|> <|im_start|> assistant bad <|im_end|>")
    assert (data.rejected.prompt_len[0], data.rejected.response_len[0]) == (5, 2)


def test_pair_data_margins_groups_and_pad(decoder_tokenizer):
    pairs = [Pair("one", "a", "b", margin=0.5), Pair("two", "c", "d"), Pair("one", "e", "f")]
    data = tokenize_pairs(pairs, decoder_tokenizer, 16)
    np.testing.assert_array_equal(data.margin, np.float32([0.5, 0, 0]))
    np.testing.assert_array_equal(data.group, [0, 1, 0])
    assert data.pad_id == decoder_tokenizer.pad_token_id and len(data) == 3
    with pytest.raises(ValueError, match="no room"):
        tokenize_pairs(pairs, decoder_tokenizer, 2)
    assert data.chosen.sequence(2).tolist() == ids_of(decoder_tokenizer, "<s> one e </s>")


def test_untruncated_lengths_and_which_responses_lost_their_start(decoder_tokenizer):
    enc = TextEncoder(decoder_tokenizer, 6).encode(["one two three four", "one", "one two"],
                                                   ["red green", "a b c d e f", "hi"])
    # budget 6 - BOS - EOS = 4: "<s> three four red green </s>" (prompt cut only), "<s> c d e f </s>" (response
    # cut, prompt gone), "<s> one two hi </s>" (whole)
    assert enc.full_length.tolist() == [8, 9, 5]
    assert enc.full_response_len.tolist() == [3, 7, 2]
    assert enc.response_len.tolist() == [3, 5, 2]
    assert enc.response_cut.tolist() == [False, True, False]
    assert enc.truncated.tolist() == [True, True, False]


def test_max_length_that_cuts_most_responses_is_an_error(decoder_tokenizer):
    from jaxrlhf.data.usable import check_truncation

    tok = decoder_tokenizer
    prompts, responses = ["one two"] * 4, ["a b c d", "a b c d", "a b c", "a"]  # full: 8, 8, 7, 5 tokens
    half = TextEncoder(tok, 5).encode(prompts, responses)  # budget 3: responses 1 and 2 cut, exactly half
    check_truncation([half], 5, "s.jsonl")
    most = TextEncoder(tok, 4).encode(prompts, responses)  # budget 2: three of four cut
    with pytest.raises(ValueError) as info:
        check_truncation([most], 4, "s.jsonl", {"max_length": "data.max_length"})
    assert str(info.value) == ("s.jsonl: data.max_length=4 cuts 3 of 4 responses (75%) to their last 3 tokens, with "
                               "none of the prompt left; the median prompt + response is 8 tokens: set "
                               "data.max_length to at least 8")
    with pytest.raises(ValueError, match=r"at least 6 \(the model's limit of 6 tokens\)$"):
        check_truncation([most], 4, "s.jsonl", limit=6)
    check_truncation([most], 4, "s.jsonl", limit=4)  # already at the model's limit: nothing longer would fit


def test_hh_max_length_rule_against_whitespace_token_counts(decoder_tokenizer, tmp_path):
    """The word-level tokenizer splits on whitespace, so each untruncated length is 2 + words (BOS, EOS)."""
    import numpy as np

    from jaxrlhf.data import load_pair_data

    pairs = load_records("builtin:hh_rlhf_harmless", cache_dir=str(tmp_path / "c")).records
    full = [2 + len(p.prompt.split()) + len(r.split()) for p in pairs for r in (p.chosen, p.rejected)]
    cut_at = {n: np.mean([len(r.split()) + 1 > n - 1 for p in pairs for r in (p.chosen, p.rejected)])
              for n in (8, 256)}
    assert cut_at[8] > 0.5 > cut_at[256]  # the rule's two sides on real data
    load_pair_data("builtin:hh_rlhf_harmless", decoder_tokenizer, 256, cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError) as info:
        load_pair_data("builtin:hh_rlhf_harmless", decoder_tokenizer, 8, cache_dir=str(tmp_path / "c"))
    msg = str(info.value)
    cut = sum(len(r.split()) + 1 > 7 for p in pairs for r in (p.chosen, p.rejected))
    assert msg.startswith(f"builtin:hh_rlhf_harmless: max_length=8 cuts {cut} of {len(full)} responses")
    assert msg.endswith(f"the median prompt + response is {int(np.ceil(np.median(full)))} tokens: set max_length to "
                        f"at least {int(np.ceil(np.median(full)))}")


def test_shared_prompt_cuts_the_prompt_alike_for_every_response(decoder_tokenizer):
    """A prompt too long for the longer response: with shared_prompt both sides (and every list response)
    keep the same last prompt tokens, those that fit beside the longest response; without it, each side keeps
    what fits beside itself."""
    from jaxrlhf.data import RankedList
    from jaxrlhf.data.tokenize import tokenize_lists

    prompt = "one two three four five six seven eight nine ten"  # 10 tokens
    pair = Pair(prompt, "yes", "no bad red green blue")  # responses of 1 and 5 tokens, + EOS
    own = tokenize_pairs([pair], decoder_tokenizer, max_length=12)  # BOS + prompt + response + EOS
    shared = tokenize_pairs([pair], decoder_tokenizer, max_length=12, shared_prompt=True)
    words = lambda enc: decoder_tokenizer.convert_ids_to_tokens(list(enc.sequence(0)))
    assert words(own.chosen)[1:own.chosen.prompt_len[0]] == prompt.split()[-9:]
    assert words(own.rejected)[1:own.rejected.prompt_len[0]] == prompt.split()[-5:]
    assert words(shared.rejected) == words(own.rejected) and len(words(shared.rejected)) == 12
    assert words(shared.chosen) == ["<s>", *prompt.split()[-5:], "yes", "</s>"]
    assert shared.chosen.truncated[0] and shared.chosen.full_length[0] == 13  # counted as cut, like the other side
    lists = tokenize_lists([RankedList(prompt, ("yes", "no bad red green blue", "good one"), (0, 2, 1))],
                           decoder_tokenizer, max_length=12, shared_prompt=True)
    cuts = {tuple(lists.seqs.sequence(i)[:lists.seqs.prompt_len[i]]) for i in range(3)}
    assert len(cuts) == 1 and len(next(iter(cuts))) == 6  # BOS + the same 5 prompt tokens
