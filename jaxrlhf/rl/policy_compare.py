"""Two policies answer the same prompts; optionally a reward model judges them.

    prompts = read_prompts("prompts.jsonl", limit=50)
    texts_a, lengths_a = generate_responses("workdir/sft", prompts, GenerationSettings())
    rewards_a = reward_model_scores("workdir/rm/export", prompts, texts_a)

A prompts file is jsonl with `prompt` (a string or a message list) or HH-RLHF `chosen` (and `rejected`)
dialogues, or plain text, one prompt per line, in which a literal backslash-n stands for a newline (as in
jaxrlhf.score): the rows PPO reads (`jaxrlhf.data.prompts`). Each policy sees them as PPO renders them
(its chat template when it has one and `chat` is on, else the text with its tokenizer's specials), and
stops on the tokens PPO stops on (`rl.stop_tokens`); the reward model reads them as PPO's scorer does.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxrlhf.data.errors import RowInvalid
from jaxrlhf.data.prompts import Prompt, prompt_of_row, prompt_of_text
from jaxrlhf.rl.prompts import render_for_policy
from jaxrlhf.rl.sampling import SamplingConfig, generate, left_pad
from jaxrlhf.rl.stop_tokens import stop_token_ids

_MIN_PROMPT_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # <= 0: off
    seed: int = 0
    batch_size: int = 8
    chat: bool = True
    max_prompt_length: int = 512  # longer prompts keep their end

    def __post_init__(self):
        if self.batch_size < 1 or self.max_prompt_length < 1:
            raise ValueError(f"batch_size and max_prompt_length must be >= 1, got {self.batch_size} and "
                             f"{self.max_prompt_length}")
        self.sampling_config()  # checks max_new_tokens, temperature and top_p before any model loads

    def sampling_config(self, eos_ids: tuple[int, ...] = (), pad_id: int = 0) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, eos_ids=eos_ids, pad_id=pad_id)


def read_prompts(path: str | Path, limit: int = 0) -> list[Prompt]:
    """The prompts of a jsonl or plain-text file (gz ok), the first `limit` of them if limit > 0."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: prompts file not found")
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as f:
        lines = [(n, line.rstrip("\n")) for n, line in enumerate(f, 1) if line.strip()]
    is_jsonl = bool(lines) and lines[0][1].lstrip().startswith("{")
    prompts = []
    for n, line in lines[:limit] if limit > 0 else lines:
        try:
            prompts.append(prompt_of_row(json.loads(line)) if is_jsonl else prompt_of_text(line.replace("\\n", "\n")))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n}: invalid JSON ({e})") from None
        except RowInvalid as e:
            field = f"field {e.field!r}: " if e.field else ""
            raise ValueError(f"{path}: line {n}: {field}{e.message()}") from None
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def prompt_token_ids(tokenizer, prompts: list[Prompt], chat: bool, max_length: int) -> list[list[int]]:
    """Token ids each policy sees: PPO's rendering (`rl.prompts.render_for_policy`: the chat template where
    there is one and `chat` is on), so a PPO policy is compared on the prompt format it was trained on; the
    end kept if too long."""
    return [ids[-max_length:] for ids in render_for_policy(tokenizer, prompts, use_chat_template=chat)]


def prompt_bucket(longest: int, cap: int) -> int:
    """Padded prompt length: a power of two (at least 16), at most `cap`, so jit sees few shapes."""
    return min(cap, max(_MIN_PROMPT_BUCKET, 1 << (longest - 1).bit_length()))


def generate_responses(model_path: str, prompts: list[Prompt],
                       settings: GenerationSettings) -> tuple[list[str], np.ndarray]:
    """(response texts, generated token counts with EOS) of one causal-LM policy, in prompt order."""
    texts, lengths = generate_groups(model_path, prompts, settings, k=1)
    return [group[0] for group in texts], lengths[:, 0]


def generate_groups(model_path: str, prompts: list[Prompt], settings: GenerationSettings,
                    k: int = 1) -> tuple[list[list[str]], np.ndarray]:
    """(k response texts per prompt, generated token counts with EOS [n, k]) of one causal-LM policy, in prompt
    order; a prompt's k samples share its prefill (`sampling.generate(group_size=k)`).

    Prompts are sorted by length so a batch pads little; every batch has the same number of rows
    (filler rows repeat a real prompt) and a power-of-two prompt length.
    """
    from jaxrlhf.models.hub import from_pretrained, load_tokenizer

    if k < 1:
        raise ValueError(f"k={k}: responses per prompt must be >= 1")
    loaded = from_pretrained(model_path, "causal_lm")
    tokenizer = load_tokenizer(loaded.model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cfg = settings.sampling_config(stop_token_ids(tokenizer, loaded.model_dir, loaded.hf_config), pad_id)
    token_ids = prompt_token_ids(tokenizer, prompts, settings.chat, settings.max_prompt_length)
    rows = min(settings.batch_size, 1 << (len(prompts) - 1).bit_length())
    order = np.argsort([len(ids) for ids in token_ids], kind="stable")
    model = nnx.split(loaded.model)
    texts, lengths_NxK = [[""] * k for _ in prompts], np.zeros((len(prompts), k), np.int64)
    for batch_index, start in enumerate(range(0, len(order), rows)):
        members = order[start:start + rows]
        batch = [token_ids[i] for i in members]
        batch += [batch[0]] * (rows - len(batch))  # filler rows: every batch has the same shape
        ids_BxP, mask_BxP = left_pad(batch, pad_id, prompt_bucket(max(map(len, batch)), settings.max_prompt_length))
        rng = jax.random.fold_in(jax.random.key(settings.seed), batch_index)
        out = generate(model, ids_BxP, mask_BxP, rng, cfg, group_size=k)
        ids_RxN, mask_RxN = np.asarray(out["response_ids_BxN"]), np.asarray(out["response_mask_BxN"])
        for row, i in enumerate(members):
            for j in range(k):
                r = row * k + j
                texts[i][j] = tokenizer.decode(ids_RxN[r][mask_RxN[r] > 0], skip_special_tokens=True)
                lengths_NxK[i, j] = mask_RxN[r].sum()
    return texts, lengths_NxK


def reward_model_scores(rm_path: str, prompts: list[Prompt], responses: list[str], max_length: int = 512,
                        batch_size: int = 16) -> np.ndarray:
    """float32 rewards of generated responses, fed to the RM as PPO's scorer feeds it (`rm.scoring`)."""
    from jaxrlhf.rm.load import load_trained_rm

    return load_trained_rm(rm_path).scorer(max_length, batch_size).score_texts(prompts, responses)


def win_rate(rewards_a: np.ndarray, rewards_b: np.ndarray) -> float:
    """Share of prompts where B's reward beats A's; an exact tie counts half."""
    a, b = np.asarray(rewards_a, np.float64), np.asarray(rewards_b, np.float64)
    return float(np.mean((b > a) + 0.5 * (b == a)))


def check_model_dir(path: str) -> Path:
    """Fails fast (before any generation) on a policy path that is no model directory or alias."""
    from jaxrlhf.models.hf_files import read_config, resolve_model_dir

    model_dir = resolve_model_dir(path)
    read_config(model_dir)
    return model_dir


def run_comparison(policy_a: str, policy_b: str, prompts_path: str, out_dir: str, rm_path: str | None = None,
                   settings: GenerationSettings = GenerationSettings(), limit: int = 0,
                   rm_max_length: int = 512) -> dict:
    """Generates with A and B, writes the blind test into out_dir and returns the summary.

    Summary: n, mean_length_a/b (generated tokens, EOS included, each in its policy's tokenizer) and,
    with a reward model, mean_reward_a/b and rm_win_rate_b (B's reward above A's; ties count half).
    """
    from jaxrlhf.rl.blind_ab import blind_labels, write_blind_ab

    prompts = read_prompts(prompts_path, limit)
    dirs = [str(check_model_dir(p)) for p in (policy_a, policy_b)]
    if rm_path is not None and not Path(rm_path).expanduser().exists():
        raise ValueError(f"{rm_path}: reward model not found")
    texts_a, lengths_a = generate_responses(policy_a, prompts, settings)
    texts_b, lengths_b = generate_responses(policy_b, prompts, settings)
    summary = {"n": len(prompts)}
    per_item = {"length_a": lengths_a.tolist(), "length_b": lengths_b.tolist()}
    if rm_path is not None:
        rewards = reward_model_scores(rm_path, prompts * 2, texts_a + texts_b, rm_max_length)
        rewards_a, rewards_b = rewards[:len(prompts)], rewards[len(prompts):]
        per_item.update(reward_a=rewards_a.tolist(), reward_b=rewards_b.tolist())
        summary.update(rm_win_rate_b=win_rate(rewards_a, rewards_b), mean_reward_a=float(rewards_a.mean()),
                       mean_reward_b=float(rewards_b.mean()))
    summary.update(mean_length_a=float(lengths_a.mean()), mean_length_b=float(lengths_b.mean()))
    meta = {"a": policy_a, "b": policy_b, "a_dir": dirs[0], "b_dir": dirs[1], "rm": rm_path,
            "prompts": str(prompts_path), "settings": dataclasses.asdict(settings), "summary": summary}
    write_blind_ab(out_dir, [p.text for p in prompts], texts_a, texts_b, blind_labels(len(prompts), settings.seed),
                     meta, per_item)
    return summary
