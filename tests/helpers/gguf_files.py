"""Tiny random Llamas written as llama.cpp-style GGUF files (the converter's tests and the asset fetcher's)."""

from __future__ import annotations

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as QT
from transformers import LlamaForCausalLM

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


def llama_cpp_permute(w, n_head):
    """What llama.cpp's HF->GGUF converter does to q_proj/k_proj rows (written from its description)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def _byte_tokens():
    """GPT-2 byte-level alphabet: printable Latin-1 bytes stand for themselves, the others are shifted
    to code points 256, 257, ... in byte order (so b' ' -> 'Ġ', b'\\n' -> 'Ċ')."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, shift = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + shift))
            shift += 1
    assert out[ord(" ")] == "Ġ" and out[ord("\n")] == "Ċ"
    return out


def tiny_vocab():
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + _byte_tokens()
    merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"]
    for m in merges:
        tokens.append(m.replace(" ", ""))
    types = [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (len(tokens) - 3)
    return tokens, merges, types


def tiny_config(vocab_size, tied):
    from tests.helpers.models import tiny_llama_config

    return tiny_llama_config(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, head_dim=16,
                             max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
                             tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def write_tiny_gguf(path, model, qtype, embed_qtype=None):
    """Writes `model` (transformers Llama) as a llama.cpp-style GGUF; returns {hf_name: array written}."""
    cfg = model.config
    tokens, merges, types = tiny_vocab()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}

    def put(name, arr, q):
        if q in (QT.F32, QT.F16):
            w.add_tensor(name, gguf.quants.quantize(arr, q))
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, q), raw_dtype=q)

    put("token_embd.weight", sd["model.embed_tokens.weight"], embed_qtype or qtype)
    put("output_norm.weight", sd["model.norm.weight"], QT.F32)
    if not cfg.tie_word_embeddings:
        put("output.weight", sd["lm_head.weight"], qtype)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"], QT.F32)
        put(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"], QT.F32)
        put(f"blk.{i}.attn_q.weight",
            llama_cpp_permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads), qtype)
        put(f"blk.{i}.attn_k.weight",
            llama_cpp_permute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads), qtype)
        put(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"], qtype)
        put(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"], qtype)
        put(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"], qtype)
        put(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"], qtype)
        put(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"], qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sd


def make_tiny(tied, seed=0):
    torch.manual_seed(seed)
    tokens, _, _ = tiny_vocab()
    model = LlamaForCausalLM(tiny_config(len(tokens), tied)).float().eval()
    with torch.no_grad():  # norms away from 1 so a dropped/misplaced norm shows
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model


# --------------------------------------------------------------------------------------------------
# HF directories with a byte-level BPE tokenizer (what the GGUF exporter needs to write a vocabulary)

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_bpe_tokenizer(split: str = "gpt2"):
    """The tiny byte-level BPE of `tiny_vocab` as a transformers fast tokenizer (ChatML, no BOS added).

    `split`: "gpt2" (ByteLevel with GPT-2's regex, as SmolLM2's) or "qwen2" (NFC + Qwen2's split regex)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens, merges, _ = tiny_vocab()
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [tuple(m.split(" ")) for m in merges]))
    if split == "gpt2":
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tk.normalizer = normalizers.NFC()
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_tiny_decoder_dir(path, kind: str = "llama", tied: bool = True, seed: int = 0, **overrides):
    """A random transformers Llama, Mistral or Qwen2 (norms and biases away from their init, so a dropped or misplaced
    one shows) saved with `byte_bpe_tokenizer` as an HF directory. Returns (path, model)."""
    import transformers

    tok = byte_bpe_tokenizer("qwen2" if kind == "qwen2" else "gpt2")
    cfg = dict(tiny_config(len(tok), tied).to_dict(), **overrides)
    cls = {"llama": (transformers.LlamaConfig, LlamaForCausalLM),
           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[kind]
    for key in ("architectures", "model_type", "transformers_version"):
        cfg.pop(key, None)
    torch.manual_seed(seed)
    model = cls[1](cls[0](**cfg)).float().eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.copy_(0.5 * torch.randn_like(p))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model
