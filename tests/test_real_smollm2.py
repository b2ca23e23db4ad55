"""The real SmolLM2-135M-Instruct (converted from its GGUF by `jaxrlhf.assets`) against PyTorch `transformers`.

Both sides load the same HF directory (the dequantised weights), so they must agree to float32 noise;
and greedy decoding of the capital-of-France question must name Paris.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers.assets import require_asset

pytestmark = [pytest.mark.slow, pytest.mark.real_model]  # loads the real SmolLM2


@pytest.fixture(scope="module", autouse=True)
def smollm2_dir() -> Path:
    """The fetched SmolLM2 directory (in $JAXRLHF_CACHE or the default cache); skips every test here when
    it is not fetched (fails them under JAXRLHF_REQUIRE_ASSETS=1)."""
    return Path(require_asset("smollm2"))


QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def loaded():
    from jaxrlhf.models.hub import from_pretrained, load_tokenizer

    lm = from_pretrained("smollm2", "causal_lm")
    return lm, load_tokenizer(lm.model_dir)


def test_next_token_logits_match_transformers(loaded, smollm2_dir):
    import torch
    import transformers

    from jaxrlhf.rl.sampling import chat_prompts, left_pad

    lm, tok = loaded
    assert lm.model_dir.resolve() == smollm2_dir.resolve() and lm.family.__name__.endswith("llama")
    seqs = chat_prompts(tok, [QUESTION, "Write one short sentence about the sea."])
    ids, mask = left_pad(seqs, tok.pad_token_id)
    logits, _ = lm.model(ids, mask)
    logits = np.asarray(logits)

    torch.set_num_threads(2)
    ref = transformers.LlamaForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()
    worst = 0.0
    for row, s in enumerate(seqs):  # torch runs each prompt unpadded
        with torch.no_grad():
            theirs = ref(input_ids=torch.tensor([s])).logits[0].numpy()
        ours = logits[row, ids.shape[1] - len(s):]  # left-padded: the real tokens are at the end
        # the next-token logits (last position) and every earlier position
        assert ours[-1].argmax() == theirs[-1].argmax()
        worst = max(worst, float(np.abs(ours - theirs).max()))
    assert worst < 1e-3, worst
    print(f"max |jax - torch| logit difference: {worst:.2e}")


def test_greedy_generate_answers_paris(loaded):
    from jaxrlhf.rl.sampling import SamplingConfig, chat_prompts, generate, left_pad

    lm, tok = loaded
    # Batched with a longer prompt so the question row is left-padded.
    ids, mask = left_pad(chat_prompts(tok, [QUESTION, "Name three colours of the rainbow, please, in a list."]),
                         tok.pad_token_id)
    assert mask[0, 0] == 0
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.0, eos_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id)
    out = generate(lm.model, ids, mask, None, cfg)
    resp, resp_mask = np.asarray(out["response_ids_BxN"]), np.asarray(out["response_mask_BxN"])
    answer = tok.decode(resp[0][resp_mask[0] > 0], skip_special_tokens=True)
    assert "Paris" in answer, answer
