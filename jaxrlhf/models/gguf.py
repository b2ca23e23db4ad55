"""GGUF (llama.cpp) -> Hugging Face directory converter, Llama architecture.

    convert_gguf_to_hf("SmolLM2-135M-Instruct.Q4_1.gguf", "out/")

writes `config.json`, `generation_config.json`, `model.safetensors` (float32, dequantised) and the
tokenizer the file carries (`tokenizer.json`, `tokenizer_config.json`, chat template). The result is an
ordinary HF Llama directory: `transformers.LlamaForCausalLM.from_pretrained(out)` and the jaxrlhf weight
importer both load it.

Conventions that matter:

- ggml lists dimensions fastest-first, numpy slowest-first. `GGUFReader` already hands out the data in
  numpy order, so a linear weight comes back as `[out_features, in_features]`, the layout of a torch
  `nn.Linear.weight` (no transpose needed); the ggml `shape` field is the reverse of that.
- llama.cpp's HF->GGUF converter reorders the rows of `attn_q` / `attn_k` inside every head so that
  RoPE rotates adjacent pairs (2i, 2i+1) instead of HF's halves (i, i + head_dim/2). `unpermute_qk`
  undoes that; without it RoPE rotates the wrong coordinates and the model is garbage.
"""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("llama",)


class GGUFConversionError(ValueError):
    """A GGUF file this converter cannot turn into an HF directory (message names file and problem)."""


def _supported_types():
    from gguf import GGMLQuantizationType as T

    names = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
             "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
    return {getattr(T, n) for n in names if hasattr(T, n)}


# llama.cpp tensor name (without the ".weight"/".bias" suffix) -> HF Llama name.
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_GLOBAL_RE = re.compile(r"^(\w+)\.(weight|bias)$")


def hf_tensor_name(gguf_name: str) -> str | None:
    """HF Llama name of a llama.cpp tensor name, or None when the name is not a Llama tensor."""
    m = _BLOCK_RE.match(gguf_name)
    if m:
        layer, part, kind = m.groups()
        if part in _BLOCK_NAMES:
            return f"model.layers.{int(layer)}.{_BLOCK_NAMES[part]}.{kind}"
        return None
    m = _GLOBAL_RE.match(gguf_name)
    if m and m.group(1) in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    return None


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row interleaving of a Q or K projection (weight [rows, in] or bias [rows]).

    In the GGUF layout, row 2*i + j of a head (j in {0, 1}) holds HF row j * head_dim/2 + i of the same
    head. Viewing each head's rows as [head_dim/2, 2] and transposing to [2, head_dim/2] restores HF.
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"{rows} rows do not split into {n_heads} heads of even size")
    half = rows // n_heads // 2
    tail = w.shape[1:]
    return w.reshape(n_heads, half, 2, *tail).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _f32(v) -> float:
    """Shortest decimal that round-trips the float32 stored in the file (9.9999997e-06 -> 1e-05)."""
    return float(str(np.float32(v)))


def _fail(path, msg):
    raise GGUFConversionError(f"{path}: {msg}")


def llama_config_from_gguf(reader, path="<gguf>", has_output=False, has_bias=False) -> dict:
    """HF `config.json` contents (a dict) built from the `llama.*` and `tokenizer.ggml.*` metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        _fail(path, f"unsupported architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")

    def need(key):
        v = _field(reader, f"{arch}.{key}")
        if v is None:
            _fail(path, f"missing metadata key {arch}.{key}")
        return v

    hidden = int(need("embedding_length"))
    n_heads = int(need("attention.head_count"))
    n_kv = int(_field(reader, f"{arch}.attention.head_count_kv", n_heads))
    head_dim = int(_field(reader, f"{arch}.attention.key_length", hidden // n_heads))
    rope_dim = _field(reader, f"{arch}.rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != head_dim:
        _fail(path, f"partial rotary embedding (rope.dimension_count={rope_dim}, head_dim={head_dim}) "
                    "is not supported")
    vocab = _field(reader, f"{arch}.vocab_size")
    if vocab is None:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        if tokens is not None:
            vocab = len(tokens.data)
        else:
            emb = [t for t in reader.tensors if t.name == "token_embd.weight"]
            if not emb:
                _fail(path, "no vocab size in the metadata and no token_embd.weight tensor")
            vocab = int(emb[0].shape[-1])
    rope_theta = _f32(_field(reader, f"{arch}.rope.freq_base", 10000.0))

    rope_scaling = None
    scaling_type = _field(reader, f"{arch}.rope.scaling.type")
    if scaling_type not in (None, "none"):
        if scaling_type != "linear":
            _fail(path, f"unsupported rope scaling {scaling_type!r}")
        rope_scaling = {"rope_type": "linear",
                        "factor": _f32(need("rope.scaling.factor"))}

    def tok_id(key):
        v = _field(reader, f"tokenizer.ggml.{key}")
        return None if v is None else int(v)

    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(_field(reader, f"{arch}.context_length", 2048)),
        "rms_norm_eps": _f32(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "rope_parameters": dict(rope_scaling or {"rope_type": "default"}, rope_theta=rope_theta),
        "attention_bias": bool(has_bias),
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "tie_word_embeddings": not has_output,
        "bos_token_id": tok_id("bos_token_id"),
        "eos_token_id": tok_id("eos_token_id"),
        "pad_token_id": tok_id("padding_token_id"),
        "torch_dtype": "float32",
    }
    name = _field(reader, "general.name")
    if name:
        cfg["_gguf_name"] = str(name)
    return cfg


def dequantize_tensor(tensor, path="<gguf>") -> np.ndarray:
    """Float32 numpy array of a `GGUFReader` tensor, in numpy (HF) dimension order."""
    import gguf

    qtype = tensor.tensor_type
    if qtype not in _supported_types():
        _fail(path, f"tensor {tensor.name} has unsupported type {qtype.name}")
    try:
        out = gguf.quants.dequantize(np.asarray(tensor.data), qtype)
    except NotImplementedError as e:
        _fail(path, f"tensor {tensor.name} has unsupported type {qtype.name} ({e})")
    expected = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    out = np.ascontiguousarray(out, dtype=np.float32)
    if out.shape != expected:
        out = out.reshape(expected)
    return out


def _check_config_shapes(path, cfg, weights):
    h, hd = cfg["hidden_size"], cfg["head_dim"]
    expect = {
        "model.embed_tokens.weight": (cfg["vocab_size"], h),
        "model.norm.weight": (h,),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        expect.update({
            p + "self_attn.q_proj.weight": (cfg["num_attention_heads"] * hd, h),
            p + "self_attn.k_proj.weight": (cfg["num_key_value_heads"] * hd, h),
            p + "self_attn.v_proj.weight": (cfg["num_key_value_heads"] * hd, h),
            p + "self_attn.o_proj.weight": (h, cfg["num_attention_heads"] * hd),
            p + "mlp.gate_proj.weight": (cfg["intermediate_size"], h),
            p + "mlp.up_proj.weight": (cfg["intermediate_size"], h),
            p + "mlp.down_proj.weight": (h, cfg["intermediate_size"]),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        })
    for name, shape in expect.items():
        if name not in weights:
            _fail(path, f"missing tensor for {name}")
        if weights[name].shape != shape:
            _fail(path, f"{name} has shape {weights[name].shape}, config implies {shape}")
    if not cfg["tie_word_embeddings"] and weights["lm_head.weight"].shape != (cfg["vocab_size"], h):
        _fail(path, f"lm_head.weight has shape {weights['lm_head.weight'].shape}")


def _save_tokenizer(path, reader, out_dir):
    """Converts the tokenizer stored in the GGUF metadata and saves it into out_dir (True if done)."""
    if reader.fields.get("tokenizer.ggml.model") is None:
        log.warning("%s carries no tokenizer; writing weights and config only", path)
        return False
    from transformers import AutoTokenizer

    directory, fname = os.path.split(os.path.abspath(path))
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=fname)
    template = _field(reader, "tokenizer.chat_template")
    if template:
        tok.chat_template = str(template)
    tok.save_pretrained(out_dir)
    # transformers 5 records its own backend class name; the generic fast-tokenizer name loads in
    # transformers 4 and 5 alike.
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        tcfg = json.load(f)
    tcfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    ctx = _field(reader, f"{_field(reader, 'general.architecture')}.context_length")
    if ctx is not None:
        tcfg["model_max_length"] = int(ctx)
    for key in ("is_local", "local_files_only"):
        tcfg.pop(key, None)
    with open(cfg_path, "w") as f:
        json.dump(tcfg, f, indent=2, ensure_ascii=False)
    return True


def convert_gguf_to_hf(gguf_path: str, out_dir: str, *, tokenizer: bool = True) -> str:
    """Converts a Llama GGUF file into an HF directory (float32 safetensors). Returns out_dir.

    Raises GGUFConversionError (naming the file) for unsupported architectures, tensor types or tensors.
    """
    import gguf
    from safetensors.numpy import save_file

    gguf_path = os.fspath(gguf_path)
    if not os.path.isfile(gguf_path):
        raise FileNotFoundError(f"{gguf_path}: no such GGUF file")
    try:
        reader = gguf.GGUFReader(gguf_path)
    except Exception as e:  # noqa: BLE001 -- any parse failure is "not a readable GGUF"
        _fail(gguf_path, f"not a readable GGUF file ({type(e).__name__}: {e})")

    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        _fail(gguf_path, f"unsupported architecture {arch!r} "
                         f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    names = {t.name for t in reader.tensors}
    for name in sorted(names):
        if hf_tensor_name(name) is None:
            _fail(gguf_path, f"tensor {name} has no Llama counterpart (unsupported variant)")
    has_output = "output.weight" in names
    has_bias = any(n.endswith(".bias") for n in names)
    cfg = llama_config_from_gguf(reader, gguf_path, has_output=has_output, has_bias=has_bias)

    weights = {}
    for t in reader.tensors:
        hf = hf_tensor_name(t.name)
        w = dequantize_tensor(t, gguf_path)
        if ".self_attn.q_proj." in hf:
            w = unpermute_qk(w, cfg["num_attention_heads"])
        elif ".self_attn.k_proj." in hf:
            w = unpermute_qk(w, cfg["num_key_value_heads"])
        weights[hf] = w
    _check_config_shapes(gguf_path, cfg, weights)

    os.makedirs(out_dir, exist_ok=True)
    st_path = os.path.join(out_dir, "model.safetensors")
    save_file(weights, st_path, metadata={"format": "pt"})
    os.chmod(st_path, 0o644)  # safetensors creates it owner-only; caches are shared
    del weights
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg[k] is not None}
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
    if tokenizer:
        _save_tokenizer(gguf_path, reader, out_dir)
    return out_dir
