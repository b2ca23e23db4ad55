"""The contract every model family module fulfils, and the weight-name table type.

A family module (`llama.py`, `gpt2.py`, `bert.py`) provides:

- `MODEL_TYPES`: the HF `config.json` `model_type` values it handles.
- `IS_DECODER`, `POOLING` ("last" real token for decoders, "first" token for encoders),
  `HF_BASE_PREFIX` (e.g. "model.", "bert."), `REWARD_HEAD` (a `HeadSpec`).
- `Config` with `from_hf(dict)` and `to_hf(task) -> dict` (a config.json `transformers` loads).
- `Backbone(cfg, *, rngs, dtype, param_dtype, scan_layers, remat, lora)` whose
  `__call__(input_ids_BxT, attention_mask_BxT, *, positions_BxT=None, cache=None, dropout_rng=None)`
  returns `(hidden_BxTxD, cache)`.
- `weight_specs(cfg, task) -> list[WeightSpec]` for task in TASKS: the whole name table, used by
  both the importer and the exporter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

TASKS = ("backbone", "causal_lm", "reward", "value")


def identity(x: np.ndarray) -> np.ndarray:
    return x


def transpose(x: np.ndarray) -> np.ndarray:
    """PyTorch Linear weights are [out, in]; ours are [in, out]."""
    return np.ascontiguousarray(x.T)


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """One parameter of ours and the HF tensor(s) it comes from.

    `hf_keys` holds one key, or one key per layer for a stacked parameter (stacked on axis 0 in
    order). `to_flax` maps one HF tensor to our layout; `to_hf` is its inverse (used by export).
    """

    path: tuple[str, ...]
    hf_keys: tuple[str, ...]
    to_flax: Callable[[np.ndarray], np.ndarray] = identity
    to_hf: Callable[[np.ndarray], np.ndarray] = identity
    stacked: bool = False


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """Shape of a family's sequence-classification head, so HF checkpoints round-trip.

    pre_dense: a dense layer and `activation` before the scalar projection (BERT pooler, RoBERTa classifier:
    tanh; DeBERTa's ContextPooler: its `pooler_hidden_act`, gelu).
    """

    use_bias: bool = False
    pre_dense: bool = False
    activation: str = "tanh"  # "tanh" or a `layers.ACTIVATIONS` name


def linear_specs(path: tuple[str, ...], hf_key: str, *, bias: bool) -> list[WeightSpec]:
    """A PyTorch nn.Linear `hf_key`.weight/.bias as our kernel/bias."""
    specs = [WeightSpec(path + ("kernel",), (hf_key + ".weight",), transpose, transpose)]
    if bias:
        specs.append(WeightSpec(path + ("bias",), (hf_key + ".bias",)))
    return specs


def stacked_linear_specs(path: tuple[str, ...], hf_key_fmt: str, num_layers: int, *, bias: bool) -> list[WeightSpec]:
    """Like linear_specs for a scanned layer: `hf_key_fmt` has `{i}` for the layer index."""
    keys = tuple(hf_key_fmt.format(i=i) for i in range(num_layers))
    specs = [WeightSpec(path + ("kernel",), tuple(k + ".weight" for k in keys), transpose, transpose, stacked=True)]
    if bias:
        specs.append(WeightSpec(path + ("bias",), tuple(k + ".bias" for k in keys), stacked=True))
    return specs


def stacked_specs(path: tuple[str, ...], hf_key_fmt: str, num_layers: int) -> WeightSpec:
    """A per-layer tensor taken as it is (norm scales, biases)."""
    return WeightSpec(path, tuple(hf_key_fmt.format(i=i) for i in range(num_layers)), stacked=True)


def classifier_pad_id(cfg) -> int:
    """HF sequence classifiers need a pad id to find the last token; fall back to EOS, then 0."""
    if cfg.pad_token_id is not None:
        return int(cfg.pad_token_id)
    eos = cfg.eos_token_id
    if isinstance(eos, tuple):
        eos = eos[0] if eos else None
    return 0 if eos is None else int(eos)
