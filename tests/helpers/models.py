"""One tiny-config builder per model family, and a saved tiny Llama.

Each builder starts from one small shape and takes keyword overrides, so a test names only what it needs
different (a vocabulary, a head_dim, tied embeddings, a sliding window). Building the config is cheap;
weights are drawn by the caller (`transformers` model classes, or `registry.build_model`).
"""

from __future__ import annotations

from pathlib import Path

# Shared by the transformers LlamaConfig and our llama.Config: 2 layers, 4 heads of 8, 2 KV heads.
TINY_LLAMA = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=0)
TINY_GPT2 = dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0)
TINY_BERT = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=64)
# The special-token ids each encoder kind uses unless told otherwise (transformers' own defaults).
_BERT_IDS = {"bert": dict(pad_token_id=0), "roberta": dict(pad_token_id=1, bos_token_id=0, eos_token_id=2)}


def tiny_llama_config(config_class=None, **overrides):
    """A `transformers` Llama-family config (LlamaConfig unless `config_class`, e.g. MistralConfig)."""
    import transformers

    return (config_class or transformers.LlamaConfig)(**{**TINY_LLAMA, **overrides})


def tiny_llama_jax_config(**overrides):
    """The same shape as our `jaxrlhf.models.llama.Config` (head_dim = hidden / heads unless given)."""
    from jaxrlhf.models import llama

    kw = {**TINY_LLAMA, **overrides}
    kw.setdefault("head_dim", kw["hidden_size"] // kw["num_attention_heads"])
    return llama.Config(**kw)


def tiny_gpt2_config(**overrides):
    import transformers

    return transformers.GPT2Config(**{**TINY_GPT2, **overrides})


def tiny_bert_config(kind: str = "bert", **overrides):
    """A `transformers` BertConfig (kind "bert") or RobertaConfig (kind "roberta")."""
    import transformers

    cls = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig}[kind]
    return cls(**{**TINY_BERT, **_BERT_IDS[kind], **overrides})


def tiny_llama_dir_config(tokenizer=None, **overrides):
    """The config `make_tiny_llama_dir` saves: the tiny Llama sized to the word-level tokenizer, tied."""
    from tests.helpers.tokenizers import make_decoder_tokenizer

    tok = tokenizer or make_decoder_tokenizer()
    return tiny_llama_config(**{**dict(vocab_size=len(tok), max_position_embeddings=128,
                                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id, tie_word_embeddings=True), **overrides})


def make_tiny_llama_dir(path: Path, seed: int = 0, **overrides) -> Path:
    """A random Llama (torch seed `seed`) and the word-level tokenizer saved as an HF directory."""
    import torch
    import transformers

    from tests.helpers.tokenizers import make_decoder_tokenizer

    tok = make_decoder_tokenizer()
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(tiny_llama_dir_config(tok, **overrides)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def perturb_weights(model, seed: int = 0):
    """`model` with random weights large enough that rows and decode steps differ (not one degenerate token
    everywhere): norm scales 1 + 0.2 N(0, 1), every other parameter 0.3 N(0, 1). In place; returns it."""
    import jax
    from flax import nnx

    flat = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    keys = iter(jax.random.split(jax.random.key(seed + 100), len(flat)))
    new = []
    for path, v in flat:
        noise = jax.random.normal(next(keys), v.get_value().shape, v.get_value().dtype)
        new.append((path, v.replace(1.0 + 0.2 * noise if path[-1] == "scale" else 0.3 * noise)))
    nnx.update(model, nnx.from_flat_state(new))
    return model


def tiny_decoder(name: str, vocab_size: int = 101, pad_token_id: int = 0, scan_layers: bool = True, seed: int = 0):
    """A randomly initialised, perturbed causal LM of our own code: "gpt2", "llama" (GQA), "mistral" (a
    3-token sliding window on every layer) or "qwen2" (qkv bias, the window on its second layer only)."""
    from flax import nnx

    from jaxrlhf.models import gpt2, llama, registry

    if name == "gpt2":
        family, cfg = gpt2, gpt2.Config(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                                        intermediate_size=64, max_positions=64, pad_token_id=pad_token_id)
    else:
        window = dict(llama=dict(), mistral=dict(model_type="mistral", sliding_window=3, sliding_layers=(True, True)),
                      qwen2=dict(model_type="qwen2", qkv_bias=True, sliding_window=3,
                                 sliding_layers=(False, True)))[name]
        family, cfg = llama, tiny_llama_jax_config(vocab_size=vocab_size, head_dim=8, max_position_embeddings=128,
                                                   **window)
    model = registry.build_model(family, cfg, "causal_lm", rngs=nnx.Rngs(seed), scan_layers=scan_layers)
    return perturb_weights(model, seed)


def torch_response_logp(model_dir, seq, response_len: int) -> float:
    """PyTorch's float64 sum of log p(token) over the last `response_len` tokens of one unpadded sequence."""
    import torch
    import transformers

    tm = transformers.AutoModelForCausalLM.from_pretrained(model_dir).double().eval()
    with torch.no_grad():
        logp = torch.log_softmax(tm(torch.as_tensor(seq[None], dtype=torch.long)).logits[0], -1).numpy()
    T = len(seq)
    return float(sum(logp[t - 1, seq[t]] for t in range(T - response_len, T)))
