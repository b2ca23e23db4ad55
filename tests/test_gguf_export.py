"""HF -> GGUF exporter (jaxrlhf.models.gguf_export): tiny random decoders made here, and the real SmolLM2.

References, none of them our exporter: the source PyTorch model (`transformers`), transformers' own GGUF
loader (`load_gguf_checkpoint`: its own names, its own Q/K un-permutation; `from_pretrained(gguf_file=)`
needs `accelerate`, which is not installed, so the model is built from the GGUF config and loaded with
it), transformers' GGUF tokenizer builder, and jaxrlhf's importer (models.gguf) feeding our JAX model.
"""

import json
import os
import random
import subprocess
import sys
import unicodedata

import gguf
import numpy as np
import pytest
import torch

from jaxrlhf.models.gguf import convert_gguf_to_hf, unpermute_qk
from jaxrlhf.models.gguf_export import export_gguf, permute_qk
from jaxrlhf.models.gguf_vocab import add_vocab, vocab_of
from tests.helpers.assets import require_asset
from tests.helpers.gguf_files import llama_cpp_permute, make_tiny_decoder_dir

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint  # noqa: E402

IDS = [[1, 70, 5, 200, 33, 101, 9, 2, 250, 17, 44, 3, 260]]


@pytest.fixture(autouse=True)
def _hf_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def transformers_gguf_model(path):
    cfg = AutoConfig.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    model = AutoModelForCausalLM.from_config(cfg).float()
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return model.eval()


def torch_logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits.numpy()


def jaxrlhf_logits(gguf_path, out_dir, ids=IDS):
    """The file through jaxrlhf's importer (GGUF -> HF dir) and our JAX Llama."""
    from jaxrlhf.models.hub import from_pretrained

    lm = from_pretrained(str(convert_gguf_to_hf(gguf_path, out_dir, tokenizer=False)), "causal_lm")
    ids = np.asarray(ids, np.int32)
    return np.asarray(lm.model(ids, np.ones_like(ids))[0])


def tensor_types(path):
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def test_permute_is_the_inverse_of_the_importers_unpermute():
    for n_heads, head_dim in [(1, 4), (3, 16), (9, 64)]:
        w = np.random.default_rng(0).standard_normal((n_heads * head_dim, 5))
        np.testing.assert_array_equal(permute_qk(w, n_heads), llama_cpp_permute(w, n_heads))
        np.testing.assert_array_equal(unpermute_qk(permute_qk(w, n_heads), n_heads), w)
        np.testing.assert_array_equal(unpermute_qk(permute_qk(w[:, 0], n_heads), n_heads), w[:, 0])  # a bias


# --------------------------------------------------------------------------------------------------
# (a) tiny random decoders: the file is the model


@pytest.mark.parametrize("kind,tied", [("llama", True), ("llama", False), ("mistral", False)],
                         ids=["llama-tied", "llama-untied", "mistral-untied"])
def test_tiny_llama_f32_is_the_source_model(tmp_path, kind, tied):
    src, model = make_tiny_decoder_dir(tmp_path / "src", kind, tied)
    out = tmp_path / "tiny.f32.gguf"
    report = export_gguf(str(src), out, "f32")
    types = tensor_types(out)
    assert report.tensor_types == {"F32": len(types)}
    window = getattr(model.config, "sliding_window", None)
    assert [n for n in report.notes if "sliding window" in n] == ([] if window is None else [
        f"sliding window of {window} not represented: llama.cpp attends over the whole context (the same "
        f"outputs up to {window} tokens)"])
    assert ("output.weight" in types) == (not tied)
    assert {"token_embd.weight", "output_norm.weight", "blk.1.attn_q.weight", "blk.1.ffn_down.weight",
            "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"} <= set(types)
    ref = torch_logits(model)
    np.testing.assert_allclose(torch_logits(transformers_gguf_model(out)), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(jaxrlhf_logits(out, tmp_path / "back"), ref, atol=1e-4, rtol=0)

    fields = gguf.GGUFReader(str(out)).fields
    get = lambda key: fields[key].contents()
    assert get("general.architecture") == "llama" and get("general.file_type") == 0
    assert get("llama.block_count") == 2 and get("llama.attention.head_count_kv") == 2
    assert get("llama.context_length") == 128 and get("llama.vocab_size") == model.config.vocab_size
    assert np.isclose(get("llama.attention.layer_norm_rms_epsilon"), 1e-5)
    assert get("tokenizer.ggml.model") == "gpt2" and get("tokenizer.ggml.pre") == "gpt-2"
    assert (get("tokenizer.ggml.bos_token_id"), get("tokenizer.ggml.eos_token_id"),
            get("tokenizer.ggml.padding_token_id"), get("tokenizer.ggml.unknown_token_id")) == (1, 2, 2, 0)
    assert get("tokenizer.ggml.add_bos_token") is False
    assert get("tokenizer.chat_template").startswith("{% for message in messages %}")
    assert get("tokenizer.ggml.token_type")[:4] == [3, 3, 3, 1]  # the ChatML specials are CONTROL


def _llama_cpp_rope_factors(theta, dim, factor, low, high, old_len):
    """llama.cpp's converter's `rope_freqs` for Llama-3 scaling (convert_hf_to_gguf.py), written from it."""
    import math

    out = []
    for freq in 1.0 / (theta ** (np.arange(0, dim, 2) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < old_len / high:
            out.append(1.0)
        elif wavelen > old_len / low:
            out.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


@pytest.mark.parametrize("rope", ["linear", "llama3"])
def test_rope_scaling_is_written_as_llama_cpp_reads_it(tmp_path, rope):
    params = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0} if rope == "linear" else {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16, "rope_theta": 10000.0}
    src, model = make_tiny_decoder_dir(tmp_path / "src", "llama", rope_parameters=params)
    out = tmp_path / f"{rope}.gguf"
    export_gguf(str(src), out, "f32")
    reader = gguf.GGUFReader(str(out))
    if rope == "linear":
        assert reader.fields["llama.rope.scaling.type"].contents() == "linear"
        assert reader.fields["llama.rope.scaling.factor"].contents() == 2.0
        # jaxrlhf's importer reads linear scaling back: the model is the source model
        np.testing.assert_allclose(jaxrlhf_logits(out, tmp_path / "back", [list(range(3, 120))]),
                                   torch_logits(model, [list(range(3, 120))]), atol=1e-4, rtol=0)
    else:
        freqs = [t for t in reader.tensors if t.name == "rope_freqs.weight"]
        assert len(freqs) == 1 and freqs[0].tensor_type.name == "F32"
        np.testing.assert_allclose(np.asarray(freqs[0].data), _llama_cpp_rope_factors(10000.0, 16, 8.0, 1.0, 4.0, 16),
                                   rtol=1e-6)


def test_tiny_llama_f16_differs_from_the_source_only_by_f16_rounding(tmp_path):
    """float16 keeps 11 significant bits, so each weight moves by at most 2^-11 of itself. The file's model
    must equal the source with exactly that rounding applied to its matrices (norms stay F32) to float32
    noise (1e-4); the distance to the unrounded source is what the rounding causes, nonzero and small."""
    src, model = make_tiny_decoder_dir(tmp_path / "src", "llama", tied=False, seed=3)
    out = tmp_path / "tiny.f16.gguf"
    export_gguf(str(src), out, "f16")
    types = tensor_types(out)
    assert {t for n, t in types.items() if "norm" in n} == {"F32"}
    assert {t for n, t in types.items() if "norm" not in n} == {"F16"}
    ref = torch_logits(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(p.half().float())
    rounded = torch_logits(model)
    got = torch_logits(transformers_gguf_model(out))
    np.testing.assert_allclose(got, rounded, atol=1e-4, rtol=0)
    np.testing.assert_allclose(jaxrlhf_logits(out, tmp_path / "back"), rounded, atol=1e-4, rtol=0)
    diff = np.abs(got - ref).max()
    assert 0 < diff < 2**-11 * 20 * np.abs(ref).max(), diff


def test_tiny_qwen2_keeps_biases_and_rope_layout(tmp_path):
    src, model = make_tiny_decoder_dir(tmp_path / "src", "qwen2", tied=True, seed=1)
    out = tmp_path / "qwen.f32.gguf"
    report = export_gguf(str(src), out, "f32")
    assert any("NFC" in n for n in report.notes), report.notes
    types = tensor_types(out)
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= set(types)
    assert "blk.0.attn_output.bias" not in types and "output.weight" not in types
    fields = gguf.GGUFReader(str(out)).fields
    assert fields["general.architecture"].contents() == "qwen2"
    assert fields["tokenizer.ggml.pre"].contents() == "qwen2"
    ref = transformers_gguf_model(out)
    assert type(ref).__name__ == "Qwen2ForCausalLM"
    np.testing.assert_allclose(torch_logits(ref), torch_logits(model), atol=1e-4, rtol=0)


@pytest.mark.parametrize("qtype", ["q8_0", "q5_0", "q4_0", "q4_1"])
def test_tiny_quantised_files_load_the_same_in_both_loaders(tmp_path, qtype):
    src, model = make_tiny_decoder_dir(tmp_path / "src", "llama", tied=True, seed=2)
    out = tmp_path / f"tiny.{qtype}.gguf"
    report = export_gguf(str(src), out, qtype)
    types = tensor_types(out)
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_down.weight"] == qtype.upper()
    assert types["token_embd.weight"] == "Q8_0"  # tied: it is also the output projection
    assert types["output_norm.weight"] == "F32"
    assert (qtype == "q8_0") == (not report.notes)
    theirs = torch_logits(transformers_gguf_model(out))
    np.testing.assert_allclose(jaxrlhf_logits(out, tmp_path / "back"), theirs, atol=1e-4, rtol=0)
    ref = torch_logits(model)
    diff = np.abs(theirs - ref).max()
    assert 0 < diff < 0.2 * np.abs(ref).max(), diff  # quantisation moves logits; a wrong layout moves them more


def test_rows_not_a_multiple_of_the_block_fall_back_to_f16(tmp_path):
    src, model = make_tiny_decoder_dir(tmp_path / "src", "llama", tied=False, intermediate_size=80)
    out = tmp_path / "odd.q8_0.gguf"
    report = export_gguf(str(src), out, "q8_0")
    types = tensor_types(out)
    assert types["blk.0.ffn_down.weight"] == "F16"  # rows of 80 values
    assert types["blk.0.ffn_up.weight"] == types["output.weight"] == "Q8_0"  # rows of 64
    assert any("blk.0.ffn_down.weight: F16" in n and "80" in n for n in report.notes), report.notes
    np.testing.assert_allclose(jaxrlhf_logits(out, tmp_path / "back"), torch_logits(transformers_gguf_model(out)),
                               atol=1e-4, rtol=0)


def test_peft_lora_adapter_is_merged(tmp_path):
    """An adapter dir as PEFT saves it (written by hand: peft is not installed); the file must be the base
    with W + alpha/r * B @ A, computed here in torch."""
    from safetensors.torch import save_file

    base, model = make_tiny_decoder_dir(tmp_path / "base", "llama", tied=True)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    r, alpha = 4, 8.0
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": str(base), "r": r, "lora_alpha": alpha,
         "target_modules": ["q_proj", "v_proj"], "use_rslora": False, "use_dora": False}))
    g = torch.Generator().manual_seed(5)
    lora = {}
    for i in range(model.config.num_hidden_layers):
        for name in ("q_proj", "v_proj"):
            lin = getattr(model.model.layers[i].self_attn, name)
            a = 0.3 * torch.randn(r, lin.in_features, generator=g)
            b = 0.3 * torch.randn(lin.out_features, r, generator=g)
            key = f"base_model.model.model.layers.{i}.self_attn.{name}"
            lora[f"{key}.lora_A.weight"], lora[f"{key}.lora_B.weight"] = a, b
            with torch.no_grad():
                lin.weight += alpha / r * b @ a
    save_file(lora, str(adapter / "adapter_model.safetensors"))
    out = tmp_path / "merged.gguf"
    export_gguf(str(adapter), out, "f32")
    np.testing.assert_allclose(torch_logits(transformers_gguf_model(out)), torch_logits(model), atol=1e-4, rtol=0)


def test_trainer_workdir_exports_its_export_folder(tmp_path):
    _, model = make_tiny_decoder_dir(tmp_path / "run" / "export", "llama", tied=True)
    out = tmp_path / "run.gguf"
    export_gguf(str(tmp_path / "run"), out, "f32", name="my-sft")
    assert gguf.GGUFReader(str(out)).fields["general.name"].contents() == "my-sft"
    np.testing.assert_allclose(torch_logits(transformers_gguf_model(out)), torch_logits(model), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------------
# (c) the tokenizer in the file encodes as the source does


def _texts(n=300, seed=0):
    base = [
        "The capital of France is Paris.", "hello world", "Hello, World!  ", "  leading spaces", "trailing   ",
        "tabs\tand\t\ttabs", "new\nlines\n\n\nand\r\nCRLF", "don't I'll we've they're she'd", "1234567890",
        "3.14159 -42 1e-10 0x1F", "naïve café résumé Ærøskøbing", "日本語のテキストと漢字", "Ελληνικά και русский",
        "العربية עברית", "emoji 😀👍🏽 🇫🇷 family 👨‍👩‍👧", "ǅ ß ẞ ﬁ ℌ Ⅻ", "def f(x):\n    return x ** 2  # square",
        "for (int i = 0; i < 10; i++) { printf(\"%d\\n\", i); }", '{"key": [1, 2, {"a": null}]}',
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>", "a<|im_end|>b",
        "SELECT * FROM t WHERE x = 'y';", "    \n\t  \n", "", " ", "\u00a0nbsp\u2003em\u3000ideographic",
        "zero\u200bwidth", "https://example.com/path?q=1&r=2#frag", "C:\\Users\\name\\file.txt",
    ]
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x4E00, 0x4FFF), (0x1F300, 0x1F64F),
              (0x3040, 0x30FF), (0x600, 0x6FF)]
    out = list(base)
    while len(out) < n:
        if rng.random() < 0.5:
            out.append(rng.choice(" \n\t").join(rng.sample(base, 3)))
        else:
            lo, hi = rng.choice(ranges)
            out.append("".join(chr(rng.randint(lo, hi)) if rng.random() < 0.8 else rng.choice(" \n  ")
                               for _ in range(rng.randint(1, 40))))
    return out


def _vocab_only_gguf(tok_dir, path):
    """A GGUF holding just the tokenizer metadata that the exporter writes."""
    cfg = json.loads((tok_dir / "config.json").read_text())
    w = gguf.GGUFWriter(str(path), "llama")
    add_vocab(w, vocab_of(tok_dir, int(cfg["vocab_size"]), cfg))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _assert_same_ids(src_dir, gguf_path, nfc=False):
    """`nfc`: the source normalises to NFC, which GGUF cannot say (llama.cpp tokenises text as given), so the
    texts are given in NFC already."""
    ours = AutoTokenizer.from_pretrained(str(src_dir))
    theirs = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    texts = [unicodedata.normalize("NFC", t) for t in _texts()] if nfc else _texts()
    for text in texts:
        for special in (False, True):
            a = ours(text, add_special_tokens=special)["input_ids"]
            b = theirs(text, add_special_tokens=special)["input_ids"]
            assert a == b, (text, special)
    assert theirs.chat_template == ours.chat_template
    assert (theirs.bos_token_id, theirs.eos_token_id) == (ours.bos_token_id, ours.eos_token_id)
    return len(texts)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_tiny_tokenizer_encodes_as_the_source(tmp_path, kind):
    src, _ = make_tiny_decoder_dir(tmp_path / "src", kind)
    assert _assert_same_ids(src, _vocab_only_gguf(src, tmp_path / "vocab.gguf"), nfc=kind == "qwen2") >= 300


@pytest.mark.real_model
def test_smollm2_tokenizer_encodes_as_the_source_and_matches_llama_cpps_keys(tmp_path):
    from pathlib import Path

    from jaxrlhf import assets

    src = require_asset("smollm2")
    path = _vocab_only_gguf(Path(src), tmp_path / "smollm2_vocab.gguf")
    _assert_same_ids(src, path)
    # The same keys and values as the file llama.cpp's converter wrote, which the source was imported from,
    # but for the pre-tokenizer: the imported tokenizer.json splits with GPT-2's regex (transformers builds
    # it so from a "smollm" file), and the file says what the source does.
    ours, theirs = gguf.GGUFReader(str(path)).fields, gguf.GGUFReader(assets.asset_gguf_file("smollm2")).fields
    keys = {k for k in theirs if k.startswith("tokenizer.")}
    assert keys <= set(ours)
    for key in keys - {"tokenizer.ggml.pre"}:
        assert ours[key].contents() == theirs[key].contents(), key
    assert (ours["tokenizer.ggml.pre"].contents(), theirs["tokenizer.ggml.pre"].contents()) == ("gpt-2", "smollm")


# --------------------------------------------------------------------------------------------------
# (d) refusals: one line, before any weight is read


def _variant(tmp_path, name, edit=None, extra=None):
    src, _ = make_tiny_decoder_dir(tmp_path / "src", "llama")
    dst = tmp_path / name
    dst.mkdir()
    for f in src.iterdir():
        data = f.read_bytes()
        if f.name == "config.json" and edit:
            cfg = json.loads(data)
            edit(cfg)
            data = json.dumps(cfg).encode()
        (dst / f.name).write_bytes(data)
    for fname, text in (extra or {}).items():
        (dst / fname).write_text(text)
    return dst


def test_refusals_are_one_line(tmp_path):
    rm = _variant(tmp_path, "rm", lambda c: c.update(architectures=["LlamaForSequenceClassification"]))
    critic = _variant(tmp_path, "critic", extra={"reward_model.json": "{}"})
    encoder = _variant(tmp_path, "enc", lambda c: c.update(model_type="bert", architectures=["BertModel"]))
    gpt2 = _variant(tmp_path, "gpt2", lambda c: c.update(model_type="gpt2"))
    cases = [(rm, "f16", "is a reward model or critic (LlamaForSequenceClassification)"),
             (critic, "f16", "is a reward model or critic (reward_model.json)"),
             (encoder, "f16", "is a bert encoder"),
             (gpt2, "f16", "no GGUF tensor table for model_type 'gpt2'"),
             (tmp_path / "src", "q4_k", "unknown --type 'q4_k'; choose one of f32, f16")]
    for model, qtype, expected in cases:
        with pytest.raises(ValueError) as e:
            export_gguf(str(model), tmp_path / "x.gguf", qtype)
        assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "x.gguf").exists()


def test_tokenizers_llama_cpp_cannot_rebuild_are_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tests.helpers.models import make_tiny_llama_dir

    src = make_tiny_llama_dir(tmp_path / "wl")  # the word-level test tokenizer
    with pytest.raises(ValueError, match="tokenizer cannot be written to GGUF: WordLevel model"):
        export_gguf(str(src), tmp_path / "x.gguf", "f32")
    # A sentencepiece-style (Llama 2) BPE: Metaspace pieces, bytes as <0xNN> fallbacks.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}, "\u2581": 259, "a": 260}
    tk = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (src / f).unlink(missing_ok=True)
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(
        src)
    with pytest.raises(ValueError, match="byte-fallback BPE is sentencepiece-style"):
        export_gguf(str(src), tmp_path / "x.gguf", "f32")
    assert not (tmp_path / "x.gguf").exists()


def test_command_line(tmp_path):
    src, _ = make_tiny_decoder_dir(tmp_path / "src", "llama")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = lambda *args: subprocess.run([sys.executable, "-m", "jaxrlhf.export_gguf", *args], capture_output=True,
                                       text=True, env=env, timeout=300)
    ok = run(f"--model={src}", f"--out={tmp_path / 'cli.gguf'}", "--type=q8_0")
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stdout and "Q8_0" in ok.stdout and (tmp_path / "cli.gguf").is_file()
    bad = run(f"--model={src}", f"--out={tmp_path / 'bad.gguf'}", "--type=q3")
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2 and lines[-1].startswith("error: unknown --type 'q3'"), bad.stderr
    assert "Traceback" not in bad.stderr


# --------------------------------------------------------------------------------------------------
# (b) the real SmolLM2-135M-Instruct: quantised files still answer the France question


@pytest.fixture(scope="module")
def smollm2_hf(tmp_path_factory):
    from jaxrlhf import assets

    require_asset("smollm2")
    return convert_gguf_to_hf(assets.asset_gguf_file("smollm2"), tmp_path_factory.mktemp("smollm2_hf"))


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1"])
def test_smollm2_quantised_export_says_paris(smollm2_hf, tmp_path, qtype):
    from jaxrlhf.models.hub import from_pretrained, load_tokenizer
    from jaxrlhf.rl.sampling import SamplingConfig, chat_prompts, generate, left_pad

    out = tmp_path / f"smollm2.{qtype}.gguf"
    report = export_gguf(str(smollm2_hf), out, qtype)
    types = tensor_types(out)
    assert types["blk.0.attn_q.weight"] == qtype.upper() and types["token_embd.weight"] == "Q8_0"
    print(f"SmolLM2-135M {qtype}: {report.bytes} bytes ({report.bytes / 2**20:.1f} MiB), {report.tensor_types}")

    back = convert_gguf_to_hf(out, tmp_path / "back")
    lm = from_pretrained(str(back), "causal_lm")
    tok = load_tokenizer(back)
    ids, mask = left_pad(chat_prompts(tok, ["What is the capital of France?"]), tok.pad_token_id)
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.0, eos_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id)
    res = generate(lm.model, ids, mask, None, cfg)
    resp, resp_mask = np.asarray(res["response_ids_BxN"]), np.asarray(res["response_mask_BxN"])
    answer = tok.decode(resp[0][resp_mask[0] > 0], skip_special_tokens=True)
    assert "Paris" in answer, answer
