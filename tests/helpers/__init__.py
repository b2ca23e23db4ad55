"""Shared code of the test suite; test modules import from here, never from each other.

- `assets`: `require_asset`, the gate for tests that need a real model (MiniLM, SmolLM2).
- `tokenizers`: the tiny word-level decoder tokenizer (`WORDS`, `make_decoder_tokenizer`, `ids_of`).
- `models`: one tiny-config builder per family (`tiny_llama_config` for transformers' Llama-family
  configs, `tiny_llama_jax_config` for ours, `tiny_gpt2_config`, `tiny_bert_config`), keyword overrides
  for what a test needs different; `make_tiny_llama_dir`, a saved random Llama with the word-level tokenizer.
- `data`: files the trainers read (`write_jsonl`, `write_separable_pairs`, `write_prompts`, `read_hh_rows`).
- `runs`: tiny trainer configs and command lines (`tiny_rm_config`, `tiny_ppo_config`, `rm_cli_args`,
  `make_tiny_rm_export`, `complete_steps`).
- `processes`: starting `python -m tests.workers NAME ...` on fake CPU devices, one or several processes;
  `cpu_env`, the environment of any other subprocess on fake CPU devices (`JAX_PLATFORMS=cpu`).
- `mesh`: `FakeMesh`, a stand-in with only the `.shape` the sharding rules and planner read; `cpu_mesh`
  and `cpu_devices`, real ones on this process's CPU devices (not the accelerator's) for in-process tests.
- `gguf_files`: tiny random Llamas written as llama.cpp-style GGUF files.
- `malformed`: the malformed-input cases and their runner (tests/test_malformed_inputs.py and
  `python -m tests.tools.malformed_table`).

Fixtures (`decoder_tokenizer`, `minilm_dir`, `minilm_tokenizer`, `hh_rows`) live in tests/conftest.py.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
