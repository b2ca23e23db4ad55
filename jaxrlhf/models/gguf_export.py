"""HF decoder directory -> llama.cpp GGUF file, through the `gguf` package's writer and quantisers.

    export_gguf("runs/sft/export", "sft.q8_0.gguf", "q8_0")    # python -m jaxrlhf.export_gguf does the same

The inverse of `models.gguf` (the importer), to llama.cpp's conventions:

- Tensor names come from a table per architecture (`ARCHS`, keyed by HF model_type): token_embd,
  blk.N.attn_q/k/v/output, ffn_gate/up/down, attn_norm, ffn_norm, output_norm, and output, left out when
  the embeddings are tied (llama.cpp then reuses token_embd). A family is added by adding its table.
- llama.cpp's "llama" graph rotates adjacent pairs (2i, 2i+1) where HF rotates halves, so its converter
  reorders the Q/K rows inside every head (`permute_qk`, the inverse of `gguf.unpermute_qk`). Qwen2 runs
  llama.cpp's NEOX rope, which rotates halves as HF does: no permutation there.
- 1-D tensors (norms, biases) stay F32, as llama.cpp keeps them. Block types (32 values per block) apply
  to matrices whose rows are a multiple of the block; any other matrix falls back to F16, as llama.cpp's
  converter does, and the report says so. Below 8 bits the output projection (token_embd when tied) is
  kept at Q8_0: llama.cpp's quantiser keeps it higher too (Q6_K, which gguf-py cannot write), since
  every logit goes through it.
- gguf 0.19 quantises in NumPy to F32, F16, BF16, Q8_0, Q5_0, Q5_1, Q4_0 and Q4_1 (its K-quants only
  dequantise), so those are the types offered.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
from pathlib import Path

import numpy as np

from jaxrlhf.models import gguf_source
from jaxrlhf.models.gguf_vocab import add_vocab, vocab_of

log = logging.getLogger(__name__)

# --type -> (GGML tensor type for matrices, general.file_type), by name so importing needs no `gguf`.
TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
         "q8_0": ("Q8_0", "MOSTLY_Q8_0"), "q5_0": ("Q5_0", "MOSTLY_Q5_0"), "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
         "q4_0": ("Q4_0", "MOSTLY_Q4_0"), "q4_1": ("Q4_1", "MOSTLY_Q4_1")}


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str      # general.architecture, and the prefix of the hyperparameter keys
    permute_qk: bool    # llama.cpp's rope rotates adjacent pairs for this graph: Q/K rows reordered
    blocks: dict        # HF module under model.layers.N -> llama.cpp name under blk.N
    globals: dict       # HF module outside the layers -> llama.cpp name


_GLOBALS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_LLAMA_BLOCKS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                 "post_attention_layernorm": "ffn_norm"}
_LLAMA = ArchSpec("llama", True, _LLAMA_BLOCKS, _GLOBALS)
ARCHS = {"llama": _LLAMA, "mistral": _LLAMA,  # llama.cpp runs Mistral (and SmolLM2) as "llama"
         "qwen2": ArchSpec("qwen2", False, _LLAMA_BLOCKS, _GLOBALS)}

_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_GLOBAL_RE = re.compile(r"^(.+)\.(weight|bias)$")


@dataclasses.dataclass
class ExportReport:
    path: Path
    type: str
    bytes: int
    tensor_types: dict[str, int]   # GGML type name -> tensors written in it
    notes: list[str]               # per-tensor fallbacks and what the format does not represent


def gguf_name(hf_name: str, arch: ArchSpec) -> str:
    """llama.cpp's name of an HF tensor ("model.layers.3.mlp.up_proj.weight" -> "blk.3.ffn_up.weight")."""
    m = _LAYER_RE.match(hf_name)
    if m and m.group(2) in arch.blocks:
        return f"blk.{int(m.group(1))}.{arch.blocks[m.group(2)]}.{m.group(3)}"
    m = _GLOBAL_RE.match(hf_name)
    if not _LAYER_RE.match(hf_name) and m and m.group(1) in arch.globals:
        return f"{arch.globals[m.group(1)]}.{m.group(2)}"
    raise ValueError(f"tensor {hf_name} has no {arch.gguf_arch} GGUF counterpart")


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF Q/K rows (weight [rows, in] or bias [rows]) -> llama.cpp's order: inside each head, HF rows i and
    i + head_dim/2 (the pair rope rotates together) become adjacent rows 2i and 2i+1."""
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"{rows} rows do not split into {n_heads} heads of even size")
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _pick_type(name: str, arr: np.ndarray, want: str, tied: bool, notes: list[str]) -> str:
    import gguf

    if arr.ndim < 2 or want == "F32":
        return "F32"
    if want in ("F16", "BF16"):
        return want
    is_output = name == "output.weight" or (tied and name == "token_embd.weight")
    if is_output and want != "Q8_0":
        notes.append(f"{name}: Q8_0 (the output projection stays at 8 bits, as llama.cpp keeps it)")
        want = "Q8_0"
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[want]][0]
    if arr.shape[-1] % block:
        notes.append(f"{name}: F16, not {want} (rows of {arr.shape[-1]} values are not a multiple of the "
                     f"{block}-value block)")
        return "F16"
    return want


def _hparams(w, cfg, name: str, file_type: str, notes: list[str]) -> None:
    import gguf

    w.add_name(name)
    w.add_type("model")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    if cfg.head_dim != cfg.hidden_size // cfg.num_attention_heads:
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)
    if getattr(cfg, "rope_type", "default") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_factor)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType[file_type])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if getattr(cfg, "sliding_window", None) is not None:
        notes.append(f"sliding window of {cfg.sliding_window} not represented: llama.cpp attends over the "
                     f"whole context (the same outputs up to {cfg.sliding_window} tokens)")


def _llama3_rope_freqs(cfg) -> np.ndarray:
    """llama.cpp's `rope_freqs` tensor for Llama-3 rope scaling: per frequency, the factor that divides it."""
    from jaxrlhf.models.llama import rope_inv_freq

    return (rope_inv_freq(dataclasses.replace(cfg, rope_type="default")) / rope_inv_freq(cfg)).astype(np.float32)


def _order(name: str):
    m = re.match(r"^blk\.(\d+)\.", name)
    return (1, int(m.group(1)), name) if m else (0 if name.startswith("token_embd") else 2, 0, name)


def gguf_tensors(source, arch: ArchSpec, want: str, notes: list[str]) -> list[tuple[str, np.ndarray, str]]:
    """(llama.cpp name, float32 array in llama.cpp's layout, GGML type) for every tensor, in file order.
    Consumes `source.tensors`, so a large model is held once, not twice."""
    cfg = source.config
    tied = "lm_head.weight" not in source.tensors
    out = []
    while source.tensors:
        hf, arr = source.tensors.popitem()
        name = gguf_name(hf, arch)
        if arch.permute_qk and ".attn_q." in name:
            arr = permute_qk(arr, cfg.num_attention_heads)
        elif arch.permute_qk and ".attn_k." in name:
            arr = permute_qk(arr, cfg.num_key_value_heads)
        out.append((name, np.ascontiguousarray(arr, np.float32), _pick_type(name, arr, want, tied, notes)))
    if getattr(cfg, "rope_type", "default") == "llama3":
        out.append(("rope_freqs.weight", _llama3_rope_freqs(cfg), "F32"))
    return sorted(out, key=lambda t: _order(t[0]))


def export_gguf(model: str, out: str | os.PathLike, qtype: str = "f16", *, name: str | None = None) -> ExportReport:
    """Writes the causal LM `model` (HF dir, trainer workdir, alias, PEFT adapter) to the GGUF file `out`.

    `qtype`: a key of TYPES. Raises ValueError (one line) for an unknown `qtype`, a reward model, critic or
    encoder, a family without a tensor table, or a tokenizer llama.cpp could not reproduce, all before any
    weight is read."""
    import gguf

    if qtype.lower() not in TYPES:
        raise ValueError(f"unknown --type {qtype!r}; choose one of {', '.join(TYPES)}")
    want, file_type = TYPES[qtype.lower()]
    out = Path(out).expanduser()
    if out.is_dir():
        raise ValueError(f"--out={out} is a directory; give a file name such as {out / 'model.gguf'}")
    model_dir, tok_dir, adapter, hf_config = gguf_source.describe(model, tuple(ARCHS))
    arch = ARCHS[hf_config["model_type"]]
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{model_dir}: hidden_act {hf_config['hidden_act']!r}; llama.cpp's {arch.gguf_arch} "
                         f"graph computes SiLU")
    vocab = vocab_of(tok_dir, int(hf_config["vocab_size"]), hf_config)
    source = gguf_source.load(model_dir, tok_dir, adapter, hf_config)

    notes: list[str] = list(vocab.notes)
    tensors = gguf_tensors(source, arch, want, notes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")  # renamed into place: a crash never leaves a half file
    try:
        w = gguf.GGUFWriter(str(tmp), arch.gguf_arch)
        named = (adapter or model_dir).resolve()
        label = name or hf_config.get("_gguf_name") or (named.parent if named.name == "export" else named).name
        _hparams(w, source.config, label, file_type, notes)
        add_vocab(w, vocab)
        for i, (tname, arr, qt) in enumerate(tensors):
            ggml = gguf.GGMLQuantizationType[qt]
            w.add_tensor(tname, gguf.quants.quantize(arr, ggml), raw_dtype=None if qt in ("F32", "F16") else ggml)
            tensors[i] = (tname, None, qt)  # the writer holds the converted copy; the float32 one can go
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    for note in notes:
        log.warning("%s: %s", out.name, note)
    counts = collections.Counter(qt for _, _, qt in tensors)
    return ExportReport(out, qtype.lower(), out.stat().st_size, dict(counts), notes)
