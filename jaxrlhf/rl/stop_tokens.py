"""Which tokens end a response: one rule for PPO's rollouts, `compare` and every other sampler.

The stop set is the tokenizer's EOS, the `eos_token_id` of the model's config.json and of its
generation_config.json (chat models often list their end-of-turn token there), plus any extra stop
strings the user names, each of which must be a single token.
"""

from __future__ import annotations

import json
from pathlib import Path


def stop_token_ids(tokenizer, model_dir: str | Path | None = None, hf_config: dict | None = None,
                   extra: str = "") -> tuple[int, ...]:
    """Sorted stop ids. `extra`: comma-separated stop strings (e.g. "<|im_end|>,\\n\\nHuman")."""
    ids = {tokenizer.eos_token_id}
    gen_file = Path(model_dir) / "generation_config.json" if model_dir is not None else None
    for cfg in (hf_config or {}, json.loads(gen_file.read_text()) if gen_file and gen_file.is_file() else {}):
        value = cfg.get("eos_token_id")
        ids.update(value if isinstance(value, list) else [value])
    for text in filter(None, (s.strip() for s in extra.split(","))):
        token = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(token) != 1:
            raise ValueError(f"sampling.stop_tokens: {text!r} is {len(token)} tokens; a stop token must be one")
        ids.add(token[0])
    return tuple(sorted(int(i) for i in ids if i is not None))
