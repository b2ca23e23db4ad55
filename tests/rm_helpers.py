"""Tiny models and data for trainer tests: a random Llama with a word-level tokenizer, separable pairs."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_data_fixtures import WORDS, make_decoder_tokenizer


def make_tiny_llama_dir(path: Path, seed: int = 0) -> Path:
    import torch
    import transformers

    tok = make_decoder_tokenizer()
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                   eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_separable_pairs(path: Path, n: int, seed: int = 0) -> Path:
    """Pairs whose chosen response says "good" and rejected says "bad"; everything else is random words."""
    import random

    rng = random.Random(seed)
    filler = [w for w in WORDS if w not in ("good", "bad")]
    with open(path, "w") as f:
        for i in range(n):
            prompt = " ".join(rng.choice(filler) for _ in range(rng.randint(2, 6)))
            body = [rng.choice(filler) for _ in range(rng.randint(1, 5))]
            pos = rng.randint(0, len(body))
            chosen = " ".join(body[:pos] + ["good"] + body[pos:])
            rejected = " ".join(body[:pos] + ["bad"] + body[pos:])
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    return path


def tiny_rm_config(model_dir: Path, data_file: Path, workdir: Path):
    from jaxrlhf.configs_base import rm_defaults

    config = rm_defaults()
    config.workdir = str(workdir)
    config.model.name = str(model_dir)
    config.data.source = str(data_file)
    config.data.eval_size = 16
    config.data.max_length = 32
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.data.pad_to_multiple = 16
    config.optim.learning_rate = 3e-3
    config.optim.warmup_steps = 2
    config.train.epochs = 4
    config.train.log_every = 5
    config.train.checkpoint_every = 5
    config.train.export = False
    config.train.histogram = False
    return config
