"""How a trained reward model reads a response: the one scorer behind eval_rm, score, compare and PPO.

A reward model is right only on inputs shaped like its training data, so training records that shape in
`reward_model.json` (beside the exported weights and in the workdir) and every consumer scores through
`RewardScorer`, which rebuilds it:

- `prompt_format`: "text", the prompt string the data gave (HH's "\\n\\nHuman: ...\\n\\nAssistant:"), or
  "chat", the conversation rendered with the reward model's own chat template (chat-format data);
- `response_prefix`: what joined prompt and response in the data (" " after HH's "Assistant:");
- `append_eos`: whether an EOS closed each sequence (decoders read the reward there);
- `length_normalise`: rewards divided by the response's token count (`loss.length_normalise`).

A policy's prompts are never fed in the policy's own chat rendering: the reward model sees `prompt.text`
(or its messages through its own template) followed by the decoded response, whatever the tokenizers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from jaxrlhf.data.batching import backend_multiple, pad_rows
from jaxrlhf.data.chat import ChatRenderer
from jaxrlhf.data.prompts import Prompt
from jaxrlhf.data.tokenize import Encoded, TextEncoder
from jaxrlhf.infra.multihost import to_global
from jaxrlhf.rm.step import make_reward_fn

SPEC_FILE = "reward_model.json"
PROMPT_FORMATS = ("text", "chat")


@dataclasses.dataclass(frozen=True)
class ScoringSpec:
    prompt_format: str = "text"
    response_prefix: str = " "
    append_eos: bool = True           # for decoders; encoders never get one
    length_normalise: bool = False
    objective: str = "pairs"
    data_format: str = ""             # what the training rows were (hh, pairs, chat, ranked, ratings)

    def __post_init__(self):
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}")

    @classmethod
    def of_training(cls, config, data, is_decoder: bool) -> ScoringSpec:
        """What train_rm's config and its prepared data (`rm.data.RMData`) say about the inputs the model
        learned from."""
        report = data.report
        return cls(prompt_format="chat" if report.format == "chat" else "text",
                   response_prefix=report.response_prefix, append_eos=bool(config.data.append_eos) and is_decoder,
                   length_normalise=bool(config.loss.length_normalise), data_format=report.format,
                   objective=data.objective)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def read(cls, directory: Path, is_decoder: bool) -> ScoringSpec:
        """The spec saved in `directory`; a model exported before it existed (or not by jaxrlhf) is read as
        HH-style text with raw rewards, as every consumer read it then."""
        path = Path(directory) / SPEC_FILE
        if not path.is_file():
            return cls(append_eos=is_decoder)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})


class RewardScorer:
    """A frozen reward model and its spec behind `encode` (inputs as in training) and `score`.

    score_texts(prompts, responses) -> float32 numpy rewards, in order (one process, any batch size);
    score_global(prompts, responses, mesh) -> this process's rows scored as part of a global batch (PPO).
    """

    def __init__(self, model: nnx.Module, tokenizer, spec: ScoringSpec, *, is_decoder: bool, max_length: int = 512,
                 batch_size: int = 16, pad_to_multiple: int = 32):
        self.spec, self.tokenizer = spec, tokenizer
        self.encoder = TextEncoder(tokenizer, max_length, append_eos=spec.append_eos and is_decoder)
        self.renderer = ChatRenderer(tokenizer) if spec.prompt_format == "chat" else None
        self.pad_id = self.encoder.special.pad_id
        self.batch_size, self.multiple = batch_size, backend_multiple(pad_to_multiple)
        graphdef, self._state = nnx.split(model)
        reward_fn = jax.jit(make_reward_fn(graphdef, spec.length_normalise))
        self._forward = lambda ids, mask, length: reward_fn(self._state, nnx.State({}), ids, mask, length)

    def render(self, prompt: Prompt, response: str) -> tuple[str, str]:
        """(prompt text, response text) as the reward model saw such pairs in training."""
        if self.renderer is not None:
            messages = list(prompt.messages)
            return (self.renderer.prompt(messages),
                    self.renderer.response(messages, ("assistant", response.strip()), "response"))
        return prompt.text, self.spec.response_prefix + response.strip()

    def encode(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Encoded:
        texts = [self.render(p, r) for p, r in zip(prompts, responses, strict=True)]
        return self.encoder.encode([p for p, _ in texts], [r for _, r in texts])

    def encode_raw(self, prompts: Sequence[str], responses: Sequence[str]) -> Encoded:
        """Texts already in the training format (jaxrlhf.score's input), tokenised as they are."""
        return self.encoder.encode(list(prompts), list(responses))

    def _width(self, enc: Encoded, rows) -> int:
        width = max(len(enc.sequence(i)) for i in rows)
        return -(-width // self.multiple) * self.multiple  # few distinct shapes, few compilations

    def score_encoded(self, enc: Encoded) -> np.ndarray:
        rewards = []
        for start in range(0, len(enc), self.batch_size):
            rows = list(range(start, min(start + self.batch_size, len(enc))))
            filler = [rows[0]] * (self.batch_size - len(rows))  # one batch shape; their rewards are dropped
            ids, mask = pad_rows(enc, rows + filler, self._width(enc, rows), self.pad_id)
            length = enc.response_len[rows + filler]
            rewards.append(np.asarray(self._forward(ids, mask, length))[:len(rows)])
        return np.concatenate(rewards).astype(np.float32) if rewards else np.zeros(0, np.float32)

    def score_texts(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray:
        return self.score_encoded(self.encode(prompts, responses))

    def score_global(self, prompts: Sequence[Prompt], responses: Sequence[str], mesh) -> jax.Array:
        """Rewards of this process's (prompt, response) rows as one global float32 array over `mesh`.

        Every process pads to the width of the longest row of the global batch (agreed by a collective), so
        a run scores with the same shapes, and the same numbers, on one process or several."""
        enc = self.encode(prompts, responses)
        width = self._width(enc, range(len(enc)))
        if jax.process_count() > 1:
            width = int(np.max(multihost_utils.process_allgather(np.int32(width))))
        ids, mask = pad_rows(enc, range(len(enc)), width, self.pad_id)
        batch = to_global({"ids": ids, "mask": mask, "length": enc.response_len}, mesh)
        return self._forward(batch["ids"], batch["mask"], batch["length"])
