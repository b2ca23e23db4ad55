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
