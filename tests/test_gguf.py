"""GGUF -> HF converter: tiny random Llamas written as GGUF here, and the real SmolLM2 asset.

References: the original PyTorch model (`transformers.LlamaForCausalLM`), transformers' own GGUF loader
(`load_gguf_checkpoint`, which maps names and un-permutes Q/K independently of our code) and, for the
rounding of F16/BF16, torch's casts.
"""

import json
import os

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT

from jaxrlhf.models.gguf import GGUFConversionError, convert_gguf_to_hf, unpermute_qk
from tests.helpers.assets import require_asset

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM  # noqa: E402
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint  # noqa: E402

from tests.helpers.gguf_files import llama_cpp_permute, make_tiny, tiny_vocab, write_tiny_gguf  # noqa: E402


@pytest.fixture(autouse=True)
def _hf_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def test_unpermute_hand_case():
    # One head of size 4: HF rows (r0, r1 | r2, r3) pair r0 with r2 and r1 with r3 (rotate_half);
    # llama.cpp stores the pairs adjacent: r0, r2, r1, r3.
    hf = np.arange(8).reshape(4, 2)
    gg = hf[[0, 2, 1, 3]]
    np.testing.assert_array_equal(llama_cpp_permute(hf, 1), gg)
    np.testing.assert_array_equal(unpermute_qk(gg, 1), hf)
    # Two heads of size 4, bias (1-D) shape.
    hf = np.arange(8.0)
    np.testing.assert_array_equal(unpermute_qk(hf[[0, 2, 1, 3, 4, 6, 5, 7]], 2), hf)


@pytest.mark.parametrize("n_head,head_dim", [(1, 8), (3, 16), (9, 64)])
def test_unpermute_inverts_permute(n_head, head_dim):
    w = np.random.default_rng(0).standard_normal((n_head * head_dim, 5))
    np.testing.assert_array_equal(unpermute_qk(llama_cpp_permute(w, n_head), n_head), w)
    assert not np.array_equal(llama_cpp_permute(w, n_head), w)


# --------------------------------------------------------------------------------------------------
# Tiny Llamas written as GGUF (tests/helpers/gguf_files.py)


def reference_via_transformers_gguf(gguf_path):
    """transformers' own GGUF loader (dequantises, maps names, un-permutes): an independent model."""
    cfg = AutoConfig.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    model = LlamaForCausalLM(cfg).float()
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return model.eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits.numpy()


IDS = [[1, 70, 5, 200, 33, 101, 9, 2, 250, 17, 44]]


def _bf16(a):
    return torch.from_numpy(a).to(torch.bfloat16).float().numpy()


def _max_quant_err(a, qtype):
    """Bound on |dequant(quant(a)) - a| for 32-wide blocks along the last axis: half a step (a full
    step for Q4_0's clamped end) plus the float16 rounding of the stored scale/offset."""
    blocks = a.reshape(-1, 32)
    if qtype == QT.Q8_0:  # symmetric, 255 levels: half a step of amax/127
        step = np.abs(blocks).max(-1) / 127
    elif qtype == QT.Q4_0:  # symmetric 16 levels from -8*d..7*d with d = amax/8 (signed max)
        step = np.abs(blocks).max(-1) / 8 * 2
    elif qtype == QT.Q4_1:  # affine 16 levels over [min, max]
        step = (blocks.max(-1) - blocks.min(-1)) / 15
    else:
        raise AssertionError(qtype)
    f16 = np.abs(blocks).max(-1) * 2.0**-9
    return np.repeat(step * 0.5 + f16 + 1e-7, 32).reshape(a.shape)


@pytest.mark.parametrize("qtype,tied", [(QT.F32, False), (QT.F32, True), (QT.F16, True), (QT.BF16, False)],
                         ids=["F32-untied", "F32-tied", "F16-tied", "BF16-untied"])
def test_tiny_float_roundtrip(tmp_path, qtype, tied):
    model = make_tiny(tied)
    gpath = tmp_path / "tiny.gguf"
    written = write_tiny_gguf(gpath, model, qtype)
    out = convert_gguf_to_hf(gpath, tmp_path / "hf")

    from safetensors.numpy import load_file

    got = load_file(os.path.join(out, "model.safetensors"))
    expected_names = set(written) - ({"lm_head.weight"} if tied else set())
    assert set(got) == expected_names
    cast = {QT.F32: lambda a: a, QT.F16: lambda a: a.astype(np.float16).astype(np.float32),
            QT.BF16: _bf16}[qtype]
    for name, arr in written.items():
        if name not in got:
            continue
        assert got[name].dtype == np.float32
        exp = arr if "norm" in name else cast(arr)  # norms stay F32
        np.testing.assert_array_equal(got[name], exp, err_msg=name)

    cfg = json.load(open(os.path.join(out, "config.json")))
    orig = model.config
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
                "rms_norm_eps", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert cfg[key] == getattr(orig, key), key
    assert cfg["rope_theta"] == orig.rope_parameters["rope_theta"]

    ours = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    if qtype == QT.F32:
        np.testing.assert_allclose(logits(ours, IDS), logits(model, IDS), atol=1e-5, rtol=1e-5)
    ref = reference_via_transformers_gguf(gpath)
    np.testing.assert_allclose(logits(ours, IDS), logits(ref, IDS), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_0, QT.Q4_1], ids=lambda q: q.name)
def test_tiny_quantised_roundtrip(tmp_path, qtype):
    model = make_tiny(tied=True, seed=1)
    gpath = tmp_path / "tiny.gguf"
    written = write_tiny_gguf(gpath, model, qtype, embed_qtype=QT.Q8_0)
    out = convert_gguf_to_hf(gpath, tmp_path / "hf", tokenizer=False)

    from safetensors.numpy import load_file

    got = load_file(os.path.join(out, "model.safetensors"))
    for name, arr in written.items():
        if name == "lm_head.weight":
            continue
        if "norm" in name:
            np.testing.assert_array_equal(got[name], arr, err_msg=name)
            continue
        q = QT.Q8_0 if name == "model.embed_tokens.weight" else qtype
        err = np.abs(got[name] - arr)
        assert (err <= _max_quant_err(arr, q)).all(), name
        assert err.max() > 0, f"{name}: quantisation left no trace, the test would not see a bad import"

    ours = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ref = reference_via_transformers_gguf(gpath)
    np.testing.assert_allclose(logits(ours, IDS), logits(ref, IDS), atol=1e-5, rtol=1e-5)
    # Quantisation moves logits, un-permuting wrongly moves them much more.
    diff = np.abs(logits(ours, IDS) - logits(model, IDS)).max()
    assert diff < 0.2 * np.abs(logits(model, IDS)).max()


def test_tiny_tokenizer_and_files(tmp_path):
    model = make_tiny(tied=True)
    gpath = tmp_path / "tiny.gguf"
    write_tiny_gguf(gpath, model, QT.F32)
    out = convert_gguf_to_hf(gpath, tmp_path / "hf")
    for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(out, f)), f
    gen = json.load(open(os.path.join(out, "generation_config.json")))
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 2)

    tok = AutoTokenizer.from_pretrained(out)
    tokens, _, _ = tiny_vocab()
    assert len(tok) == len(tokens)
    assert tok("hello world")["input_ids"] == [tokens.index("hello"), tokens.index("Ġworld")]
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    text = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                   tokenize=False)
    assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == 1 and ids[-1] == tokens.index("Ċ")


# --------------------------------------------------------------------------------------------------
# Errors


def _write_meta_only(path, arch, tensors):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(16)
    w.add_embedding_length(32)
    w.add_block_count(1)
    w.add_feed_forward_length(32)
    w.add_head_count(2)
    for name, arr, raw in tensors:
        w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unsupported_architecture(tmp_path):
    p = tmp_path / "gpt.gguf"
    _write_meta_only(p, "gpt2", [("token_embd.weight", np.zeros((4, 32), np.float32), None)])
    with pytest.raises(GGUFConversionError, match=r"gpt\.gguf: unsupported architecture 'gpt2'"):
        convert_gguf_to_hf(p, tmp_path / "out")


def test_unsupported_quant_type(tmp_path):
    p = tmp_path / "iq.gguf"
    block, nbytes = gguf.GGML_QUANT_SIZES[QT.IQ2_XXS]
    raw = np.zeros((4, 32 * 8 // block * nbytes), np.uint8)  # 4 rows of 256 values
    _write_meta_only(p, "llama", [("token_embd.weight", raw, QT.IQ2_XXS)])
    with pytest.raises(GGUFConversionError, match=r"iq\.gguf: tensor token_embd\.weight has unsupported "
                                                  r"type IQ2_XXS"):
        convert_gguf_to_hf(p, tmp_path / "out")


def test_unknown_tensor(tmp_path):
    p = tmp_path / "rf.gguf"
    _write_meta_only(p, "llama", [("rope_freqs.weight", np.ones(8, np.float32), None)])
    with pytest.raises(GGUFConversionError, match=r"rf\.gguf: tensor rope_freqs\.weight"):
        convert_gguf_to_hf(p, tmp_path / "out")


# --------------------------------------------------------------------------------------------------
# Real SmolLM2-135M-Instruct (Q4_1), fetched by `python -m jaxrlhf.assets fetch smollm2`


def _smollm2_dirs():
    from jaxrlhf import assets

    d = require_asset("smollm2")
    return d, assets.asset_gguf_file("smollm2")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    # Convert afresh with the code under test (the cached directory was made by whatever code fetched it).
    _, gguf_file = _smollm2_dirs()
    hf_dir = convert_gguf_to_hf(gguf_file, tmp_path_factory.mktemp("smollm2_hf"))
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ours = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    return tok, ours, gguf_file


def _chat_ids(tok):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return enc["input_ids"]


@pytest.mark.slow
@pytest.mark.real_model
def test_smollm2_logits_match_transformers_gguf_loader(smollm2):
    tok, ours, gguf_file = smollm2
    ref = reference_via_transformers_gguf(gguf_file)
    ids = _chat_ids(tok)
    assert ids[0, 0].item() == tok.convert_tokens_to_ids("<|im_start|>")
    with torch.no_grad():
        a = ours(input_ids=ids).logits[0, -1]
        b = ref(input_ids=ids).logits[0, -1]
    assert (a - b).abs().max().item() < 1e-3


@pytest.mark.slow
@pytest.mark.real_model
def test_smollm2_greedy_says_paris(smollm2):
    tok, ours, _ = smollm2
    ids = _chat_ids(tok)
    with torch.no_grad():
        out = ours.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                            do_sample=False)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
