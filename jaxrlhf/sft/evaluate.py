"""Held-out evaluation of an SFT model: mean NLL per response token and its perplexity."""

from __future__ import annotations

import math

from jaxrlhf.infra.multihost import to_global
from jaxrlhf.training.loop import host_scalar


def held_out_nll(eval_fn, batches, mesh) -> dict:
    """`eval_fn(global batch) -> (nll_sum, token count)` summed over `batches`: exact under any batching."""
    nll, tokens = 0.0, 0.0
    for batch in batches:
        nll_sum, count = eval_fn(to_global(batch, mesh))
        nll, tokens = nll + host_scalar(nll_sum), tokens + host_scalar(count)
    mean = nll / tokens if tokens else float("nan")
    return {"nll": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": int(tokens)}
